"""``MemoryStorage``: an in-memory implementation of ``quorumkv.raft.storage.Storage`` (pure, no I/O).

Layout: ``_ents[0]`` is a dummy entry carrying the snapshot's index and term; real entries follow
contiguously. Invariant: ``_ents[k].index == _ents[0].index + k``.
"""

from __future__ import annotations

from quorumkv.raft.ids import Index, Term
from quorumkv.raft.log import limit_size
from quorumkv.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from quorumkv.raft.storage import CompactedError, UnavailableError


class SnapshotOutOfDateError(Exception):
    """The snapshot is older than the one already stored."""


class MemoryStorage:
    __slots__ = ("_ents", "_snapshot", "hard_state")

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(Term(0), Index(0))]

    # -------------------------------------------------------------------------------- Storage protocol

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def first_index(self) -> Index:
        return Index(self._ents[0].index + 1)

    def last_index(self) -> Index:
        return Index(self._ents[0].index + len(self._ents) - 1)

    def term(self, i: Index) -> Term:
        off = self._ents[0].index
        if i < off:
            raise CompactedError(i)
        if i - off >= len(self._ents):
            raise UnavailableError(i)
        return self._ents[i - off].term

    def entries(self, lo: Index, hi: Index, max_size: int | None) -> list[Entry]:
        off = self._ents[0].index
        if lo <= off:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self._ents[lo - off : hi - off], max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -------------------------------------------------------------------------------- writers

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with ``snap`` (entries are discarded)."""
        if snap.metadata.index < self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(snap.metadata.index)
        self._snapshot = snap
        self._ents = [Entry(snap.metadata.term, snap.metadata.index)]

    def create_snapshot(self, i: Index, cs: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of applied index ``i``."""
        if i <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(i)
        if i > self.last_index():
            raise UnavailableError(i)
        off = self._ents[0].index
        conf = cs if cs is not None else self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(data, SnapshotMetadata(conf, i, self._ents[i - off].term))
        return self._snapshot

    def compact(self, compact_index: Index) -> None:
        """Discard entries before ``compact_index`` (which becomes the new dummy entry)."""
        off = self._ents[0].index
        if compact_index <= off:
            raise CompactedError(compact_index)
        if compact_index > self.last_index():
            raise UnavailableError(compact_index)
        k = compact_index - off
        self._ents = [Entry(self._ents[k].term, self._ents[k].index), *self._ents[k + 1 :]]

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``, truncating any existing suffix that they overwrite."""
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return  # all compacted already
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        off = entries[0].index - self._ents[0].index
        n = len(self._ents)
        if n > off:
            del self._ents[off:]
            self._ents.extend(entries)
        elif n == off:
            self._ents.extend(entries)
        else:
            raise UnavailableError(
                f"missing log entry [last: {self.last_index()}, append at: {entries[0].index}]"
            )

    def all_entries(self) -> list[Entry]:
        return self._ents[1:]

"""Typed Raft messages, log entries and persistent state, with a compact binary encoding.

Every value type here is a frozen, slotted dataclass: a message or entry never changes after it is built,
so the core can hand the same object to storage, to the network and to the application without copying.

Encoding: little-endian ``struct`` records; every variable-length field (bytes, lists) is prefixed by its
length, so decoders never guess. ``decode_x(encode_x(v)) == v`` for every value (property-tested).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass, field
from typing import TypeVar

from quorumkv.raft.ids import INDEX0, NONE, TERM0, Index, NodeId, Term

_T = TypeVar("_T")


def _fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot through its descriptor.

    The generated one calls ``object.__setattr__`` per field (looked up every time); this one has the same
    signature and defaults and is about twice as fast. Instances stay frozen: assigning an attribute later
    still raises ``FrozenInstanceError``. Only for classes whose fields have plain defaults (no factories).
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    ns: dict[str, object] = {}
    params, body = [], []
    for f in fields:
        assert f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name} has a default factory"
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})\n")
    exec(f"def __init__(self, {', '.join(params)}):\n{''.join(body)}", ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[method-assign,assignment]
    return cls


class MessageType(enum.IntEnum):
    """Message kinds. ``HUP``, ``BEAT``, ``PROP``, ``CHECK_QUORUM``, ``UNREACHABLE`` and ``SNAP_STATUS`` are
    local (never sent over the network, except ``PROP``/``READ_INDEX``/``TRANSFER_LEADER`` which a follower
    forwards to its leader with term 0)."""

    HUP = 0
    BEAT = 1
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10
    SNAP_STATUS = 11
    CHECK_QUORUM = 12
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(enum.IntEnum):
    """Single-server membership changes (see docs/raft.md for the safety argument)."""

    ADD_NODE = 0  # add a voter, or promote an existing learner
    REMOVE_NODE = 1  # remove a voter or a learner (the leader may remove itself)
    ADD_LEARNER_NODE = 2  # add a non-voting member


class StateType(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@_fast_init
@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. Invariant: ``index >= 1`` and ``term >= 1`` for every entry in a log."""

    term: Term
    index: Index
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size in bytes, used for flow control (``max_size_per_msg_bytes``)."""
        return len(self.data) + _ENTRY_HDR.size


@_fast_init
@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be on stable storage before messages that depend on it are sent."""

    term: Term = TERM0
    vote: NodeId = NONE
    commit: Index = INDEX0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0


EMPTY_HARD_STATE = HardState()


@_fast_init
@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state, reported for observability; never needs persisting."""

    lead: NodeId = NONE
    raft_state: StateType = StateType.FOLLOWER


@_fast_init
@dataclass(frozen=True, slots=True)
class ConfState:
    """A membership configuration. Invariant: ``voters`` and ``learners`` are sorted and disjoint."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    conf_state: ConfState = field(default_factory=ConfState)
    index: Index = INDEX0
    term: Term = TERM0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image as of ``metadata.index`` (inclusive). ``index == 0`` means "no snapshot"."""

    data: bytes = b""
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)

    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


@_fast_init
@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""


@_fast_init
@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message. Field use per type:

    * APP: ``index``/``log_term`` locate the entry preceding ``entries``; ``commit`` is the leader's commit.
    * APP_RESP: ``index`` is the follower's last matching index (accept) or the rejected ``index``;
      on reject ``reject_hint``/``log_term`` give the follower's best guess for fast backtracking.
    * VOTE/PRE_VOTE: ``index``/``log_term`` are the candidate's last entry; ``context`` is
      ``CAMPAIGN_TRANSFER`` for a leadership transfer (bypasses the leader lease).
    * SNAP: ``snapshot`` carries metadata and one chunk of data at byte ``snap_offset`` of ``snap_total``.
    * HEARTBEAT(_RESP), READ_INDEX(_RESP): ``context`` carries the read request context.
    """

    type: MessageType
    to: NodeId = NONE
    frm: NodeId = NONE
    term: Term = TERM0
    log_term: Term = TERM0
    index: Index = INDEX0
    entries: tuple[Entry, ...] = ()
    commit: Index = INDEX0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: Index = INDEX0
    context: bytes = b""
    snap_offset: int = 0
    snap_total: int = 0


#: ``Message.context`` of a vote request sent because of a leadership transfer.
CAMPAIGN_TRANSFER = b"CampaignTransfer"

LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)

RESPONSE_MESSAGES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.READ_INDEX_RESP,
        MessageType.PRE_VOTE_RESP,
    }
)


def vote_resp_type(t: MessageType) -> MessageType:
    """The response type matching a (pre-)vote request type."""
    if t == MessageType.VOTE:
        return MessageType.VOTE_RESP
    if t == MessageType.PRE_VOTE:
        return MessageType.PRE_VOTE_RESP
    raise ValueError(f"not a vote message: {t!r}")


# ---------------------------------------------------------------------------------------------- encoding

_ENTRY_HDR = struct.Struct("<QQBI")  # term, index, type, len(data)
_HARD_STATE = struct.Struct("<QQQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SNAP_META_HDR = struct.Struct("<QQII")  # index, term, n_voters, n_learners
_CONF_CHANGE_HDR = struct.Struct("<BQI")
# type, to, frm, term, log_term, index, commit, reject, reject_hint, snap_offset, snap_total,
# len(context), n_entries, has_snapshot
_MSG_HDR = struct.Struct("<BQQQQQQ?QQQIIB")


class DecodeError(ValueError):
    """Raised on truncated or malformed input."""


_ENTRY_TYPES = {int(t): t for t in EntryType}
_MESSAGE_TYPES = {int(t): t for t in MessageType}


def encode_entry(e: Entry, out: bytearray | None = None) -> bytes:
    buf = bytearray() if out is None else out
    buf += _ENTRY_HDR.pack(e.term, e.index, e.type, len(e.data))
    buf += e.data
    return bytes(buf) if out is None else b""


def _decode_entry_at(buf: bytes | memoryview, off: int) -> tuple[Entry, int]:
    try:
        term, index, typ, n = _ENTRY_HDR.unpack_from(buf, off)
    except struct.error as exc:
        raise DecodeError(str(exc)) from exc
    off += _ENTRY_HDR.size
    if off + n > len(buf):
        raise DecodeError("truncated entry data")
    etype = _ENTRY_TYPES.get(typ)
    if etype is None:
        raise DecodeError(f"{typ} is not a valid EntryType")
    return Entry(term, index, etype, bytes(buf[off : off + n])), off + n


def decode_entry(buf: bytes) -> Entry:
    e, off = _decode_entry_at(buf, 0)
    if off != len(buf):
        raise DecodeError("trailing bytes after entry")
    return e


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE.pack(hs.term, hs.vote, hs.commit)


def decode_hard_state(buf: bytes) -> HardState:
    if len(buf) != _HARD_STATE.size:
        raise DecodeError("bad hard state length")
    t, v, c = _HARD_STATE.unpack(buf)
    return HardState(Term(t), NodeId(v), Index(c))


def _encode_meta(m: SnapshotMetadata, buf: bytearray) -> None:
    cs = m.conf_state
    buf += _SNAP_META_HDR.pack(m.index, m.term, len(cs.voters), len(cs.learners))
    for v in cs.voters:
        buf += _U64.pack(v)
    for v in cs.learners:
        buf += _U64.pack(v)


def _decode_meta_at(buf: bytes | memoryview, off: int) -> tuple[SnapshotMetadata, int]:
    try:
        index, term, nv, nl = _SNAP_META_HDR.unpack_from(buf, off)
        off += _SNAP_META_HDR.size
        ids = [NodeId(_U64.unpack_from(buf, off + 8 * i)[0]) for i in range(nv + nl)]
    except struct.error as exc:
        raise DecodeError(str(exc)) from exc
    off += 8 * (nv + nl)
    return SnapshotMetadata(ConfState(tuple(ids[:nv]), tuple(ids[nv:])), Index(index), Term(term)), off


def encode_snapshot(s: Snapshot) -> bytes:
    buf = bytearray()
    _encode_meta(s.metadata, buf)
    buf += _U32.pack(len(s.data))
    buf += s.data
    return bytes(buf)


def _decode_snapshot_at(buf: bytes | memoryview, off: int) -> tuple[Snapshot, int]:
    meta, off = _decode_meta_at(buf, off)
    try:
        (n,) = _U32.unpack_from(buf, off)
    except struct.error as exc:
        raise DecodeError(str(exc)) from exc
    off += 4
    if off + n > len(buf):
        raise DecodeError("truncated snapshot data")
    return Snapshot(bytes(buf[off : off + n]), meta), off + n


def decode_snapshot(buf: bytes) -> Snapshot:
    s, off = _decode_snapshot_at(buf, 0)
    if off != len(buf):
        raise DecodeError("trailing bytes after snapshot")
    return s


def encode_conf_change(cc: ConfChange) -> bytes:
    return _CONF_CHANGE_HDR.pack(cc.type, cc.node_id, len(cc.context)) + cc.context


def decode_conf_change(buf: bytes) -> ConfChange:
    try:
        t, nid, n = _CONF_CHANGE_HDR.unpack_from(buf, 0)
        ctype = ConfChangeType(t)
    except (struct.error, ValueError) as exc:
        raise DecodeError(str(exc)) from exc
    if _CONF_CHANGE_HDR.size + n != len(buf):
        raise DecodeError("bad conf change length")
    return ConfChange(ctype, NodeId(nid), bytes(buf[_CONF_CHANGE_HDR.size :]))


def encode_message(m: Message) -> bytes:
    buf = bytearray(
        _MSG_HDR.pack(
            m.type,
            m.to,
            m.frm,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            m.reject,
            m.reject_hint,
            m.snap_offset,
            m.snap_total,
            len(m.context),
            len(m.entries),
            m.snapshot is not None,
        )
    )
    buf += m.context
    for e in m.entries:
        encode_entry(e, buf)
    if m.snapshot is not None:
        buf += encode_snapshot(m.snapshot)
    return bytes(buf)


def decode_message(buf: bytes) -> Message:
    try:
        (typ, to, frm, term, log_term, index, commit, reject, hint, s_off, s_total, nctx, nents, has_snap) = (
            _MSG_HDR.unpack_from(buf, 0)
        )
    except struct.error as exc:
        raise DecodeError(str(exc)) from exc
    mtype = _MESSAGE_TYPES.get(typ)
    if mtype is None:
        raise DecodeError(f"{typ} is not a valid MessageType")
    off = _MSG_HDR.size
    if off + nctx > len(buf):
        raise DecodeError("truncated context")
    ctx = bytes(buf[off : off + nctx])
    off += nctx
    ents = []
    for _ in range(nents):
        e, off = _decode_entry_at(buf, off)
        ents.append(e)
    snap: Snapshot | None = None
    if has_snap:
        snap, off = _decode_snapshot_at(buf, off)
    if off != len(buf):
        raise DecodeError("trailing bytes after message")
    # the ids are NewTypes of int (no-ops at run time): the decoded ints are passed as they are
    return Message(mtype, to, frm, term, log_term, index, tuple(ents), commit, snap, reject, hint, ctx, s_off, s_total)


# ---------------------------------------------------------------------------------------------- describing

_TYPE_NAMES = {
    MessageType.HUP: "MsgHup",
    MessageType.BEAT: "MsgBeat",
    MessageType.PROP: "MsgProp",
    MessageType.APP: "MsgApp",
    MessageType.APP_RESP: "MsgAppResp",
    MessageType.VOTE: "MsgVote",
    MessageType.VOTE_RESP: "MsgVoteResp",
    MessageType.SNAP: "MsgSnap",
    MessageType.HEARTBEAT: "MsgHeartbeat",
    MessageType.HEARTBEAT_RESP: "MsgHeartbeatResp",
    MessageType.UNREACHABLE: "MsgUnreachable",
    MessageType.SNAP_STATUS: "MsgSnapStatus",
    MessageType.CHECK_QUORUM: "MsgCheckQuorum",
    MessageType.TRANSFER_LEADER: "MsgTransferLeader",
    MessageType.TIMEOUT_NOW: "MsgTimeoutNow",
    MessageType.READ_INDEX: "MsgReadIndex",
    MessageType.READ_INDEX_RESP: "MsgReadIndexResp",
    MessageType.PRE_VOTE: "MsgPreVote",
    MessageType.PRE_VOTE_RESP: "MsgPreVoteResp",
}


def describe_entry(e: Entry) -> str:
    if e.type == EntryType.CONF_CHANGE:
        try:
            cc = decode_conf_change(e.data)
            body = f"{cc.type.name}:{cc.node_id}"
        except DecodeError:
            body = repr(e.data)
        return f"{e.term}/{e.index} EntryConfChange {body}"
    return f"{e.term}/{e.index} EntryNormal {e.data.decode('utf-8', 'backslashreplace')!r}"


def describe_message(m: Message) -> str:
    """A one-line, stable human-readable rendering (used by scenario tests and traces)."""
    parts = [f"{m.frm}->{m.to} {_TYPE_NAMES[m.type]} Term:{m.term}"]
    t = m.type
    if t in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"Log:{m.log_term}/{m.index}")
    elif t == MessageType.APP_RESP or t == MessageType.READ_INDEX_RESP:
        parts.append(f"Index:{m.index}")
    if m.commit:
        parts.append(f"Commit:{m.commit}")
    if m.reject:
        parts.append(f"Rejected (Hint: {m.reject_hint}, LogTerm: {m.log_term})")
    if m.context:
        parts.append(f"Context:{m.context.decode('utf-8', 'backslashreplace')}")
    if m.entries:
        parts.append("Entries:[" + ", ".join(describe_entry(e) for e in m.entries) + "]")
    if m.snapshot is not None:
        md = m.snapshot.metadata
        parts.append(
            f"Snapshot: Index:{md.index} Term:{md.term} Voters:{list(md.conf_state.voters)}"
            f" Learners:{list(md.conf_state.learners)} Chunk:{m.snap_offset}+{len(m.snapshot.data)}"
            f"/{m.snap_total}"
        )
    return " ".join(parts)

"""Data-driven protocol transcripts: ``testdata/*.txt``.

Each block is a command line, a ``----`` line, then the expected output up to a blank line::

    campaign 1
    ----
    1: StatePreCandidate Term:1 Lead:0

The expected output is the assertion. ``QUORUMKV_REWRITE=1`` regenerates it from the implementation
(review the diff before committing!). Commands: add-nodes, campaign, propose, propose-conf-change,
tick-election, tick-heartbeat, deliver-msgs [drop=(ids)], process-ready, stabilize, raft-log, raft-state,
status, compact, transfer-leadership, read-index, restart.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from quorumkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    HardState,
    Index,
    Message,
    NodeId,
    ProposalDroppedError,
    RawNode,
    Ready,
    Term,
)
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.raft.messages import ConfState, Entry, describe_entry, describe_message
from quorumkv.raft.progress import ProgressState
from quorumkv.server.ready import ReadyProcessor
from quorumkv.testing.harness import RecordingStateMachine, bootstrap_storage, memory_processor

TESTDATA = Path(__file__).parent / "testdata"

_STATE = {0: "StateFollower", 1: "StateCandidate", 2: "StateLeader", 3: "StatePreCandidate"}


@dataclass
class Block:
    comments: list[str]
    cmd: str
    expected: str


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.split("\n")
    i = 0
    comments: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            if line.startswith("#"):
                comments.append(line)
            elif comments and blocks is not None:
                comments.append("")
            i += 1
            continue
        cmd = line
        assert lines[i + 1] == "----", f"line {i + 2}: expected ---- after {cmd!r}"
        i += 2
        out = []
        while i < len(lines) and lines[i] != "":
            out.append(lines[i])
            i += 1
        while comments and comments[-1] == "":
            comments.pop()
        blocks.append(Block(comments, cmd, "\n".join(out)))
        comments = []
    return blocks


def render(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        head = "\n".join(b.comments) + "\n" if b.comments else ""
        parts.append(f"{head}{b.cmd}\n----\n{b.expected}\n")
    return "\n".join(parts)


def _ids(v: str) -> list[int]:
    return [int(x) for x in v.strip("()").split(",") if x.strip()]


class _EmittingStateMachine(RecordingStateMachine):
    def __init__(self, env: Env, nid: int, applied_index: int) -> None:
        super().__init__(applied_index)
        self.env = env
        self.nid = nid

    def conf_change_applied(self, entry: Entry, cc: ConfChange, conf_state: ConfState,
                            rejected: ValueError | None) -> None:
        super().conf_change_applied(entry, cc, conf_state, rejected)
        self.env.emit(f"  INFO {self.nid} applied conf change: Voters:{list(conf_state.voters)}"
                      f" Learners:{list(conf_state.learners)}")


class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, RawNode] = {}
        self.storages: dict[int, MemoryStorage] = {}
        self.processors: dict[int, ReadyProcessor] = {}
        self.inbox: dict[int, list[Message]] = {}
        self.out: list[str] = []
        self.opts: dict[str, str] = {}

    def emit(self, s: str) -> None:
        self.out.append(s)

    # ------------------------------------------------------------------------------------------ helpers

    def _config(self, nid: int, st: MemoryStorage) -> Config:
        o = self.opts
        return Config(
            id=NodeId(nid),
            storage=st,
            rng=random.Random(nid),
            election_timeout_ticks=int(o.get("election", 10)),
            heartbeat_interval_ticks=int(o.get("heartbeat", 1)),
            applied=st.snapshot().metadata.index,
            max_size_per_msg_bytes=int(o.get("max-msg-size", 1 << 20)),
            max_inflight_msgs=int(o.get("max-inflight", 256)),
            snapshot_chunk_size_bytes=int(o.get("chunk", 1 << 20)),
            pre_vote=o.get("pre-vote", "false") == "true",
            check_quorum=o.get("check-quorum", "false") == "true",
        )

    def state_line(self, nid: int) -> str:
        r = self.nodes[nid].raft
        role = "Learner" if r.is_learner else ("Voter" if r.promotable() else "NonMember")
        return f"{nid}: {_STATE[r.state]} ({role}) Term:{r.term} Lead:{r.lead}"

    def _start(self, nid: int) -> None:
        st = self.storages[nid]
        node = RawNode(self._config(nid, st))
        self.nodes[nid] = node
        sm = _EmittingStateMachine(self, nid, int(st.snapshot().metadata.index))
        self.processors[nid] = memory_processor(node, st, sm, self._send)

    def _send(self, messages: list[Message]) -> None:
        for m in messages:
            self.inbox.setdefault(m.to, []).append(m)

    def _handle_ready(self, nid: int, rd: Ready) -> None:
        self.emit(f"> {nid} handling Ready")
        if rd.soft_state is not None:
            self.emit(f"  State:{_STATE[rd.soft_state.raft_state]} Lead:{rd.soft_state.lead}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.emit(f"  HardState Term:{hs.term} Vote:{hs.vote} Commit:{hs.commit}")
        if rd.snapshot is not None:
            md = rd.snapshot.metadata
            self.emit(
                f"  Snapshot Index:{md.index} Term:{md.term} Voters:{list(md.conf_state.voters)}"
                f" Learners:{list(md.conf_state.learners)} Data:{rd.snapshot.data!r}"
            )
        if rd.entries:
            self.emit("  Entries:")
            for e in rd.entries:
                self.emit(f"    {describe_entry(e)}")
        if rd.messages:
            self.emit("  Messages:")
            for m in rd.messages:
                self.emit(f"    {describe_message(m)}")
        if rd.committed_entries:
            self.emit("  CommittedEntries:")
            for e in rd.committed_entries:
                self.emit(f"    {describe_entry(e)}")
        for rs in rd.read_states:
            self.emit(f"  ReadState Index:{rs.index} Context:{rs.request_ctx.decode()}")
        # Persist, then send, then apply, then advance: the production Ready processor.
        self.processors[nid].handle(rd)

    def process_ready(self, ids: list[int]) -> bool:
        did = False
        for nid in ids:
            node = self.nodes[nid]
            if node.has_ready():
                self._handle_ready(nid, node.ready())
                did = True
        return did

    def deliver(self, ids: list[int], drop: set[int]) -> bool:
        did = False
        for nid in ids:
            msgs = self.inbox.pop(nid, [])
            for m in msgs:
                did = True
                if nid in drop or m.frm in drop:
                    self.emit(f"dropped: {describe_message(m)}")
                    continue
                self.emit(describe_message(m))
                try:
                    self.nodes[nid].step(m)
                except ProposalDroppedError as exc:
                    self.emit(f"  error: proposal dropped: {exc}")
        return did

    # ------------------------------------------------------------------------------------------ commands

    def cmd_add_nodes(self, args: list[str], kv: dict[str, str]) -> None:
        n = int(args[0])
        self.opts.update({k: v for k, v in kv.items() if k not in ("voters", "learners", "index", "empty")})
        start = max(self.nodes, default=0) + 1
        for nid in range(start, start + n):
            if kv.get("empty") == "true":
                st = MemoryStorage()
            else:
                st = bootstrap_storage(
                    tuple(_ids(kv.get("voters", "()"))),
                    tuple(_ids(kv.get("learners", "()"))),
                    index=int(kv.get("index", 1)),
                    term=int(kv.get("index", 1)),
                )
                if int(kv.get("index", 1)) > 0:
                    # Bootstrapped at term 1 with the snapshot committed, like a freshly initialised cluster.
                    idx = int(kv.get("index", 1))
                    st.set_hard_state(HardState(Term(1), NodeId(0), Index(idx)))
            self.storages[nid] = st
            self._start(nid)
            self.emit(f"INFO {nid} created: {self.state_line(nid)}")

    def cmd_restart(self, args: list[str], kv: dict[str, str]) -> None:
        nid = int(args[0])
        self.inbox.pop(nid, None)
        self._start(nid)
        self.emit(f"{self.state_line(nid)} Vote:{self.nodes[nid].raft.vote}")

    def cmd_campaign(self, args: list[str], kv: dict[str, str]) -> None:
        nid = int(args[0])
        self.nodes[nid].campaign()
        self.emit(self.state_line(nid))

    def cmd_tick_election(self, args: list[str], kv: dict[str, str]) -> None:
        nid = int(args[0])
        r = self.nodes[nid].raft
        for _ in range(max(1, r.randomized_election_timeout - r.election_elapsed)):
            self.nodes[nid].tick()
        self.emit(self.state_line(nid))

    def cmd_tick_heartbeat(self, args: list[str], kv: dict[str, str]) -> None:
        nid = int(args[0])
        for _ in range(self.nodes[nid].raft.heartbeat_timeout):
            self.nodes[nid].tick()
        self.emit(self.state_line(nid))

    def cmd_propose(self, args: list[str], kv: dict[str, str]) -> None:
        try:
            self.nodes[int(args[0])].propose(args[1].encode())
            self.emit("ok")
        except ProposalDroppedError as exc:
            self.emit(f"error: proposal dropped: {exc}")

    def cmd_propose_conf_change(self, args: list[str], kv: dict[str, str]) -> None:
        ((op, target),) = kv.items()
        typ = {
            "add": ConfChangeType.ADD_NODE,
            "add-learner": ConfChangeType.ADD_LEARNER_NODE,
            "remove": ConfChangeType.REMOVE_NODE,
        }[op]
        try:
            self.nodes[int(args[0])].propose_conf_change(ConfChange(typ, NodeId(int(target))))
            self.emit("ok")
        except ProposalDroppedError as exc:
            self.emit(f"error: proposal dropped: {exc}")

    def cmd_transfer_leadership(self, args: list[str], kv: dict[str, str]) -> None:
        self.nodes[int(kv["from"])].transfer_leadership(NodeId(int(kv["to"])))
        self.emit("ok")

    def cmd_read_index(self, args: list[str], kv: dict[str, str]) -> None:
        self.nodes[int(args[0])].read_index(args[1].encode())
        self.emit("ok")

    def cmd_process_ready(self, args: list[str], kv: dict[str, str]) -> None:
        if not self.process_ready([int(a) for a in args] or sorted(self.nodes)):
            self.emit("<no ready>")

    def cmd_deliver_msgs(self, args: list[str], kv: dict[str, str]) -> None:
        drop = set(_ids(kv.get("drop", "()")))
        ids = [int(a) for a in args] or sorted(self.nodes)
        if not self.deliver(ids, drop):
            self.emit("<no messages>")

    def cmd_stabilize(self, args: list[str], kv: dict[str, str]) -> None:
        ids = [int(a) for a in args] or sorted(self.nodes)
        drop = set(_ids(kv.get("drop", "()")))
        while True:
            did = self.process_ready(ids)
            did = self.deliver(ids, drop) or did
            if not did:
                break

    def cmd_raft_log(self, args: list[str], kv: dict[str, str]) -> None:
        nid = int(args[0])
        log = self.nodes[nid].raft.log
        if log.first_index() > 1:
            self.emit(f"(entries before {log.first_index()} compacted)")
        ents = log.all_entries()
        for e in ents:
            self.emit(describe_entry(e))
        if not ents:
            self.emit("<empty>")
        self.emit(f"committed={log.committed} applied={log.applied}")

    def cmd_raft_state(self, args: list[str], kv: dict[str, str]) -> None:
        for nid in sorted(self.nodes):
            self.emit(self.state_line(nid))

    def cmd_status(self, args: list[str], kv: dict[str, str]) -> None:
        st = self.nodes[int(args[0])].status()
        if not st.progress:
            self.emit("<not leader>")
        names = {
            ProgressState.PROBE: "StateProbe",
            ProgressState.REPLICATE: "StateReplicate",
            ProgressState.SNAPSHOT: "StateSnapshot",
        }
        for nid, pr in sorted(st.progress.items()):
            extra = " learner" if pr.is_learner else ""
            extra += " paused" if pr.paused else ""
            self.emit(f"{nid}: {names[pr.state]} match={pr.match} next={pr.next}{extra}")

    def cmd_compact(self, args: list[str], kv: dict[str, str]) -> None:
        nid, idx = int(args[0]), Index(int(args[1]))
        node = self.nodes[nid]
        cs: ConfState = node.raft.conf_state()
        self.storages[nid].create_snapshot(idx, cs, f"snap@{idx}".encode())
        self.storages[nid].compact(idx)
        self.cmd_raft_log([str(nid)], {})


def run_command(env: Env, line: str) -> str:
    env.out = []
    parts = line.split()
    name, rest = parts[0], parts[1:]
    args = [p for p in rest if "=" not in p]
    kv = dict(p.split("=", 1) for p in rest if "=" in p)
    handler: Callable[[list[str], dict[str, str]], None] = getattr(env, "cmd_" + name.replace("-", "_"))
    handler(args, kv)
    return "\n".join(env.out) if env.out else "ok"


FILES = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    blocks = parse(path.read_text())
    env = Env()
    rewrite = os.environ.get("QUORUMKV_REWRITE") == "1"
    failures = []
    for b in blocks:
        actual = run_command(env, b.cmd)
        if rewrite:
            b.expected = actual
        elif actual != b.expected:
            failures.append(f"{path.name}: {b.cmd}\n--- expected\n{b.expected}\n--- actual\n{actual}")
            break
    if rewrite:
        path.write_text(render(blocks))
    assert not failures, failures[0]


def test_scenario_files_exist() -> None:
    names = {p.stem for p in FILES}
    assert {"election", "replication", "snapshot", "membership", "transfer"} <= names


def test_parser_round_trips() -> None:
    text = "# a comment\ncampaign 1\n----\nline one\nline two\n\nraft-state\n----\nok\n"
    assert render(parse(text)) == text
    assert re.match(r"^# a comment", render(parse(text)))

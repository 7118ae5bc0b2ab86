"""The deterministic apply function: committed log entries in, state changes and responses out.

Rules:
- apply never reads a clock, a random source or anything outside the entry and the stored state;
- each entry's effects and ``meta.applied_index`` are written in the caller's transaction, so replaying an
  entry at or below the applied index is skipped (idempotent across restarts);
- request errors (etcd's) are detected before any write of that entry, so a failed entry changes nothing;
- the returned ``ApplyResult`` carries what the node must do after commit: answer waiters, feed watchers,
  tell the lessor about granted/revoked leases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.errors import EtcdError
from quorumkv.mvcc import store
from quorumkv.mvcc.store import Event, KeyValue, WriteTxn
from quorumkv.server import auth_state
from quorumkv.server.auth_state import READ, ROOT_ROLE, WRITE, AuthInfo, AuthState
from quorumkv.server.entries import EntryKind, decode_entry, unwrap_authed
from quorumkv.storage import leases, membership, schema
from quorumkv.storage.backend import release, rollback_to, savepoint

#: etcd's lessor.MaxLeaseTTL (seconds).
MAX_LEASE_TTL_SECONDS = 9_000_000_000

_CMP = pb.Compare
_RANGE = pb.RangeRequest

#: etcd's quota cost estimates (etcdserver/quota.go): per put and per lease grant, in bytes.
KV_OVERHEAD_BYTES = 256
LEASE_OVERHEAD_BYTES = 64

#: Entry kinds that the NOSPACE alarm caps (etcd's applierV3Capped) or the CORRUPT alarm refuses.
_KV_KINDS = frozenset({EntryKind.PUT, EntryKind.DELETE_RANGE, EntryKind.TXN, EntryKind.COMPACTION,
                       EntryKind.LEASE_GRANT, EntryKind.LEASE_REVOKE})


def put_cost_bytes(req: pb.PutRequest) -> int:
    """etcd's costPut: what a put may add to the backend."""
    return KV_OVERHEAD_BYTES + len(req.key) + len(req.value)


def txn_cost_bytes(req: pb.TxnRequest) -> int:
    """etcd's costTxn: the larger of the two branches' top-level put costs (0 for a txn without puts)."""
    def branch(ops: Iterable[pb.RequestOp]) -> int:
        return sum(put_cost_bytes(op.request_put) for op in ops if op.WhichOneof("request") == "request_put")
    return max(branch(req.success), branch(req.failure))


def to_pb_kv(kv: KeyValue, *, keys_only: bool = False) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=b"" if keys_only else kv.value,
        lease=kv.lease,
    )


@dataclass
class ApplyResult:
    """What one batch of applied entries produced."""

    responses: dict[int, object] = field(default_factory=dict)  # request_id -> response message or EtcdError
    events: list[tuple[int, list[Event]]] = field(default_factory=list)  # (revision, events) in order
    leases_granted: list[tuple[int, int]] = field(default_factory=list)  # (lease id, ttl seconds)
    leases_revoked: list[int] = field(default_factory=list)
    #: Lease checkpoints applied, as (lease id, remaining TTL seconds; 0: cleared by a renewal).
    leases_checkpointed: list[tuple[int, int]] = field(default_factory=list)
    compacted_to: int = 0
    #: Rows (revisions) the compaction in this batch removed; and how long the writer spent on the batch that
    #: compacted (seconds, measured by the node around apply, never inside it; 0 until then).
    compacted_keys: int = 0
    compaction_s: float = 0.0
    alarms_changed: bool = False
    members_changed: bool = False
    #: An auth entry changed users, roles, the enabled flag or the auth revision (tokens may be stale).
    auth_changed: bool = False
    #: A Raft snapshot replaced the state: the store moved without events.
    restored: bool = False
    #: The store revision after the batch, set when ``events`` were left out because nobody watched (0: unset).
    revision: int = 0
    #: Nonzero: nobody watched when the batch began, so the events of revisions from this one on were not built
    #: (``revision`` says where the batch ended; a watcher that appeared meanwhile gets them read back).
    events_from: int = 0
    #: The store's allocated bytes after the batch, measured by the writer (0: not measured); the quota check
    #: uses it instead of asking SQLite from the event loop.
    allocated_bytes: int = 0


class Applier:
    """Applies entries to the store. Owned by the node's writer thread; holds a cache of store metadata."""

    def __init__(self, conn: sqlite3.Connection, *, min_lease_ttl_seconds: int = 2) -> None:
        self.min_lease_ttl_seconds = min_lease_ttl_seconds
        #: Asked (on the writer thread) once per batch whether live events would reach anyone; None: always.
        self.events_wanted: Callable[[], bool] | None = None
        #: Asked (on the writer thread) whether a plain put's response would reach a waiting caller (a Raft member
        #: answers only the requests it proposed itself); None: always. Only skips building the message.
        self.response_wanted: Callable[[int], bool] | None = None
        self.reload(conn)

    def reload(self, conn: sqlite3.Connection) -> None:
        """Re-read cached metadata (after a failed commit, the cache may be ahead of the disk)."""
        self.revision = store.current_revision(conn)
        self.compact_revision = store.compact_revision(conn)
        self.applied_index = schema.applied_index(conn)
        self.leases: dict[int, int] = leases.load_leases(conn)
        #: Checkpointed remaining TTLs (lease ID -> seconds), only for leases that have one; a new leader starts
        #: those leases' clocks from here instead of their full TTL.
        self.lease_remaining: dict[int, int] = leases.load_lease_remaining(conn)
        #: Raised alarms as (member ID (uint64), AlarmType); persisted in the ``alarm`` table.
        self.alarms: set[tuple[int, int]] = leases.load_alarms(conn)
        #: Users, roles and flags (an immutable value replaced by each auth entry; the event loop reads it).
        self.auth: AuthState = AuthState.load(conn)

    def has_alarm(self, alarm_type: int) -> bool:
        return any(a == alarm_type for _, a in self.alarms)

    def alarm_members(self, alarm_type: int = pb.AlarmType.NONE) -> list[pb.AlarmMember]:
        """Raised alarms of ``alarm_type`` (NONE: all), sorted by member then type (deterministic)."""
        return [pb.AlarmMember(memberID=m, alarm=a) for m, a in sorted(self.alarms)  # type: ignore[arg-type]
                if alarm_type == pb.AlarmType.NONE or a == alarm_type]

    # -- entry dispatch -------------------------------------------------------------------------------------

    def apply(self, conn: sqlite3.Connection, index: int, data: bytes, result: ApplyResult) -> None:
        """Apply one committed entry at ``index`` (skipped if already applied)."""
        if index <= self.applied_index:
            return
        kind, request_id, payload = decode_entry(data)
        if kind == EntryKind.AUTHED:
            try:
                kind, payload = self._authorize(conn, payload)
            except (EtcdError, ValueError) as exc:  # refused (or undecodable): nothing applied, the waiter told
                self.applied_index = index
                if request_id:
                    result.responses[request_id] = exc if isinstance(exc, EtcdError) else EtcdError(
                        "INTERNAL", f"quorumkv: entry {index}: {exc}")
                return
        if kind == EntryKind.PUT:
            # A put checks everything before its two writes, so it needs no savepoint of its own; an unexpected
            # error fails the whole batch (the node rolls back the transaction and answers every waiter).
            try:
                response: object = self._dispatch(conn, kind, payload, result)
            except EtcdError as exc:
                response = exc
            self.applied_index = index
            if request_id:
                result.responses[request_id] = response
            return
        savepoint(conn, "entry")
        saved = (self.revision, self.compact_revision, dict(self.leases) if kind >= EntryKind.LEASE_GRANT else None,
                 set(self.alarms), self.auth,
                 dict(self.lease_remaining) if kind >= EntryKind.LEASE_GRANT else None)
        n_events = len(result.events)
        try:
            response = self._dispatch(conn, kind, payload, result)
        except EtcdError as exc:
            response = exc
        except Exception as exc:  # a bug or a storage error: undo this entry only, answer with an error
            rollback_to(conn, "entry")
            self.revision, self.compact_revision = saved[0], saved[1]
            if saved[2] is not None:
                self.leases = saved[2]
            if saved[5] is not None:
                self.lease_remaining = saved[5]
            self.alarms = saved[3]
            self.auth = saved[4]
            del result.events[n_events:]
            response = EtcdError("INTERNAL", f"quorumkv: applying entry {index} failed: {exc!r}")
        release(conn, "entry")
        self.applied_index = index
        if request_id:
            result.responses[request_id] = response

    def _authorize(self, conn: sqlite3.Connection, payload: bytes) -> tuple[int, bytes]:
        """etcd's authApplierV3: a write proposed for a user is checked again when applied, against the auth
        state of that moment (a token older than the last auth change gets ``revision of auth store is old``, a
        permission revoked meanwhile ``permission denied``). Returns the inner entry's kind and payload."""
        authed = unwrap_authed(payload)
        state = self.auth
        if not state.enabled:  # auth switched off meanwhile: nothing to check, as etcd
            return authed.kind, authed.payload
        info = AuthInfo(authed.username, authed.auth_revision)
        if authed.kind == EntryKind.PUT:
            put = pb.PutRequest.FromString(authed.payload)
            state.check(info, put.key, b"", WRITE)
            if put.prev_kv:
                state.check(info, put.key, b"", READ)
            if put.lease and not state.has_role(info.username, ROOT_ROLE):
                for key in store.keys_with_lease(conn, put.lease):  # etcd's checkLeasePuts
                    state.check(info, key, b"", WRITE)
        elif authed.kind == EntryKind.DELETE_RANGE:
            delete = pb.DeleteRangeRequest.FromString(authed.payload)
            if delete.prev_kv:
                state.check(info, delete.key, delete.range_end, READ)
            state.check(info, delete.key, delete.range_end, WRITE)
        elif authed.kind == EntryKind.TXN:
            state.check_txn(info, pb.TxnRequest.FromString(authed.payload))
        else:
            raise ValueError(f"an AUTHED entry cannot carry entry kind {authed.kind}")
        return authed.kind, authed.payload

    def new_result(self) -> ApplyResult:
        """An empty result for the next batch: without events if ``events_wanted`` says nobody needs them."""
        wanted = self.events_wanted
        if wanted is None or wanted():
            return ApplyResult()
        return ApplyResult(events_from=self.revision + 1)

    def apply_many(self, conn: sqlite3.Connection, entries: list[tuple[int, bytes]], result: ApplyResult) -> None:
        """Apply committed entries in order; runs of plain puts are written with one statement per table.

        Equivalent to calling ``apply`` on each entry (a test checks it): same rows, ids, responses and events.
        """
        run: list[tuple[int, int, pb.PutRequest]] = []
        for index, data in entries:
            if index <= self.applied_index:
                continue
            kind, request_id, payload = decode_entry(data)
            if kind == EntryKind.PUT:
                req = pb.PutRequest.FromString(payload)
                if (not self.alarms and not req.ignore_value and not req.ignore_lease and not req.prev_kv
                        and (req.lease == 0 or req.lease in self.leases)):
                    run.append((index, request_id, req))
                    continue
            if run:
                self._apply_put_run(conn, run, result)
                run = []
            self.apply(conn, index, data, result)
        if run:
            self._apply_put_run(conn, run, result)

    def _apply_put_run(self, conn: sqlite3.Connection, run: list[tuple[int, int, pb.PutRequest]],
                       result: ApplyResult) -> None:
        """Plain puts (no ignore_*, no prev_kv, lease absent or known): one revision each, batched writes."""
        keys = list({req.key for _, _, req in run})
        if result.events_from and len(keys) == len(run):
            self._apply_quiet_put_run(conn, run, result)
            return
        existing = store.latest_of_keys(conn, keys)  # key -> (create_rev, mod_rev, version)
        kv_rows = []
        rev = self.revision
        events = None if result.events_from else result.events
        responses = result.responses
        response_wanted = self.response_wanted
        for _index, request_id, req in run:
            rev += 1
            key = req.key
            prev = existing.get(key)
            if prev is None:
                create_rev, version, prev_mod = rev, 1, 0
            else:
                create_rev, version, prev_mod = prev[0], prev[2] + 1, prev[1]
            value, lease = req.value, req.lease
            kv_rows.append((rev, key, value, create_rev, version, lease))
            existing[key] = (create_rev, rev, version)
            if events is not None:
                events.append((rev, [Event(store.EVENT_PUT, KeyValue(key, create_rev, rev, version, value, lease),
                                           prev_mod)]))
            if request_id and (response_wanted is None or response_wanted(request_id)):
                resp = pb.PutResponse()
                resp.header.revision = rev
                responses[request_id] = resp
        store.insert_put_rows(conn, kv_rows)
        self.revision = rev
        self.applied_index = run[-1][0]

    def _apply_quiet_put_run(self, conn: sqlite3.Connection, run: list[tuple[int, int, pb.PutRequest]],
                             result: ApplyResult) -> None:
        """:meth:`_apply_put_run` for a run whose keys are all different, in a batch nobody watches.

        No event needs a key's previous state, so SQLite looks each key's latest row up inside the ``kv`` INSERT
        (create_rev and version computed there) instead of in a SELECT of its own: one statement fewer per
        batch. Each SQLite statement releases the GIL and must win it back from the busy event loop, which made
        the separate SELECT the writer's second-longest step under load (docs/performance.md). The rows are
        the same as the general path's (a test compares them); distinct keys mean no put depends on another
        put of the same run.
        """
        rev = self.revision
        responses = result.responses
        response_wanted = self.response_wanted
        rows = []
        for _index, request_id, req in run:
            rev += 1
            rows.append((rev, req.key, req.value, req.lease))
            if request_id and (response_wanted is None or response_wanted(request_id)):
                resp = pb.PutResponse()
                resp.header.revision = rev
                responses[request_id] = resp
        store.insert_distinct_puts(conn, rows)
        self.revision = rev
        self.applied_index = run[-1][0]

    def finish(self, conn: sqlite3.Connection, result: ApplyResult | None = None) -> None:
        """Record the applied index and store revision in the same transaction as the applied effects (and, in a
        ``result`` without events, where the batch ended)."""
        if result is not None and result.events_from:
            result.revision = self.revision
        store.save_applied(conn, self.applied_index, self.revision)

    def _dispatch(self, conn: sqlite3.Connection, kind: int, payload: bytes, result: ApplyResult) -> object:
        if self.alarms and kind in _KV_KINDS:
            self._check_alarms(kind, payload)
        if kind == EntryKind.PUT:
            txn = self._begin(conn)
            resp = self.put(txn, pb.PutRequest.FromString(payload))
            self._end(txn, result)
            return resp
        if kind == EntryKind.DELETE_RANGE:
            txn = self._begin(conn)
            dresp = self.delete_range(txn, pb.DeleteRangeRequest.FromString(payload))
            self._end(txn, result)
            return dresp
        if kind == EntryKind.TXN:
            return self.txn(conn, pb.TxnRequest.FromString(payload), result)
        if kind == EntryKind.COMPACTION:
            return self.compaction(conn, pb.CompactionRequest.FromString(payload), result)
        if kind == EntryKind.LEASE_GRANT:
            return self.lease_grant(conn, pb.LeaseGrantRequest.FromString(payload), result)
        if kind == EntryKind.LEASE_REVOKE:
            return self.lease_revoke(conn, pb.LeaseRevokeRequest.FromString(payload), result)
        if kind == EntryKind.LEASE_CHECKPOINT:
            return self.lease_checkpoint(conn, pb.LeaseCheckpointRequest.FromString(payload), result)
        if kind == EntryKind.ALARM:
            return self.alarm(conn, pb.AlarmRequest.FromString(payload), result)
        if kind == EntryKind.NOOP:
            return None
        if kind in _AUTH_APPLY:
            return self._apply_auth(conn, kind, payload, result)
        if kind in (EntryKind.MEMBER_ATTRS, EntryKind.MEMBER_UPDATE):
            member = membership.Member.from_json(payload)
            if kind == EntryKind.MEMBER_ATTRS:
                membership.apply_attributes(conn, member)
            else:
                membership.apply_peer_urls(conn, member)
            result.members_changed = True
            return None
        raise ValueError(f"unknown entry kind {kind}")

    def _begin(self, conn: sqlite3.Connection) -> WriteTxn:
        return WriteTxn(conn, self.revision)

    def _end(self, txn: WriteTxn, result: ApplyResult) -> None:
        if txn.changes:
            self.revision = txn.end(persist_revision=False)
            if not result.events_from:
                result.events.append((self.revision, txn.changes))

    def _header(self, revision: int) -> pb.ResponseHeader:
        return pb.ResponseHeader(revision=revision)

    # -- KV -------------------------------------------------------------------------------------------------

    def _check_put(self, txn: WriteTxn, req: pb.PutRequest) -> None:
        if req.lease and req.lease not in self.leases:
            raise errors.LEASE_NOT_FOUND
        if (req.ignore_value or req.ignore_lease) and txn.live_row(req.key) is None:
            raise errors.KEY_NOT_FOUND

    def put(self, txn: WriteTxn, req: pb.PutRequest, *, checked: bool = False) -> pb.PutResponse:
        if not checked:
            self._check_put(txn, req)
        kv, prev = txn.put(
            req.key,
            None if req.ignore_value else req.value,
            None if req.ignore_lease else req.lease,
        )
        resp = pb.PutResponse(header=self._header(kv.mod_revision))
        if req.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(
                kv_pb2.KeyValue(
                    key=req.key, create_revision=prev[0], mod_revision=prev[1], version=prev[2],
                    value=txn.value_of(prev[4]), lease=prev[3],
                )
            )
        return resp

    def delete_range(self, txn: WriteTxn, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        prevs = txn.delete_range(req.key, req.range_end)
        rev = txn.rev if txn.changes else txn.begin_rev
        resp = pb.DeleteRangeResponse(header=self._header(rev), deleted=len(prevs))
        if req.prev_kv:
            resp.prev_kvs.extend(to_pb_kv(p) for p in prevs)
        return resp

    def range(self, txn: WriteTxn, req: pb.RangeRequest) -> pb.RangeResponse:
        return execute_range(
            lambda rev, limit, count_only: txn.range(req.key, req.range_end, rev, limit=limit,
                                                     count_only=count_only),
            req,
        )

    # -- Txn ------------------------------------------------------------------------------------------------

    def txn(self, conn: sqlite3.Connection, req: pb.TxnRequest, result: ApplyResult) -> pb.TxnResponse:
        txn = self._begin(conn)
        path = compare_path(txn, req)
        self._check_path(txn, req, path, 0)
        resp = pb.TxnResponse()
        self._apply_txn(txn, req, path, 0, resp)
        self._end(txn, result)
        resp.header.CopyFrom(self._header(self.revision))
        return resp

    def _check_path(self, txn: WriteTxn, req: pb.TxnRequest, path: list[bool], at: int) -> int:
        """Check the ops on the chosen path before anything is written (etcd's checkRequests)."""
        ops = req.success if path[at] else req.failure
        at += 1
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_range":
                r = op.request_range
                if r.revision > txn.read_revision():
                    raise errors.FUTURE_REV
                if 0 < r.revision < self.compact_revision:
                    raise errors.COMPACTED
            elif which == "request_put":
                self._check_put(txn, op.request_put)
            elif which == "request_txn":
                at = self._check_path(txn, op.request_txn, path, at)
        return at

    def _apply_txn(self, txn: WriteTxn, req: pb.TxnRequest, path: list[bool], at: int,
                   resp: pb.TxnResponse) -> int:
        succeeded = path[at]
        resp.succeeded = succeeded
        ops = req.success if succeeded else req.failure
        at += 1
        for op in ops:
            which = op.WhichOneof("request")
            out = resp.responses.add()
            if which == "request_range":
                try:
                    out.response_range.CopyFrom(self.range(txn, op.request_range))
                except store.CompactedError as exc:
                    raise errors.COMPACTED from exc
                except store.FutureRevisionError as exc:
                    raise errors.FUTURE_REV from exc
            elif which == "request_put":
                out.response_put.CopyFrom(self.put(txn, op.request_put, checked=True))
            elif which == "request_delete_range":
                out.response_delete_range.CopyFrom(self.delete_range(txn, op.request_delete_range))
            elif which == "request_txn":
                nested = out.response_txn
                nested.header.SetInParent()  # etcd 3.4 leaves a nested txn's header empty (revision 0)
                at = self._apply_txn(txn, op.request_txn, path, at, nested)
        return at

    # -- auth ---------------------------------------------------------------------------------------------

    def _apply_auth(self, conn: sqlite3.Connection, kind: int, payload: bytes, result: ApplyResult) -> object:
        req_type, fn, resp_type = _AUTH_APPLY[kind]
        req = req_type.FromString(payload)
        new = fn(conn, self.auth, req) if req_type not in _NO_ARG else fn(conn, self.auth)
        if new is not self.auth:
            self.auth = new
            result.auth_changed = True
        return resp_type(header=self._header(self.revision))

    # -- alarms -------------------------------------------------------------------------------------------

    def _check_alarms(self, kind: int, payload: bytes) -> None:
        """etcd's corrupt applier (every KV entry fails) and capped applier (NOSPACE: no puts, no grants)."""
        if self.has_alarm(pb.AlarmType.CORRUPT):
            raise errors.CORRUPT
        if not self.has_alarm(pb.AlarmType.NOSPACE):
            return
        if kind in (EntryKind.PUT, EntryKind.LEASE_GRANT):
            raise errors.NO_SPACE
        if kind == EntryKind.TXN and txn_cost_bytes(pb.TxnRequest.FromString(payload)) > 0:
            raise errors.NO_SPACE

    def alarm(self, conn: sqlite3.Connection, req: pb.AlarmRequest, result: ApplyResult) -> pb.AlarmResponse:
        """Get/activate/deactivate; the response lists the alarms found, raised or cleared (etcd's rules)."""
        resp = pb.AlarmResponse(header=self._header(self.revision))
        key = (req.memberID, int(req.alarm))
        if req.action == pb.AlarmRequest.GET:
            resp.alarms.extend(self.alarm_members(req.alarm))
        elif req.action == pb.AlarmRequest.ACTIVATE:
            if req.alarm != pb.AlarmType.NONE and key not in self.alarms:
                leases.insert_alarm(conn, key[0], key[1])
                self.alarms.add(key)
                result.alarms_changed = True
                resp.alarms.add(memberID=req.memberID, alarm=req.alarm)
        elif req.action == pb.AlarmRequest.DEACTIVATE:
            if key in self.alarms:
                leases.delete_alarm(conn, key[0], key[1])
                self.alarms.discard(key)
                result.alarms_changed = True
                resp.alarms.add(memberID=req.memberID, alarm=req.alarm)
        return resp

    # -- compaction -----------------------------------------------------------------------------------------

    def compaction(self, conn: sqlite3.Connection, req: pb.CompactionRequest, result: ApplyResult
                   ) -> pb.CompactionResponse:
        rev = req.revision
        if rev <= self.compact_revision:
            raise errors.COMPACTED
        if rev > self.revision:
            raise errors.FUTURE_REV
        result.compacted_keys += store.compact(conn, rev)
        self.compact_revision = rev
        result.compacted_to = rev
        return pb.CompactionResponse(header=self._header(self.revision))

    # -- leases ---------------------------------------------------------------------------------------------

    def lease_checkpoint(self, conn: sqlite3.Connection, req: pb.LeaseCheckpointRequest, result: ApplyResult
                         ) -> pb.LeaseCheckpointResponse:
        """Record each lease's remaining TTL as the leader measured it (etcd's lessor.Checkpoint): the value is in
        the entry, so every member stores the same. Unknown leases are skipped (revoked since)."""
        for cp in req.checkpoints:
            if cp.ID not in self.leases:
                continue
            remaining = max(0, int(cp.remaining_TTL))
            leases.set_lease_remaining(conn, cp.ID, remaining)
            if remaining:
                self.lease_remaining[cp.ID] = remaining
            else:
                self.lease_remaining.pop(cp.ID, None)
            result.leases_checkpointed.append((cp.ID, remaining))
        return pb.LeaseCheckpointResponse(header=self._header(self.revision))

    def lease_grant(self, conn: sqlite3.Connection, req: pb.LeaseGrantRequest, result: ApplyResult
                    ) -> pb.LeaseGrantResponse:
        if req.ID == 0:
            raise errors.LEASE_NOT_FOUND
        if req.ID in self.leases:
            raise errors.LEASE_EXIST
        if req.TTL > MAX_LEASE_TTL_SECONDS:
            raise errors.LEASE_TTL_TOO_LARGE
        ttl = max(req.TTL, self.min_lease_ttl_seconds)
        leases.insert_lease(conn, req.ID, ttl)
        self.leases[req.ID] = ttl
        result.leases_granted.append((req.ID, ttl))
        return pb.LeaseGrantResponse(header=self._header(self.revision), ID=req.ID, TTL=ttl)

    def lease_revoke(self, conn: sqlite3.Connection, req: pb.LeaseRevokeRequest, result: ApplyResult
                     ) -> pb.LeaseRevokeResponse:
        if req.ID not in self.leases:
            raise errors.LEASE_NOT_FOUND
        txn = self._begin(conn)
        for key in store.keys_with_lease(conn, req.ID):  # sorted: deterministic sub revisions
            txn.delete_range(key, b"")
        self._end(txn, result)
        leases.delete_lease(conn, req.ID)
        del self.leases[req.ID]
        self.lease_remaining.pop(req.ID, None)
        result.leases_revoked.append(req.ID)
        return pb.LeaseRevokeResponse(header=self._header(self.revision))


_AUTH_APPLY: dict[int, tuple[Any, Any, Any]] = {
    EntryKind.AUTH_ENABLE: (pb.AuthEnableRequest, auth_state.apply_auth_enable, pb.AuthEnableResponse),
    EntryKind.AUTH_DISABLE: (pb.AuthDisableRequest, auth_state.apply_auth_disable, pb.AuthDisableResponse),
    EntryKind.AUTH_USER_ADD: (pb.AuthUserAddRequest, auth_state.apply_user_add, pb.AuthUserAddResponse),
    EntryKind.AUTH_USER_DELETE: (pb.AuthUserDeleteRequest, auth_state.apply_user_delete, pb.AuthUserDeleteResponse),
    EntryKind.AUTH_USER_CHANGE_PASSWORD: (pb.AuthUserChangePasswordRequest, auth_state.apply_user_change_password,
                                          pb.AuthUserChangePasswordResponse),
    EntryKind.AUTH_USER_GRANT_ROLE: (pb.AuthUserGrantRoleRequest, auth_state.apply_user_grant_role,
                                     pb.AuthUserGrantRoleResponse),
    EntryKind.AUTH_USER_REVOKE_ROLE: (pb.AuthUserRevokeRoleRequest, auth_state.apply_user_revoke_role,
                                      pb.AuthUserRevokeRoleResponse),
    EntryKind.AUTH_ROLE_ADD: (pb.AuthRoleAddRequest, auth_state.apply_role_add, pb.AuthRoleAddResponse),
    EntryKind.AUTH_ROLE_DELETE: (pb.AuthRoleDeleteRequest, auth_state.apply_role_delete, pb.AuthRoleDeleteResponse),
    EntryKind.AUTH_ROLE_GRANT_PERMISSION: (pb.AuthRoleGrantPermissionRequest, auth_state.apply_role_grant_permission,
                                           pb.AuthRoleGrantPermissionResponse),
    EntryKind.AUTH_ROLE_REVOKE_PERMISSION: (pb.AuthRoleRevokePermissionRequest,
                                            auth_state.apply_role_revoke_permission,
                                            pb.AuthRoleRevokePermissionResponse),
}
_NO_ARG = (pb.AuthEnableRequest, pb.AuthDisableRequest)


# -- helpers shared by the apply path and the read path ------------------------------------------------------


def compare_kv(c: pb.Compare, kv: KeyValue | None) -> bool:
    target = c.target
    if target == _CMP.VALUE:
        left: object = kv.value if kv else b""
        right: object = c.value
    elif target == _CMP.VERSION:
        left, right = (kv.version if kv else 0), c.version
    elif target == _CMP.CREATE:
        left, right = (kv.create_revision if kv else 0), c.create_revision
    elif target == _CMP.MOD:
        left, right = (kv.mod_revision if kv else 0), c.mod_revision
    elif target == _CMP.LEASE:
        left, right = (kv.lease if kv else 0), c.lease
    else:
        return False
    res = c.result
    if res == _CMP.EQUAL:
        return left == right
    if res == _CMP.NOT_EQUAL:
        return left != right
    if res == _CMP.GREATER:
        return bool(left > right)  # type: ignore[operator]
    if res == _CMP.LESS:
        return bool(left < right)  # type: ignore[operator]
    return False


def apply_compare(txn: WriteTxn, c: pb.Compare) -> bool:
    """etcd's rule: a missing key compares as a zero KeyValue, except a VALUE compare always fails."""
    kvs = txn.range(c.key, c.range_end, 0).kvs
    if not kvs:
        if c.target == _CMP.VALUE:
            return False
        return compare_kv(c, None)
    return all(compare_kv(c, kv) for kv in kvs)


def compare_path(txn: WriteTxn, req: pb.TxnRequest) -> list[bool]:
    """Evaluate every compare on the chosen path (nested txns included) against the state before the txn."""
    ok = all(apply_compare(txn, c) for c in req.compare)
    path = [ok]
    for op in req.success if ok else req.failure:
        if op.WhichOneof("request") == "request_txn":
            path.extend(compare_path(txn, op.request_txn))
    return path


_SORT_KEYS = {
    _RANGE.KEY: lambda kv: kv.key,
    _RANGE.VERSION: lambda kv: kv.version,
    _RANGE.CREATE: lambda kv: kv.create_revision,
    _RANGE.MOD: lambda kv: kv.mod_revision,
    _RANGE.VALUE: lambda kv: kv.value,
}


def execute_range(fetch: object, req: pb.RangeRequest) -> pb.RangeResponse:
    """etcd's Range semantics on top of a ``fetch(revision, limit, count_only) -> RangeResult``."""
    limit = req.limit
    post_filter = bool(
        req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
    )
    if req.sort_order != _RANGE.NONE or post_filter:
        limit = 0
    if limit > 0:
        limit += 1
    rr: store.RangeResult = fetch(req.revision, limit, req.count_only)  # type: ignore[operator]
    kvs = rr.kvs
    if post_filter:
        if req.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
        if req.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
        if req.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
        if req.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    sort_order = req.sort_order
    if req.sort_target != _RANGE.KEY and sort_order == _RANGE.NONE:
        sort_order = _RANGE.ASCEND
    if sort_order != _RANGE.NONE and not (req.sort_target == _RANGE.KEY and sort_order == _RANGE.ASCEND):
        kvs = sorted(kvs, key=_SORT_KEYS[req.sort_target], reverse=sort_order == _RANGE.DESCEND)
    resp = pb.RangeResponse(header=pb.ResponseHeader(revision=rr.revision), count=rr.count)
    if req.limit > 0 and len(kvs) > req.limit:
        kvs = kvs[: req.limit]
        resp.more = True
    if not req.count_only:
        add = resp.kvs.add  # filled in place: building messages and extending with them copies each one again
        if req.keys_only:
            for k, create, mod, version, _, lease in kvs:
                add(key=k, create_revision=create, mod_revision=mod, version=version, lease=lease)
        else:
            for k, create, mod, version, value, lease in kvs:
                add(key=k, create_revision=create, mod_revision=mod, version=version, value=value, lease=lease)
    return resp


def execute_read_only_txn(conn: sqlite3.Connection, req: pb.TxnRequest) -> pb.TxnResponse:
    """A txn whose every branch only reads, run on a reader connection without going through the log."""
    ex = Applier.__new__(Applier)
    ex.revision = store.current_revision(conn)
    ex.compact_revision = store.compact_revision(conn)
    ex.leases = {}
    ex.alarms = set()
    ex.applied_index = 0
    ex.min_lease_ttl_seconds = 0
    txn = WriteTxn(conn, ex.revision)
    path = compare_path(txn, req)
    ex._check_path(txn, req, path, 0)
    resp = pb.TxnResponse()
    ex._apply_txn(txn, req, path, 0, resp)
    resp.header.revision = ex.revision
    return resp

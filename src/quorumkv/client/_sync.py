"""The synchronous client over ``grpc`` channels: transport with failover, watches, managed leases."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.api.v3electionpb import v3election_pb2_grpc
from quorumkv.api.v3lockpb import v3lock_pb2_grpc
from quorumkv.client import _codec as codec
from quorumkv.client._codec import Call
from quorumkv.client._conn import (
    Deadline,
    WatchCursor,
    backoff_s,
    channel_credentials,
    channel_options,
    is_auth_expired,
    not_sent,
    parse_endpoints,
    should_failover,
    status_name,
    watch_failed,
    with_require_leader,
)
from quorumkv.client._errors import (
    DeadlineExceededError,
    EtcdError,
    LeaseExpiredError,
    LeaseNotFoundError,
    UnavailableError,
    from_rpc_error,
)
from quorumkv.client._txn import (
    Compare,
    KeyLike,
    Op,
    SortOrder,
    SortTarget,
    TxnSpec,
    range_end_for,
    range_request,
    to_bytes,
)
from quorumkv.client._types import (
    Alarm,
    DeleteResult,
    Event,
    GetResult,
    HashKVResult,
    KeyValue,
    LeaseGrant,
    LeaseInfo,
    Member,
    MemberChange,
    PutResult,
    ResponseHeader,
    Status,
    TxnResult,
    WatchResponse,
)

if TYPE_CHECKING:
    from quorumkv.client._recipes import Election, Lock

T = TypeVar("T")

_STUBS: dict[str, Callable[[Any], Any]] = {
    "KV": rpc_pb2_grpc.KVStub,
    "Watch": rpc_pb2_grpc.WatchStub,
    "Lease": rpc_pb2_grpc.LeaseStub,
    "Cluster": rpc_pb2_grpc.ClusterStub,
    "Maintenance": rpc_pb2_grpc.MaintenanceStub,
    "Auth": rpc_pb2_grpc.AuthStub,
    "Lock": v3lock_pb2_grpc.LockStub,  # etcd's server-side lock and election: raw_call/raw_stream only
    "Election": v3election_pb2_grpc.ElectionStub,
}


#: Replaced channels kept open (a call may still be starting on one) before they are closed.
_RETIRED_KEPT = 8


class _Transport:
    """Channels to every endpoint, the current endpoint, auth token, and the retry loop (see ``_conn``)."""

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float | None, max_retries: int | None,
                 ca_cert: str | Path | None, cert: str | Path | None, key: str | Path | None,
                 server_name: str | None, user: str | None, password: str | None,
                 grpc_options: Sequence[tuple[str, Any]] = ()) -> None:  # fmt: skip
        self.endpoints, secure = parse_endpoints(endpoints)
        self.timeout = timeout
        self.max_retries = 3 * len(self.endpoints) if max_retries is None else max_retries
        self._credentials = channel_credentials(ca_cert, cert, key, secure)
        self._options = list(grpc_options) + channel_options(server_name)  # gRPC keeps the first of a name
        self._user, self._password = user, password
        self._token: str | None = None
        self._lock = threading.Lock()
        self._channels: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._stubs: dict[tuple[str, str], Any] = {}
        self._index = 0
        self.closed = False

    @property
    def current(self) -> str:
        return self.endpoints[self._index]

    def rotate(self, failed: str) -> None:
        """Move off ``failed`` to the next endpoint (no-op if another caller already moved)."""
        with self._lock:
            if self.endpoints[self._index] == failed:
                self._index = (self._index + 1) % len(self.endpoints)

    def _channel_locked(self, endpoint: str) -> Any:
        if self.closed:
            raise EtcdError("client is closed")
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.insecure_channel(endpoint, options=self._options)
            else:
                channel = grpc.secure_channel(endpoint, self._credentials, options=self._options)
            self._channels[endpoint] = channel
        return channel

    def stub(self, endpoint: str, service: str) -> Any:
        with self._lock:
            found = self._stubs.get((endpoint, service))
            if found is None:
                found = self._stubs[(endpoint, service)] = _STUBS[service](self._channel_locked(endpoint))
            return found

    def wait_ready(self, endpoint: str, timeout: float | None) -> None:
        """Connect the channel to ``endpoint`` now; DeadlineExceededError if it is not connected within ``timeout``."""
        with self._lock:
            channel = self._channel_locked(endpoint)
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise DeadlineExceededError(f"could not connect to {endpoint} within {timeout}s",
                                        "DEADLINE_EXCEEDED") from None

    def renew_channel(self, endpoint: str) -> None:
        """Replace the channel to an endpoint that could not be reached: a fresh channel dials at once instead of
        waiting out gRPC's reconnect backoff. The old one is closed later (a call may still be starting on it)."""
        with self._lock:
            old = self._channels.pop(endpoint, None)
            for service in _STUBS:
                self._stubs.pop((endpoint, service), None)
            if old is not None:
                self._retired.append(old)
            stale = self._retired[:-_RETIRED_KEPT] if len(self._retired) > _RETIRED_KEPT else []
            del self._retired[: len(stale)]
        for channel in stale:
            channel.close()

    def metadata(self, call_method: str = "") -> tuple[tuple[str, str], ...] | None:
        if self._user is None or call_method == "Authenticate":
            return None
        if self._token is None:
            self._authenticate()
        return (("token", self._token or ""),)

    def _authenticate(self) -> None:
        assert self._user is not None
        self._token = self.run(codec.authenticate_call(self._user, self._password or ""))

    def run(self, call: Call[T], endpoint: str | None = None, timeout: float | None = -1.0) -> T:
        """Run a unary call (or a one-message stream for keep-alives) under the retry rule; bounded retries."""
        deadline = Deadline(self.timeout if timeout == -1.0 else timeout)
        attempt = 0
        reauthed = False
        while True:
            ep = endpoint or self.current
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(f"{call.method}: client timeout passed after {attempt} retries",
                                            "DEADLINE_EXCEEDED")
            try:
                method = getattr(self.stub(ep, call.service), call.method)
                md = self.metadata(call.method)
                if call.method == "LeaseKeepAlive":
                    stream = method(iter([call.request]), timeout=remaining, metadata=md)
                    try:
                        response = next(stream)
                    except StopIteration:
                        raise UnavailableError("keep-alive stream closed without an answer", "UNAVAILABLE") from None
                    finally:
                        stream.cancel()
                else:
                    response = method(call.request, timeout=remaining, metadata=md)
                return call.decode(response)
            except grpc.RpcError as err:
                code, details = status_name(err)
                if self._user is not None and not reauthed and is_auth_expired(code, details) \
                        and call.method != "Authenticate":
                    reauthed = True
                    self._authenticate()
                    continue
                if not_sent(code, details):
                    self.renew_channel(ep)
                if endpoint is None and attempt < self.max_retries and should_failover(code, details, call.idempotent):
                    attempt += 1
                    self.rotate(ep)
                    pause = backoff_s(attempt, len(self.endpoints))
                    left = deadline.remaining()
                    time.sleep(pause if left is None else min(pause, left))
                    continue
                if endpoint is None and code == "UNAVAILABLE":
                    self.rotate(ep)  # not resent, but the next call goes elsewhere
                raise from_rpc_error(err) from None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            channels = list(self._channels.values()) + self._retired
            self._channels.clear()
            self._retired = []
            self._stubs.clear()
        for channel in channels:
            channel.close()


class Txn:
    """A transaction under construction; :meth:`commit` sends it. Each builder call returns a new ``Txn``."""

    def __init__(self, transport: _Transport, spec: TxnSpec | None = None) -> None:
        self._transport = transport
        self.spec = spec or TxnSpec()

    def if_(self, *compares: Compare) -> Txn:
        return Txn(self._transport, TxnSpec(self.spec.compares + compares, self.spec.success, self.spec.failure))

    def then(self, *ops: Op) -> Txn:
        return Txn(self._transport, TxnSpec(self.spec.compares, self.spec.success + ops, self.spec.failure))

    def else_(self, *ops: Op) -> Txn:
        return Txn(self._transport, TxnSpec(self.spec.compares, self.spec.success, self.spec.failure + ops))

    def commit(self) -> TxnResult:
        return self._transport.run(codec.txn_call(self.spec))


_END = object()


class Watch:
    """A resumable watch. Iterating yields :class:`Event` s; :meth:`responses` yields :class:`WatchResponse` s
    (including progress notifications). A background thread holds the stream; when it breaks, the thread
    re-creates it (on another endpoint if needed) from the cursor's next revision, so nothing is lost or
    repeated. A compacted start raises :class:`CompactedError` from the iterator. :meth:`close` (or leaving a
    ``with`` block / breaking out of ``for event in client.watch(...)``) cancels it.
    """

    def __init__(self, transport: _Transport, cursor: WatchCursor, reconnect_timeout: float) -> None:
        self._transport = transport
        self._cursor = cursor
        self._reconnect_timeout = reconnect_timeout
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._call: Any = None
        self._call_lock = threading.Lock()
        self._outbox: queue.Queue[rpc_pb2.WatchRequest] = queue.Queue()
        self.created = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="quorumkv-watch", daemon=True)
        self._thread.start()

    @property
    def next_revision(self) -> int:
        """The revision the watch delivers next (0 until the first stream was created)."""
        return self._cursor.next_rev

    def _requests(self, stop: threading.Event, outbox: queue.Queue[rpc_pb2.WatchRequest]) -> Iterator[Any]:
        yield self._cursor.create_request()
        while not stop.is_set() and not self._closed.is_set():
            try:
                yield outbox.get(timeout=0.5)
            except queue.Empty:
                continue

    def request_progress(self) -> None:
        """Ask the server for a progress notification (a response with no events once the watch caught up)."""
        self._outbox.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def _run(self) -> None:
        broken_since: float | None = None
        while not self._closed.is_set():
            ep = self._transport.current
            stop = threading.Event()
            self._outbox = queue.Queue()
            error: BaseException | None = None
            try:
                call = self._transport.stub(ep, "Watch").Watch(self._requests(stop, self._outbox),
                                                                 metadata=with_require_leader(self._transport.metadata()))
                with self._call_lock:
                    self._call = call
                if self._closed.is_set():
                    call.cancel()
                for m in call:
                    out = self._cursor.on_response(m)
                    if m.created:
                        broken_since = None
                        self.created.set()
                    if out is not None:
                        self._queue.put(out)
                error = None
            except BaseException as err:
                error = err
            finally:
                stop.set()
            if self._closed.is_set():
                break
            fatal = watch_failed(error) if error is not None else None
            if fatal is not None:
                self._queue.put(fatal)
                return
            now = time.monotonic()
            broken_since = broken_since or now
            if now - broken_since > self._reconnect_timeout:
                self._queue.put(UnavailableError(f"watch could not reconnect within {self._reconnect_timeout}s: "
                                                 f"{error}", "UNAVAILABLE"))
                return
            self.reconnects += 1
            self._cursor.on_reconnect()
            if error is not None and not_sent(*status_name(error)):
                self._transport.renew_channel(ep)
            self._transport.rotate(ep)
            self._closed.wait(min(0.05 * self.reconnects, 0.5))
        self._queue.put(_END)

    def get(self, timeout: float | None = None) -> WatchResponse | None:
        """The next response, or None when ``timeout`` passes or the watch is closed; raises the watch's error."""
        deadline = Deadline(timeout)
        while True:
            left = deadline.remaining()
            try:
                item = self._queue.get(timeout=0.2 if left is None else min(left, 0.2))
            except queue.Empty:
                if self._closed.is_set() or deadline.expired:
                    return None
                continue
            if item is _END:
                self._queue.put(_END)
                return None
            if isinstance(item, BaseException):
                self._queue.put(item)
                raise item
            assert isinstance(item, WatchResponse)
            return item

    def responses(self) -> Iterator[WatchResponse]:
        try:
            while (item := self.get()) is not None:
                yield item
        finally:
            self.close()

    def __iter__(self) -> Iterator[Event]:
        for response in self.responses():
            yield from response.events

    def close(self) -> None:
        """Cancel the watch and wait (bounded, 5 s) for its thread; idempotent."""
        self._closed.set()
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lease:
    """A lease kept alive by a background thread until :meth:`close` (which revokes it).

    ``alive`` turns False and ``error`` is set (and ``on_error`` called once, from the keep-alive thread) when
    the lease is found expired or could not be renewed before its TTL ran out; nothing fails silently.
    """

    def __init__(self, client: Client, ttl: int, on_error: Callable[[EtcdError], None] | None = None) -> None:
        self._client = client
        self.granted_ttl = ttl
        self.on_error = on_error
        self.error: EtcdError | None = None
        self.id = 0
        self.keepalives = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.id != 0 and self.error is None and not self._stop.is_set()

    def grant(self) -> Lease:
        """Grant the lease and start keeping it alive (idempotent)."""
        if self.id == 0:
            granted = self._client.lease_grant(self.granted_ttl)
            self.id, self.granted_ttl = granted.id, granted.ttl
            self._thread = threading.Thread(target=self._run, name=f"quorumkv-lease-{self.id:x}", daemon=True)
            self._thread.start()
            self._client._leases = [x for x in self._client._leases if not x._stop.is_set()] + [self]
        return self

    def _fail(self, err: EtcdError) -> None:
        self.error = err
        if self.on_error is not None:
            try:
                self.on_error(err)
            except Exception:
                pass

    def _run(self) -> None:
        interval = max(self.granted_ttl / 3.0, 0.2)
        expires_at = time.monotonic() + self.granted_ttl
        transport = self._client._transport
        while not self._stop.wait(interval):
            endpoint = transport.current
            try:
                ttl = transport.run(Call("Lease", "LeaseKeepAlive", codec.keepalive_request(self.id),
                                         lambda m: int(m.TTL), True), timeout=max(min(interval, 5.0), 1.0))
            except LeaseNotFoundError as err:
                self._fail(LeaseExpiredError(err.message, err.code))
                return
            except EtcdError as err:
                if time.monotonic() >= expires_at:
                    self._fail(LeaseExpiredError(f"lease {self.id:x} could not be renewed before it expired: "
                                                 f"{err.message}", err.code))
                    return
                if isinstance(err, DeadlineExceededError):
                    transport.rotate(endpoint)  # a keep-alive is idempotent: try a member that answers
                interval = 0.2
                continue
            if ttl <= 0:
                self._fail(LeaseExpiredError(f"lease {self.id:x} expired", "NOT_FOUND"))
                return
            self.keepalives += 1
            expires_at = time.monotonic() + ttl
            interval = max(ttl / 3.0, 0.2)

    def time_to_live(self, keys: bool = False) -> LeaseInfo:
        return self._client.lease_time_to_live(self.id, keys=keys)

    def close(self, revoke: bool = True) -> None:
        """Stop the keep-alive and (by default) revoke the lease; a lease already gone is not an error."""
        self._stop.set()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(10.0)
        if revoke and self.id:
            try:
                self._client.lease_revoke(self.id)
            except LeaseNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self.grant()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawStream:
    """A streaming RPC's raw response messages (see :meth:`Client.raw_stream`).

    Invariant: iterating raises only :class:`EtcdError` for a failed stream (never ``grpc.RpcError``); the stream
    is not resent or resumed. :meth:`cancel` (or leaving a ``with`` block) ends it; idempotent.
    """

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _identity(message: Any) -> Any:
    return message


class Client:
    """A synchronous etcd v3 client.

    ``endpoints``: ``host:port`` or URLs, a list or a comma-separated string. ``timeout`` bounds each call
    (retries included; None: no bound). See ``docs/client.md``.
    """

    def __init__(self, endpoints: str | Sequence[str] = "127.0.0.1:2379", *, timeout: float | None = 10.0,
                 max_retries: int | None = None, ca_cert: str | Path | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None, server_name: str | None = None, user: str | None = None,
                 password: str | None = None, grpc_options: Sequence[tuple[str, Any]] = ()) -> None:  # fmt: skip
        self._transport = _Transport(endpoints, timeout=timeout, max_retries=max_retries, ca_cert=ca_cert,
                                     cert=cert, key=key, server_name=server_name, user=user, password=password,
                                     grpc_options=grpc_options)
        self._watches: list[Watch] = []
        self._leases: list[Lease] = []

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now (it changes on failover)."""
        return self._transport.current

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._transport.endpoints

    # ------------------------------------------------------------------------------------------------ KV

    def get(self, key: KeyLike, *, revision: int = 0, serializable: bool = False) -> KeyValue | None:
        """The key's current (or ``revision``'s) state, None if absent."""
        return self._transport.run(codec.get_call(key, revision=revision, serializable=serializable))

    def get_range(self, key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False, limit: int = 0,
                  revision: int = 0, sort_order: SortOrder = "none", sort_target: SortTarget = "key",
                  keys_only: bool = False, count_only: bool = False, serializable: bool = False,
                  min_mod_revision: int = 0, max_mod_revision: int = 0, min_create_revision: int = 0,
                  max_create_revision: int = 0) -> GetResult:  # fmt: skip
        request = range_request(key, range_end, prefix=prefix, limit=limit, revision=revision, sort_order=sort_order,
                                sort_target=sort_target, keys_only=keys_only, count_only=count_only,
                                serializable=serializable, min_mod_revision=min_mod_revision,
                                max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
                                max_create_revision=max_create_revision)
        return self._transport.run(codec.range_call(request))

    def get_prefix(self, prefix: KeyLike, *, limit: int = 0, revision: int = 0, sort_order: SortOrder = "none",
                   sort_target: SortTarget = "key", keys_only: bool = False, count_only: bool = False,
                   serializable: bool = False) -> GetResult:  # fmt: skip
        return self.get_range(prefix, prefix=True, limit=limit, revision=revision, sort_order=sort_order,
                              sort_target=sort_target, keys_only=keys_only, count_only=count_only,
                              serializable=serializable)

    def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False, ignore_value: bool = False,
            ignore_lease: bool = False) -> PutResult:  # fmt: skip
        return self._transport.run(codec.put_call(key, value, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value,
                                                  ignore_lease=ignore_lease))

    def delete(self, key: KeyLike, *, prev_kv: bool = False) -> DeleteResult:
        return self._transport.run(codec.delete_call(key, prev_kv=prev_kv))

    def delete_range(self, key: KeyLike, range_end: KeyLike, *, prev_kv: bool = False) -> DeleteResult:
        return self._transport.run(codec.delete_call(key, range_end, prev_kv=prev_kv))

    def delete_prefix(self, prefix: KeyLike, *, prev_kv: bool = False) -> DeleteResult:
        return self._transport.run(codec.delete_call(prefix, prefix=True, prev_kv=prev_kv))

    def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        return self._transport.run(codec.compact_call(revision, physical))

    def txn(self) -> Txn:
        """Start a transaction: ``client.txn().if_(...).then(...).else_(...).commit()``."""
        return Txn(self._transport)

    # ------------------------------------------------------------------------------------------ cluster

    def status(self, endpoint: str | None = None) -> Status:
        """The member's status (``endpoint``: that member only, no failover)."""
        return self._transport.run(codec.status_call(), endpoint)

    def members(self) -> tuple[Member, ...]:
        return self._transport.run(codec.members_call())

    def member_add(self, peer_urls: Sequence[str], *, is_learner: bool = False) -> MemberChange:
        return self._transport.run(codec.member_add_call(peer_urls, is_learner))

    def member_remove(self, member_id: int) -> MemberChange:
        return self._transport.run(codec.member_remove_call(member_id))

    def member_update(self, member_id: int, peer_urls: Sequence[str]) -> MemberChange:
        return self._transport.run(codec.member_update_call(member_id, peer_urls))

    def member_promote(self, member_id: int) -> MemberChange:
        return self._transport.run(codec.member_promote_call(member_id))

    def defragment(self, endpoint: str | None = None) -> ResponseHeader:
        """Defragment one member (``endpoint``, default the current one); never retried elsewhere."""
        return self._transport.run(codec.defragment_call(), endpoint or self.endpoint)

    def alarms(self) -> tuple[Alarm, ...]:
        return self._transport.run(codec.alarms_call())

    def alarm_disarm(self, member_id: int = 0, alarm: str = "NOSPACE") -> tuple[Alarm, ...]:
        return self._transport.run(codec.alarm_disarm_call(member_id, alarm))

    def hash_kv(self, revision: int = 0, endpoint: str | None = None) -> HashKVResult:
        return self._transport.run(codec.hash_kv_call(revision), endpoint or self.endpoint)

    def snapshot(self, to: str | Path, endpoint: str | None = None) -> int:
        """Stream a member's backend snapshot into the file ``to`` (written whole or not at all); its size."""
        target = Path(to)
        tmp = target.with_name(target.name + ".part")
        ep = endpoint or self.endpoint
        size = 0
        try:
            stream = self._transport.stub(ep, "Maintenance").Snapshot(
                rpc_pb2.SnapshotRequest(), timeout=None, metadata=self._transport.metadata())
            with open(tmp, "wb") as fh:
                for chunk in stream:
                    fh.write(chunk.blob)
                    size += len(chunk.blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except grpc.RpcError as err:
            tmp.unlink(missing_ok=True)
            raise from_rpc_error(err) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    # ------------------------------------------------------------------------------------------ leases

    def lease_grant(self, ttl: int, lease_id: int = 0) -> LeaseGrant:
        return self._transport.run(codec.lease_grant_call(ttl, lease_id))

    def lease_revoke(self, lease_id: int) -> ResponseHeader:
        return self._transport.run(codec.lease_revoke_call(lease_id))

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        return self._transport.run(codec.lease_ttl_call(lease_id, keys))

    def leases(self) -> tuple[int, ...]:
        return self._transport.run(codec.leases_call())

    def lease_keep_alive_once(self, lease_id: int) -> int:
        """Renew once; the new TTL (0 or less: the lease is gone)."""
        return self._transport.run(Call("Lease", "LeaseKeepAlive", codec.keepalive_request(lease_id),
                                        lambda m: int(m.TTL), True))

    def lease(self, ttl: int, *, on_error: Callable[[EtcdError], None] | None = None) -> Lease:
        """A managed lease: ``with client.lease(ttl=10) as lease: client.put(k, v, lease=lease.id)``."""
        return Lease(self, ttl, on_error)

    # ------------------------------------------------------------------------------------------ watch

    def watch(self, key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False, start_revision: int = 0,
              prev_kv: bool = False, progress_notify: bool = False, filters: Sequence[str] = (),
              reconnect_timeout: float = 60.0) -> Watch:  # fmt: skip
        """Watch a key (or range/prefix); ``filters`` may hold "NOPUT"/"NODELETE"."""
        k = to_bytes(key)
        cursor = WatchCursor(k, range_end_for(k, range_end, prefix), start_revision, prev_kv, progress_notify,
                             tuple(filters))
        w = Watch(self._transport, cursor, reconnect_timeout)
        self._watches = [x for x in self._watches if not x._closed.is_set()] + [w]
        return w

    def watch_prefix(self, prefix: KeyLike, *, start_revision: int = 0, prev_kv: bool = False,
                     progress_notify: bool = False, reconnect_timeout: float = 60.0) -> Watch:  # fmt: skip
        return self.watch(prefix, prefix=True, start_revision=start_revision, prev_kv=prev_kv,
                          progress_notify=progress_notify, reconnect_timeout=reconnect_timeout)

    # ------------------------------------------------------------------------------------------ recipes

    def lock(self, name: KeyLike, *, ttl: int = 60, timeout: float | None = None) -> Lock:
        """A distributed mutex (``with client.lock("name"): ...``); see :class:`quorumkv.client.Lock`."""
        from quorumkv.client._recipes import Lock

        return Lock(self, name, ttl=ttl, timeout=timeout)

    def election(self, name: KeyLike, *, ttl: int = 60) -> Election:
        """A leader election; see :class:`quorumkv.client.Election`."""
        from quorumkv.client._recipes import Election

        return Election(self, name, ttl=ttl)

    # ------------------------------------------------------------------------------------------ low level

    def wait_ready(self, timeout: float | None, endpoint: str | None = None) -> None:
        """Connect to ``endpoint`` (default: the current one) now instead of at the first call, like a blocking
        dial; raises :class:`DeadlineExceededError` if no connection is made within ``timeout`` seconds."""
        self._transport.wait_ready(endpoint or self.endpoint, timeout)

    def authenticate(self) -> None:
        """Log in now with the client's user and password (otherwise the first call does); raises the server's
        error (e.g. ``AuthenticationFailedError``) at once. A client without a user does nothing."""
        if self._transport._user is not None:
            self._transport._authenticate()

    def raw_call(self, service: str, method: str, request: Message, *, idempotent: bool = False,
                 endpoint: str | None = None) -> Any:  # fmt: skip
        """One unary RPC ``service.method`` (e.g. ``"KV", "Range"``) with an ``etcdserverpb`` request (or, for
        ``"Lock"`` / ``"Election"``, a ``v3lockpb`` / ``v3electionpb`` one); returns the
        server's response message unchanged. Timeout, auth, error mapping and the retry rule are the typed
        methods': ``idempotent`` says whether the call may be resent after an ambiguous failure; with ``endpoint``
        it goes to that member only."""
        return self._transport.run(Call(service, method, request, _identity, idempotent), endpoint)

    def raw_stream(self, service: str, method: str, request: Message | Iterable[Message], *,
                   endpoint: str | None = None, timeout: float | None = None) -> RawStream:  # fmt: skip
        """A streaming RPC (``"Watch", "Watch"``, ``"Lease", "LeaseKeepAlive"``: an iterable of requests;
        ``"Maintenance", "Snapshot"``: one request) on ``endpoint`` (default: the current one), bounded by
        ``timeout`` (None: unbounded); its raw responses. Never resent or resumed (see :meth:`watch` for that)."""
        ep = endpoint or self.endpoint
        stub_method = getattr(self._transport.stub(ep, service), method)
        return RawStream(stub_method(request, timeout=timeout, metadata=self._transport.metadata()))

    # ------------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Cancel open watches, stop and revoke managed leases, close every channel; idempotent."""
        for w in self._watches:
            w.close()
        self._watches.clear()
        leases, self._leases = self._leases, []
        for managed in leases:
            if not managed._stop.is_set():
                try:
                    managed.close()
                except EtcdError:
                    pass  # the server is gone: the lease expires on its own
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()


__all__ = ["Client", "Lease", "RawStream", "Txn", "Watch"]

"""The asyncio client over ``grpc.aio``: the same calls, retry rule and watch cursor as the sync client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

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
from quorumkv.client._sync import _RETIRED_KEPT, _STUBS
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
    from quorumkv.client._async_recipes import AsyncElection, AsyncLock

__all__ = ["AsyncClient", "AsyncLease", "AsyncRawStream", "AsyncTxn", "AsyncWatch"]

T = TypeVar("T")


class _AsyncTransport:
    """The async twin of ``_sync._Transport`` (channels are created on the running event loop)."""

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
        self._channels: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._stubs: dict[tuple[str, str], Any] = {}
        self._index = 0
        self.closed = False

    @property
    def current(self) -> str:
        return self.endpoints[self._index]

    def rotate(self, failed: str) -> None:
        if self.endpoints[self._index] == failed:
            self._index = (self._index + 1) % len(self.endpoints)

    def channel(self, endpoint: str) -> Any:
        if self.closed:
            raise EtcdError("client is closed")
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            else:
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=self._options)
            self._channels[endpoint] = channel
        return channel

    def stub(self, endpoint: str, service: str) -> Any:
        found = self._stubs.get((endpoint, service))
        if found is None:
            found = self._stubs[(endpoint, service)] = _STUBS[service](self.channel(endpoint))
        return found

    async def wait_ready(self, endpoint: str, timeout: float | None) -> None:
        """See ``_sync._Transport.wait_ready``."""
        try:
            await asyncio.wait_for(self.channel(endpoint).channel_ready(), timeout)
        except TimeoutError:
            raise DeadlineExceededError(f"could not connect to {endpoint} within {timeout}s",
                                        "DEADLINE_EXCEEDED") from None

    async def renew_channel(self, endpoint: str) -> None:
        """See ``_sync._Transport.renew_channel``."""
        old = self._channels.pop(endpoint, None)
        for service in _STUBS:
            self._stubs.pop((endpoint, service), None)
        if old is not None:
            self._retired.append(old)
        while len(self._retired) > _RETIRED_KEPT:
            await self._retired.pop(0).close()

    async def metadata(self, call_method: str = "") -> tuple[tuple[str, str], ...] | None:
        if self._user is None or call_method == "Authenticate":
            return None
        if self._token is None:
            await self._authenticate()
        return (("token", self._token or ""),)

    async def _authenticate(self) -> None:
        assert self._user is not None
        self._token = await self.run(codec.authenticate_call(self._user, self._password or ""))

    async def run(self, call: Call[T], endpoint: str | None = None, timeout: float | None = -1.0) -> T:
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
                md = await self.metadata(call.method)
                if call.method == "LeaseKeepAlive":
                    stream = method(iter([call.request]), timeout=remaining, metadata=md)
                    try:
                        response = await stream.read()
                    finally:
                        stream.cancel()
                    if response is grpc.aio.EOF:
                        raise UnavailableError("keep-alive stream closed without an answer", "UNAVAILABLE")
                else:
                    response = await method(call.request, timeout=remaining, metadata=md)
                return call.decode(response)
            except grpc.RpcError as err:
                code, details = status_name(err)
                if self._user is not None and not reauthed and is_auth_expired(code, details) \
                        and call.method != "Authenticate":
                    reauthed = True
                    await self._authenticate()
                    continue
                if not_sent(code, details):
                    await self.renew_channel(ep)
                if endpoint is None and attempt < self.max_retries and should_failover(code, details, call.idempotent):
                    attempt += 1
                    self.rotate(ep)
                    pause = backoff_s(attempt, len(self.endpoints))
                    left = deadline.remaining()
                    await asyncio.sleep(pause if left is None else min(pause, left))
                    continue
                if endpoint is None and code == "UNAVAILABLE":
                    self.rotate(ep)  # not resent, but the next call goes elsewhere
                raise from_rpc_error(err) from None

    async def close(self) -> None:
        self.closed = True
        channels = list(self._channels.values()) + self._retired
        self._channels.clear()
        self._retired = []
        self._stubs.clear()
        for channel in channels:
            await channel.close()


class AsyncTxn:
    """The async transaction builder: ``await client.txn().if_(...).then(...).else_(...).commit()``."""

    def __init__(self, transport: _AsyncTransport, spec: TxnSpec | None = None) -> None:
        self._transport = transport
        self.spec = spec or TxnSpec()

    def if_(self, *compares: Compare) -> AsyncTxn:
        return AsyncTxn(self._transport, TxnSpec(self.spec.compares + compares, self.spec.success, self.spec.failure))

    def then(self, *ops: Op) -> AsyncTxn:
        return AsyncTxn(self._transport, TxnSpec(self.spec.compares, self.spec.success + ops, self.spec.failure))

    def else_(self, *ops: Op) -> AsyncTxn:
        return AsyncTxn(self._transport, TxnSpec(self.spec.compares, self.spec.success, self.spec.failure + ops))

    async def commit(self) -> TxnResult:
        return await self._transport.run(codec.txn_call(self.spec))


class AsyncWatch:
    """A resumable watch for ``async for``: events (``async for e in w``) or :meth:`responses`.

    Same guarantees as the sync :class:`~quorumkv.client.Watch`: a broken stream is re-created from the next
    undelivered revision (another endpoint if needed); compaction raises :class:`CompactedError`.
    """

    def __init__(self, transport: _AsyncTransport, cursor: WatchCursor, reconnect_timeout: float) -> None:
        self._transport = transport
        self._cursor = cursor
        self._reconnect_timeout = reconnect_timeout
        self._call: Any = None
        self._closed = False
        self.reconnects = 0

    @property
    def next_revision(self) -> int:
        return self._cursor.next_rev

    async def responses(self) -> AsyncIterator[WatchResponse]:
        broken_since: float | None = None
        try:
            while not self._closed:
                ep = self._transport.current
                error: BaseException | None = None
                try:
                    call = self._call = self._transport.stub(ep, "Watch").Watch(
                        metadata=with_require_leader(await self._transport.metadata()))
                    await call.write(self._cursor.create_request())
                    while True:
                        m = await call.read()
                        if m is grpc.aio.EOF:
                            break
                        out = self._cursor.on_response(m)
                        if m.created:
                            broken_since = None
                        if out is not None:
                            yield out
                except (grpc.RpcError, EtcdError) as err:
                    error = err
                if self._closed:
                    return
                fatal = watch_failed(error) if error is not None else None
                if fatal is not None:
                    raise fatal
                now = time.monotonic()
                broken_since = broken_since or now
                if now - broken_since > self._reconnect_timeout:
                    raise UnavailableError(f"watch could not reconnect within {self._reconnect_timeout}s: {error}",
                                           "UNAVAILABLE")
                self.reconnects += 1
                self._cursor.on_reconnect()
                if error is not None and not_sent(*status_name(error)):
                    await self._transport.renew_channel(ep)
                self._transport.rotate(ep)
                await asyncio.sleep(min(0.05 * self.reconnects, 0.5))
        finally:
            self.close()

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for response in self.responses():
            for event in response.events:
                yield event

    async def request_progress(self) -> None:
        """Ask the server for a progress notification on the current stream (no-op before it exists)."""
        from quorumkv.api.etcdserverpb import rpc_pb2

        if self._call is not None:
            await self._call.write(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def close(self) -> None:
        """Cancel the stream; idempotent."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncLease:
    """A lease kept alive by a background task: ``async with client.lease(ttl=10) as lease: ...``.

    Same reporting as the sync :class:`~quorumkv.client.Lease`: ``alive``, ``error`` and ``on_error``.
    """

    def __init__(self, client: AsyncClient, ttl: int, on_error: Callable[[EtcdError], None] | None = None) -> None:
        self._client = client
        self.granted_ttl = ttl
        self.on_error = on_error
        self.error: EtcdError | None = None
        self.id = 0
        self.keepalives = 0
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def alive(self) -> bool:
        return self.id != 0 and self.error is None and not self._stopped

    async def grant(self) -> AsyncLease:
        if self.id == 0:
            granted = await self._client.lease_grant(self.granted_ttl)
            self.id, self.granted_ttl = granted.id, granted.ttl
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._client._leases = [x for x in self._client._leases if not x._stopped] + [self]
        return self

    def _fail(self, err: EtcdError) -> None:
        self.error = err
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(err)

    async def _run(self) -> None:
        interval = max(self.granted_ttl / 3.0, 0.2)
        expires_at = time.monotonic() + self.granted_ttl
        while not self._stopped:
            await asyncio.sleep(interval)
            endpoint = self._client._transport.current
            try:
                ttl = await self._client._transport.run(
                    Call("Lease", "LeaseKeepAlive", codec.keepalive_request(self.id), lambda m: int(m.TTL), True),
                    timeout=max(min(interval, 5.0), 1.0))
            except LeaseNotFoundError as err:
                self._fail(LeaseExpiredError(err.message, err.code))
                return
            except EtcdError as err:
                if time.monotonic() >= expires_at:
                    self._fail(LeaseExpiredError(f"lease {self.id:x} could not be renewed before it expired: "
                                                 f"{err.message}", err.code))
                    return
                if isinstance(err, DeadlineExceededError):
                    self._client._transport.rotate(endpoint)  # idempotent: try a member that answers
                interval = 0.2
                continue
            if ttl <= 0:
                self._fail(LeaseExpiredError(f"lease {self.id:x} expired", "NOT_FOUND"))
                return
            self.keepalives += 1
            expires_at = time.monotonic() + ttl
            interval = max(ttl / 3.0, 0.2)

    async def close(self, revoke: bool = True) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if revoke and self.id:
            with contextlib.suppress(LeaseNotFoundError):
                await self._client.lease_revoke(self.id)

    async def __aenter__(self) -> AsyncLease:
        return await self.grant()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRawStream:
    """The async twin of :class:`~quorumkv.client.RawStream`: ``async for`` the raw responses; failures raise
    :class:`EtcdError`; never resent or resumed."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for message in self._call:
                yield message
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def cancel(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> AsyncRawStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


def _identity(message: Any) -> Any:
    return message


class AsyncClient:
    """The asyncio etcd v3 client; the same methods as :class:`~quorumkv.client.Client`, awaited."""

    def __init__(self, endpoints: str | Sequence[str] = "127.0.0.1:2379", *, timeout: float | None = 10.0,
                 max_retries: int | None = None, ca_cert: str | Path | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None, server_name: str | None = None, user: str | None = None,
                 password: str | None = None, grpc_options: Sequence[tuple[str, Any]] = ()) -> None:  # fmt: skip
        self._transport = _AsyncTransport(endpoints, timeout=timeout, max_retries=max_retries, ca_cert=ca_cert,
                                          cert=cert, key=key, server_name=server_name, user=user,
                                          password=password, grpc_options=grpc_options)
        self._watches: list[AsyncWatch] = []
        self._leases: list[AsyncLease] = []

    @property
    def endpoint(self) -> str:
        return self._transport.current

    async def get(self, key: KeyLike, *, revision: int = 0, serializable: bool = False) -> KeyValue | None:
        return await self._transport.run(codec.get_call(key, revision=revision, serializable=serializable))

    async def get_range(self, key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False,
                        limit: int = 0, revision: int = 0, sort_order: SortOrder = "none",
                        sort_target: SortTarget = "key", keys_only: bool = False, count_only: bool = False,
                        serializable: bool = False, min_mod_revision: int = 0, max_mod_revision: int = 0,
                        min_create_revision: int = 0, max_create_revision: int = 0) -> GetResult:  # fmt: skip
        request = range_request(key, range_end, prefix=prefix, limit=limit, revision=revision, sort_order=sort_order,
                                sort_target=sort_target, keys_only=keys_only, count_only=count_only,
                                serializable=serializable, min_mod_revision=min_mod_revision,
                                max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
                                max_create_revision=max_create_revision)
        return await self._transport.run(codec.range_call(request))

    async def get_prefix(self, prefix: KeyLike, *, limit: int = 0, revision: int = 0, sort_order: SortOrder = "none",
                         sort_target: SortTarget = "key", keys_only: bool = False, count_only: bool = False,
                         serializable: bool = False) -> GetResult:  # fmt: skip
        return await self.get_range(prefix, prefix=True, limit=limit, revision=revision, sort_order=sort_order,
                                    sort_target=sort_target, keys_only=keys_only, count_only=count_only,
                                    serializable=serializable)

    async def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False,
                  ignore_value: bool = False, ignore_lease: bool = False) -> PutResult:  # fmt: skip
        return await self._transport.run(codec.put_call(key, value, lease=lease, prev_kv=prev_kv,
                                                        ignore_value=ignore_value, ignore_lease=ignore_lease))

    async def delete(self, key: KeyLike, *, prev_kv: bool = False) -> DeleteResult:
        return await self._transport.run(codec.delete_call(key, prev_kv=prev_kv))

    async def delete_range(self, key: KeyLike, range_end: KeyLike, *, prev_kv: bool = False) -> DeleteResult:
        return await self._transport.run(codec.delete_call(key, range_end, prev_kv=prev_kv))

    async def delete_prefix(self, prefix: KeyLike, *, prev_kv: bool = False) -> DeleteResult:
        return await self._transport.run(codec.delete_call(prefix, prefix=True, prev_kv=prev_kv))

    async def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        return await self._transport.run(codec.compact_call(revision, physical))

    def txn(self) -> AsyncTxn:
        return AsyncTxn(self._transport)

    async def status(self, endpoint: str | None = None) -> Status:
        return await self._transport.run(codec.status_call(), endpoint)

    async def members(self) -> tuple[Member, ...]:
        return await self._transport.run(codec.members_call())

    async def member_add(self, peer_urls: Sequence[str], *, is_learner: bool = False) -> MemberChange:
        return await self._transport.run(codec.member_add_call(peer_urls, is_learner))

    async def member_remove(self, member_id: int) -> MemberChange:
        return await self._transport.run(codec.member_remove_call(member_id))

    async def member_update(self, member_id: int, peer_urls: Sequence[str]) -> MemberChange:
        return await self._transport.run(codec.member_update_call(member_id, peer_urls))

    async def member_promote(self, member_id: int) -> MemberChange:
        return await self._transport.run(codec.member_promote_call(member_id))

    async def defragment(self, endpoint: str | None = None) -> ResponseHeader:
        return await self._transport.run(codec.defragment_call(), endpoint or self.endpoint)

    async def alarms(self) -> tuple[Alarm, ...]:
        return await self._transport.run(codec.alarms_call())

    async def alarm_disarm(self, member_id: int = 0, alarm: str = "NOSPACE") -> tuple[Alarm, ...]:
        return await self._transport.run(codec.alarm_disarm_call(member_id, alarm))

    async def hash_kv(self, revision: int = 0, endpoint: str | None = None) -> HashKVResult:
        return await self._transport.run(codec.hash_kv_call(revision), endpoint or self.endpoint)

    async def snapshot(self, to: str | Path, endpoint: str | None = None) -> int:
        """Stream a member's snapshot into ``to`` (written whole or not at all); its size in bytes."""
        from quorumkv.api.etcdserverpb import rpc_pb2

        target = Path(to)
        tmp = target.with_name(target.name + ".part")
        stream = self._transport.stub(endpoint or self.endpoint, "Maintenance").Snapshot(
            rpc_pb2.SnapshotRequest(), metadata=await self._transport.metadata())
        size = 0
        fh = await asyncio.to_thread(open, tmp, "wb")
        try:
            try:
                async for chunk in stream:
                    await asyncio.to_thread(fh.write, chunk.blob)
                    size += len(chunk.blob)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
            await asyncio.to_thread(fh.flush)
            await asyncio.to_thread(os.fsync, fh.fileno())
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        tmp.replace(target)
        return size

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> LeaseGrant:
        return await self._transport.run(codec.lease_grant_call(ttl, lease_id))

    async def lease_revoke(self, lease_id: int) -> ResponseHeader:
        return await self._transport.run(codec.lease_revoke_call(lease_id))

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        return await self._transport.run(codec.lease_ttl_call(lease_id, keys))

    async def leases(self) -> tuple[int, ...]:
        return await self._transport.run(codec.leases_call())

    async def lease_keep_alive_once(self, lease_id: int) -> int:
        return await self._transport.run(Call("Lease", "LeaseKeepAlive", codec.keepalive_request(lease_id),
                                              lambda m: int(m.TTL), True))

    def lease(self, ttl: int, *, on_error: Callable[[EtcdError], None] | None = None) -> AsyncLease:
        return AsyncLease(self, ttl, on_error)

    def watch(self, key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False, start_revision: int = 0,
              prev_kv: bool = False, progress_notify: bool = False, filters: Sequence[str] = (),
              reconnect_timeout: float = 60.0) -> AsyncWatch:  # fmt: skip
        k = to_bytes(key)
        cursor = WatchCursor(k, range_end_for(k, range_end, prefix), start_revision, prev_kv, progress_notify,
                             tuple(filters))
        w = AsyncWatch(self._transport, cursor, reconnect_timeout)
        self._watches = [x for x in self._watches if not x._closed] + [w]
        return w

    def watch_prefix(self, prefix: KeyLike, *, start_revision: int = 0, prev_kv: bool = False,
                     progress_notify: bool = False, reconnect_timeout: float = 60.0) -> AsyncWatch:  # fmt: skip
        return self.watch(prefix, prefix=True, start_revision=start_revision, prev_kv=prev_kv,
                          progress_notify=progress_notify, reconnect_timeout=reconnect_timeout)

    def lock(self, name: KeyLike, *, ttl: int = 60, timeout: float | None = None) -> AsyncLock:
        """A distributed mutex: ``async with client.lock("name"): ...``."""
        from quorumkv.client._async_recipes import AsyncLock

        return AsyncLock(self, name, ttl=ttl, timeout=timeout)

    def election(self, name: KeyLike, *, ttl: int = 60) -> AsyncElection:
        """A leader election (``await e.campaign(v)``, ``await e.leader()``, ``async for kv in e.observe()``)."""
        from quorumkv.client._async_recipes import AsyncElection

        return AsyncElection(self, name, ttl=ttl)

    async def wait_ready(self, timeout: float | None, endpoint: str | None = None) -> None:
        """See :meth:`Client.wait_ready <quorumkv.client.Client.wait_ready>`."""
        await self._transport.wait_ready(endpoint or self.endpoint, timeout)

    async def authenticate(self) -> None:
        """See :meth:`Client.authenticate <quorumkv.client.Client.authenticate>`."""
        if self._transport._user is not None:
            await self._transport._authenticate()

    async def raw_call(self, service: str, method: str, request: Message, *, idempotent: bool = False,
                       endpoint: str | None = None) -> Any:  # fmt: skip
        """See :meth:`Client.raw_call <quorumkv.client.Client.raw_call>`: the server's response message unchanged."""
        return await self._transport.run(Call(service, method, request, _identity, idempotent), endpoint)

    async def raw_stream(self, service: str, method: str, request: Message | Iterable[Message], *,
                         endpoint: str | None = None, timeout: float | None = None) -> AsyncRawStream:  # fmt: skip
        """See :meth:`Client.raw_stream <quorumkv.client.Client.raw_stream>`."""
        stub_method = getattr(self._transport.stub(endpoint or self.endpoint, service), method)
        return AsyncRawStream(stub_method(request, timeout=timeout, metadata=await self._transport.metadata()))

    async def close(self) -> None:
        """Cancel open watches, stop and revoke managed leases, close every channel; idempotent."""
        for w in self._watches:
            w.close()
        self._watches.clear()
        leases, self._leases = self._leases, []
        for managed in leases:
            if not managed._stopped:
                with contextlib.suppress(EtcdError):
                    await managed.close()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.close()

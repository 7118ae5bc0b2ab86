"""Lock and leader election over KV, Lease and Watch (etcd's concurrency recipe), for the sync client.

Each participant owns a lease and creates ``<name>/<lease id in hex>`` with it in a transaction guarded by
``create_revision == 0``. The participant whose key has the lowest create revision holds the lock / leads;
the others wait until the key with the next lower create revision is deleted (released, or its lease expired),
then check again. Waiting on one predecessor only means a release wakes one waiter, not all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from quorumkv.client._conn import Deadline
from quorumkv.client._errors import DeadlineExceededError, EtcdError
from quorumkv.client._txn import KeyLike, create_revision, delete, get, put, to_bytes
from quorumkv.client._types import KeyValue

if TYPE_CHECKING:
    from quorumkv.client._sync import Client, Lease

__all__ = ["Election", "Lock"]


def wait_deletes(client: Client, prefix: bytes, my_rev: int, deadline: Deadline, lease: Lease) -> int:
    """Return once no key under ``prefix`` has a create revision below ``my_rev``; bounded by ``deadline``.
    Returns the revision at which that was seen, 0 if there was nothing to wait for."""
    waited = False
    while True:
        res = client.get_range(prefix, prefix=True, max_create_revision=my_rev - 1, sort_order="descend",
                               sort_target="create", limit=1)
        if not res.kvs:
            return res.header.revision if waited else 0
        waited = True
        with client.watch(res.kvs[0].key, start_revision=res.header.revision + 1, filters=("NOPUT",)) as w:
            while True:
                if lease.error is not None:
                    raise lease.error
                left = deadline.remaining()
                response = w.get(timeout=1.0 if left is None else min(left, 1.0))
                if response is not None and any(e.type == "DELETE" for e in response.events):
                    break
                if deadline.expired:
                    raise DeadlineExceededError("timed out waiting for the lock/leadership", "DEADLINE_EXCEEDED")


class Lock:
    """A distributed mutex. ``with client.lock("jobs", ttl=30): ...``; also :meth:`acquire` / :meth:`release`.

    Invariant: while held, ``key`` exists with the lowest create revision under ``name/`` and is attached to a
    kept-alive lease; if the lease is lost, ``lease.alive`` turns False (the lock is then no longer safe).
    """

    def __init__(self, client: Client, name: KeyLike, *, ttl: int = 60, timeout: float | None = None) -> None:
        self._client = client
        self.prefix = to_bytes(name) + b"/"
        self.ttl = ttl
        self.timeout = timeout
        self.lease: Lease | None = None
        self.key: bytes | None = None
        self.revision = 0
        #: The revision at which the lock was seen held (etcd's ``Mutex.Header().Revision``).
        self.header_revision = 0

    def acquire(self) -> None:
        """Block (at most ``timeout`` seconds) until held; raises :class:`DeadlineExceededError` on timeout."""
        deadline = Deadline(self.timeout)
        lease = self.lease = self._client.lease(self.ttl).grant()
        key = self.prefix + f"{lease.id:x}".encode()
        try:
            r = (self._client.txn().if_(create_revision(key) == 0)
                 .then(put(key, b"", lease=lease.id)).else_(get(key)).commit())  # fmt: skip
            self.key = key
            self.revision = self.header_revision = r.header.revision
            if not r.succeeded:
                got = r.responses[0]
                assert hasattr(got, "kvs") and got.kvs
                self.revision = got.kvs[0].create_revision
            seen = wait_deletes(self._client, self.prefix, self.revision, deadline, lease)
            if seen:  # waited: held since the predecessors' deletion was seen
                self.header_revision = seen
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Delete the lock key and revoke its lease (idempotent)."""
        if self.key is not None:
            try:
                self._client.delete(self.key)
            except EtcdError:
                pass  # the lease revoke below removes the key too
            self.key = None
        if self.lease is not None:
            self.lease.close()
            self.lease = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Election:
    """Leader election under ``name/``: :meth:`campaign` blocks until leader, :meth:`leader` names the
    current leader, :meth:`observe` follows leadership changes, :meth:`resign` steps down."""

    def __init__(self, client: Client, name: KeyLike, *, ttl: int = 60) -> None:
        self._client = client
        self.prefix = to_bytes(name) + b"/"
        self.ttl = ttl
        self.lease: Lease | None = None
        self.key: bytes | None = None
        self.revision = 0

    @property
    def is_leader(self) -> bool:
        return self.key is not None

    def campaign(self, value: KeyLike, timeout: float | None = None) -> None:
        """Become leader with ``value``; blocks until elected (or raises after ``timeout`` seconds)."""
        deadline = Deadline(timeout)
        if self.lease is None or not self.lease.alive:
            self.lease = self._client.lease(self.ttl).grant()
        lease = self.lease
        key = self.prefix + f"{lease.id:x}".encode()
        val = to_bytes(value)
        try:
            r = (self._client.txn().if_(create_revision(key) == 0)
                 .then(put(key, val, lease=lease.id)).else_(get(key)).commit())  # fmt: skip
            self.revision = r.header.revision
            if not r.succeeded:
                got = r.responses[0]
                assert hasattr(got, "kvs") and got.kvs
                self.revision = got.kvs[0].create_revision
                if got.kvs[0].value != val:
                    self._client.put(key, val, lease=lease.id)
            wait_deletes(self._client, self.prefix, self.revision, deadline, lease)
            self.key = key
        except BaseException:
            self._client.delete(key)
            self.resign()
            raise

    def proclaim(self, value: KeyLike) -> None:
        """Change the leader's value without an election; raises :class:`EtcdError` when not leader."""
        if self.key is None or self.lease is None:
            raise EtcdError("election: not leader")
        r = (self._client.txn().if_(create_revision(self.key) == self.revision)
             .then(put(self.key, value, lease=self.lease.id)).commit())  # fmt: skip
        if not r.succeeded:
            self.key = None
            raise EtcdError("election: session expired, no longer leader")

    def leader(self) -> KeyValue | None:
        """The current leader's key and value (the oldest key under the prefix), None when there is none."""
        res = self._client.get_range(self.prefix, prefix=True, sort_order="ascend", sort_target="create", limit=1)
        return res.kvs[0] if res.kvs else None

    def observe(self) -> Iterator[KeyValue]:
        """Yield the leader's key-value now and at every change (new leader or new value); stop by breaking."""
        while True:
            res = self._client.get_range(self.prefix, prefix=True, sort_order="ascend", sort_target="create",
                                         limit=1)
            current: KeyValue | None = res.kvs[0] if res.kvs else None
            if current is None:
                with self._client.watch_prefix(self.prefix, start_revision=res.header.revision + 1) as w:
                    for event in w:
                        if event.type == "PUT":
                            current = event.kv
                            break
                if current is None:
                    return
            yield current
            with self._client.watch(current.key, start_revision=current.mod_revision + 1) as w:
                for event in w:
                    if event.type == "DELETE":
                        break
                    if event.kv.create_revision == current.create_revision:
                        yield event.kv

    def resign(self) -> None:
        """Step down: delete the leader key (if still ours) and revoke the lease; idempotent."""
        if self.key is not None:
            try:
                (self._client.txn().if_(create_revision(self.key) == self.revision)
                 .then(delete(self.key)).commit())  # fmt: skip
            except EtcdError:
                pass
            self.key = None
        if self.lease is not None:
            self.lease.close()
            self.lease = None

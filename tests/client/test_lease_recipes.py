"""Managed leases, lock and election recipes of the sync client, against etcd 3.4 and quorumkv."""

from __future__ import annotations

import threading
import time

import pytest

from quorumkv.client import Client, DeadlineExceededError, EtcdError, KeyValue, LeaseExpiredError
from quorumkv.testing.processes import ServerProcess, start_etcdctl

WAIT_S = 15.0


def wait_for(predicate: object, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_managed_lease_outlives_its_ttl_and_is_revoked_on_exit(client: Client, ns: str) -> None:
    with client.lease(ttl=2) as managed:
        client.put(ns + "k", "v", lease=managed.id)
        assert wait_for(lambda: managed.keepalives >= 3)  # > 2 s: the TTL passed at least once
        assert managed.alive and managed.error is None
        assert client.get(ns + "k") is not None
        assert managed.time_to_live().ttl > 0
        lease_id = managed.id
    assert not managed.alive
    assert client.lease_time_to_live(lease_id).ttl == -1
    assert client.get(ns + "k") is None


def test_lost_lease_is_reported_not_silent(client: Client) -> None:
    errors: list[EtcdError] = []
    managed = client.lease(ttl=2, on_error=errors.append).grant()
    try:
        client.lease_revoke(managed.id)  # someone else revokes it
        assert wait_for(lambda: managed.error is not None)
        assert not managed.alive
        assert isinstance(managed.error, LeaseExpiredError)
        assert errors == [managed.error]
    finally:
        managed.close()  # revoking an already-gone lease is not an error


def test_lock_is_mutually_exclusive(server: ServerProcess, ns: str) -> None:
    inside = 0
    max_inside = 0
    order: list[int] = []
    guard = threading.Lock()
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        nonlocal inside, max_inside
        try:
            with Client(server.client_url) as c, c.lock(ns + "mutex", ttl=10, timeout=30):
                with guard:
                    inside += 1
                    max_inside = max(max_inside, inside)
                time.sleep(0.1)
                with guard:
                    inside -= 1
                    order.append(i)
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures and sorted(order) == [0, 1, 2, 3]
    assert max_inside == 1


def test_lock_timeout_and_release(client: Client, server: ServerProcess, ns: str) -> None:
    holder = client.lock(ns + "m", ttl=10)
    holder.acquire()
    assert holder.key is not None and client.get(holder.key) is not None
    with Client(server.client_url) as other:
        waiter = other.lock(ns + "m", ttl=10, timeout=1.0)
        with pytest.raises(DeadlineExceededError):
            waiter.acquire()
        assert other.get_prefix(ns + "m/").count == 1  # the waiter cleaned up its key
        holder.release()
        with other.lock(ns + "m", ttl=10, timeout=10) as got:
            assert got.key is not None
    assert client.get_prefix(ns + "m/").count == 0


def test_election_campaign_leader_observe_resign(client: Client, server: ServerProcess, ns: str) -> None:
    name = ns + "election"
    first = client.election(name, ttl=10)
    assert first.leader() is None
    first.campaign("alpha", timeout=10)
    assert first.is_leader
    leader = first.leader()
    assert leader is not None and leader.value == b"alpha"

    observed: list[bytes] = []
    done = threading.Event()

    def observe() -> None:
        with Client(server.client_url) as c:
            for kv in c.election(name).observe():
                observed.append(kv.value)
                if kv.value == b"beta" or done.is_set():
                    return

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    assert wait_for(lambda: observed == [b"alpha"])

    with Client(server.client_url) as other_client:
        second = other_client.election(name, ttl=10)
        elected = threading.Event()
        campaign = threading.Thread(target=lambda: (second.campaign("beta", timeout=30), elected.set()),
                                    daemon=True)
        campaign.start()
        time.sleep(0.5)
        assert not elected.is_set()  # first still leads
        first.proclaim("alpha2")
        assert wait_for(lambda: observed[-1:] == [b"alpha2"])
        first.resign()
        assert elected.wait(WAIT_S) and second.is_leader
        observer.join(WAIT_S)
        done.set()
        assert observed == [b"alpha", b"alpha2", b"beta"]
        now: KeyValue | None = second.leader()
        assert now is not None and now.value == b"beta"
        second.resign()
    assert client.get_prefix(name + "/").count == 0


def test_lock_interoperates_with_etcdctl_lock(client: Client, server: ServerProcess, ns: str) -> None:
    with client.lock(ns + "shared", ttl=10, timeout=10):
        other = start_etcdctl(server.client_url, "lock", ns + "shared", "echo", "etcdctl-got-it")
        try:
            # etcdctl queued its own key behind ours and waits
            assert wait_for(lambda: client.get_prefix(ns + "shared/").count == 2), other.stderr
            assert not other.wait_lines(1, timeout_s=1.0)
        except BaseException:
            other.stop()
            raise
    try:
        assert other.wait_lines(1, timeout_s=WAIT_S), other.stderr
        assert "etcdctl-got-it" in other.stdout
        assert other.wait_exit(WAIT_S) == 0
    finally:
        other.stop()


def test_closing_the_client_revokes_its_managed_leases(client: Client, server: ServerProcess) -> None:
    other = Client(server.client_url)
    managed = other.lease(ttl=30).grant()
    assert client.lease_time_to_live(managed.id).ttl > 0
    other.close()
    assert not managed.alive
    assert client.lease_time_to_live(managed.id).ttl == -1

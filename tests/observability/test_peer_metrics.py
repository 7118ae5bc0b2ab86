"""etcd's peer network series come from the peer transport's per-peer counters."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.observability.metrics import PeerNetworkCollector
from quorumkv.transport.base import PeerStats


def peer(mid: int, connected: bool, sent: int, received: int, dropped: int) -> PeerStats:
    return PeerStats(member_id=mid, urls=("http://127.0.0.1:1",), connected=connected, snapshot_connected=False,
                     active_url="", queued=0, queued_bytes=0, sent_messages=1, sent_bytes=sent,
                     received_messages=1, received_bytes=received, dropped=dropped, connects=1, last_error="")


def samples(server: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerNetworkCollector(server))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_peer_series_follow_the_transport_counters() -> None:
    stats = {0xA: peer(0xA, True, 100, 40, 0), 0xB: peer(0xB, False, 7, 0, 3)}
    server = SimpleNamespace(transport=SimpleNamespace(stats=lambda: stats))
    got = samples(server)
    assert got[("etcd_network_peer_sent_bytes_total", (("To", "a"),))] == 100
    assert got[("etcd_network_peer_received_bytes_total", (("From", "a"),))] == 40
    assert got[("etcd_network_peer_sent_failures_total", (("To", "b"),))] == 3
    assert got[("etcd_network_active_peers", ())] == 1
    stats[0xA] = peer(0xA, True, 250, 40, 0)  # the series move with the counters
    assert samples(server)[("etcd_network_peer_sent_bytes_total", (("To", "a"),))] == 250


def test_no_peer_series_on_a_single_member() -> None:
    assert samples(SimpleNamespace(transport=None)) == {}

"""PeerTransport over loopback gRPC: batches, refusals, reconnects, isolation of slow peers, calls, bad input."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from quorumkv.api.quorumkvpb import peer_pb2, peer_pb2_grpc
from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import Entry, Message, MessageType, Snapshot, SnapshotMetadata, encode_message
from quorumkv.transport import (
    CallErrorKind,
    PeerCallError,
    PeerTransport,
    RemoteCallError,
    Transport,
    TransportOptions,
)

from .kit import CLUSTER, FAST, Endpoint, MakeEndpoint, eventually, free_port, hb, link


def app(frm: int, to: int, index: int, payload: bytes) -> Message:
    ents = (Entry(Term(2), Index(index + 1), data=payload),)
    return Message(MessageType.APP, to=NodeId(to), frm=NodeId(frm), term=Term(2), log_term=Term(2),
                   index=Index(index), entries=ents, commit=Index(index))


def snap_chunks(frm: int, to: int, data: bytes, chunk: int) -> list[Message]:
    meta = SnapshotMetadata(index=Index(50), term=Term(2))
    return [
        Message(MessageType.SNAP, to=NodeId(to), frm=NodeId(frm), term=Term(2),
                snapshot=Snapshot(data[off : off + chunk], meta), snap_offset=off, snap_total=len(data))
        for off in range(0, len(data), chunk)
    ]


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose TCP port accepts connections (kernel backlog) but never answers: a stuck peer."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def stats_of(ep: Endpoint, peer: int) -> Any:
    return ep.transport.stats()[peer]


# ---------------------------------------------------------------------------------------------- delivery


async def test_batches_round_trip_in_order(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)
    link(a, b)
    assert isinstance(a.transport, Transport)
    msgs = [hb(1, 2, commit=i) for i in range(5)] + [app(1, 2, 7, b"x" * 3000)]
    a.transport.send(msgs)
    await eventually(lambda: len(b.messages()) == 6, what="6 messages at b")
    assert b.messages() == msgs
    assert len(b.received) == 1  # one send() before the stream was up: one frame
    b.transport.send([hb(2, 1, term=3)])
    await eventually(lambda: len(a.messages()) == 1, what="the reply at a")
    assert a.messages() == [hb(2, 1, term=3)]

    # A second burst, while connected, also arrives whole and in order.
    more = [hb(1, 2, commit=100 + i) for i in range(50)]
    a.transport.send(more)
    await eventually(lambda: len(b.messages()) == 56, what="the second burst")
    assert b.messages()[6:] == more

    size = sum(len(encode_message(m)) for m in msgs + more)
    sa, sb = stats_of(a, 2), stats_of(b, 1)
    assert sa.connected and sa.active_url == b.url and sa.connects == 1
    assert (sa.sent_messages, sa.sent_bytes, sa.dropped, sa.queued) == (56, size, 0, 0)
    assert (sb.received_messages, sb.received_bytes) == (56, size)
    assert a.unreachable == [] and b.unreachable == []
    assert a.transport.active_peers() == 1


async def test_snapshot_chunks_travel_on_their_own_stream(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)
    link(a, b)
    data = bytes(range(256)) * 4096  # 1 MiB in 256 KiB chunks
    chunks = snap_chunks(1, 2, data, 256 * 1024)
    beats = [hb(1, 2, commit=i) for i in range(3)]
    a.transport.send(chunks[:2] + beats[:1] + chunks[2:] + beats[1:])
    await eventually(lambda: len(b.messages()) == 7, what="all chunks and heartbeats")
    got = b.messages()
    assert [m for m in got if m.type == MessageType.SNAP] == chunks
    assert [m for m in got if m.type == MessageType.HEARTBEAT] == beats
    snap_batches = [batch for batch in b.received if batch[0].type == MessageType.SNAP]
    assert all(len(batch) == 1 for batch in snap_batches)  # one chunk per frame; never mixed with heartbeats
    assert all(m.type == MessageType.HEARTBEAT for batch in b.received if batch not in snap_batches for m in batch)
    await eventually(lambda: a.snapshot_status == [(2, True)], what="snapshot reported sent")
    s = stats_of(a, 2)
    assert s.connected and s.snapshot_connected


async def test_cluster_id_mismatch_is_refused_with_both_ids(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint(1, cluster_id=0xAAA1)
    b = await make_endpoint(2, cluster_id=0xBBB2)
    link(a, b)
    a.transport.send([hb(1, 2)])
    await eventually(lambda: "cluster ID mismatch" in stats_of(a, 2).last_error, what="the refusal")
    err = stats_of(a, 2).last_error
    assert "request cluster ID mismatch" in err and "bbb2" in err and "aaa1" in err, err
    assert not stats_of(a, 2).connected
    await eventually(lambda: 2 in a.unreachable, what="unreachable report")
    assert b.received == []
    with pytest.raises(PeerCallError) as info:
        await a.transport.call(2, "anything", b"", timeout_s=2)
    assert info.value.kind == CallErrorKind.REFUSED
    assert "request cluster ID mismatch" in info.value.detail and "aaa1" in info.value.detail


async def test_wrong_member_at_url_and_removed_sender_are_refused(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)
    a.transport.add_peer(3, [b.url])  # a believes member 3 lives at b's URL
    a.transport.send([hb(1, 3)])
    await eventually(lambda: "member ID mismatch" in stats_of(a, 3).last_error, what="member mismatch")
    assert "this member is 2, the request is for 3" in stats_of(a, 3).last_error

    link(a, b)
    a.transport.send([hb(1, 2)])
    await eventually(lambda: len(b.messages()) == 1, what="delivery before removal")
    b.transport.remove_peer(1)
    a.transport.send([hb(1, 2, commit=1)])  # reaches the open stream, which b now ends
    await eventually(lambda: "removed" in stats_of(a, 2).last_error, what="removed-member refusal")
    a.transport.send([hb(1, 2, commit=2)])
    await asyncio.sleep(0.1)
    assert len(b.messages()) == 1
    assert "rejected request from member 1" in stats_of(a, 2).last_error


async def test_peer_down_then_up_reconnects_and_delivers(make_endpoint: MakeEndpoint,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    a = await make_endpoint(1)
    a.transport.add_peer(2, [url])
    a.transport.send([hb(1, 2)])
    await eventually(lambda: 2 in a.unreachable, what="unreachable while down")
    assert "UNAVAILABLE" in stats_of(a, 2).last_error and not stats_of(a, 2).connected

    async def deliver(b: Endpoint, commit: int) -> None:
        deadline = time.monotonic() + 5
        while not any(m.commit == commit for m in b.messages()):  # what Raft does: keep sending
            assert time.monotonic() < deadline, f"not delivered: {stats_of(a, 2)}"
            a.transport.send([hb(1, 2, commit=commit)])
            await asyncio.sleep(0.02)

    b = await make_endpoint(2, url=url)
    await deliver(b, 1)
    assert stats_of(a, 2).connected and stats_of(a, 2).connects == 1

    caplog.clear()
    await b.transport.stop()
    await eventually(lambda: not stats_of(a, 2).connected, what="a notices b stopped")
    lost = [r for r in caplog.records if r.getMessage() == "lost peer stream"]
    assert lost and lost[0].__dict__["remote-peer-id"] == "2"
    b2 = await make_endpoint(2, url=url)
    await deliver(b2, 2)
    assert stats_of(a, 2).connects == 2
    assert stats_of(a, 2).dropped > 0


async def test_dead_and_stuck_peers_do_not_delay_a_live_one(make_endpoint: MakeEndpoint, blackhole: str) -> None:
    a = await make_endpoint(1)
    live = await make_endpoint(2)
    a.transport.add_peer(2, [live.url])
    a.transport.add_peer(3, [f"http://127.0.0.1:{free_port()}"])  # refuses connections
    a.transport.add_peer(4, [blackhole])  # accepts, never answers
    worst = 0.0
    for r in range(1, 31):
        t0 = time.monotonic()
        a.transport.send([hb(1, 3, commit=r), hb(1, 4, commit=r), hb(1, 2, commit=r), hb(1, 4, commit=r)])
        await eventually(lambda r=r: any(m.commit == r for m in live.messages()), timeout_s=2, what=f"round {r}")  # type: ignore[misc]
        worst = max(worst, time.monotonic() - t0)
        await asyncio.sleep(0.01)
    assert [m.commit for m in live.messages()] == list(range(1, 31))
    assert worst < 1.0, worst  # generous: in practice a few milliseconds
    await eventually(lambda: {3, 4} <= set(a.unreachable), what="both bad peers reported")
    st = a.transport.stats()
    assert st[2].connected and not st[3].connected and not st[4].connected
    assert st[2].dropped == 0 and st[3].dropped > 0


async def test_full_queue_drops_and_reports_unreachable(make_endpoint: MakeEndpoint, blackhole: str) -> None:
    opts = TransportOptions(**{**FAST.__dict__, "max_queue_messages": 8, "connect_timeout_s": 0.3})
    a = await make_endpoint(1, options=opts)
    a.transport.add_peer(4, [blackhole])
    a.transport.send([hb(1, 4, commit=i) for i in range(12)])
    s = stats_of(a, 4)
    assert (s.queued, s.dropped) == (8, 4)
    assert a.unreachable == []  # never called from inside send()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert a.unreachable == [4]  # one report for the four drops
    # The stuck connection attempt times out: the queued eight are dropped and reported too.
    await eventually(lambda: stats_of(a, 4).dropped == 12 and a.unreachable.count(4) == 2,
                     what="queue failed after connect timeout, and reported")
    assert stats_of(a, 4).queued == 0
    assert "no answer from the peer" in stats_of(a, 4).last_error
    # A snapshot chunk to a peer that cannot take it is reported as a failed snapshot.
    a.transport.send(snap_chunks(1, 4, b"s" * 10, 10))
    await eventually(lambda: (4, False) in a.snapshot_status, what="snapshot failure report")


async def test_byte_bound_of_the_queue(make_endpoint: MakeEndpoint, blackhole: str) -> None:
    opts = TransportOptions(**{**FAST.__dict__, "max_queue_bytes": 10_000})
    a = await make_endpoint(1, options=opts)
    a.transport.add_peer(4, [blackhole])
    a.transport.send([app(1, 4, i, b"v" * 3000) for i in range(5)])
    s = stats_of(a, 4)
    assert s.queued == 3 and s.dropped == 2 and s.queued_bytes <= 10_000


class _StuckServicer(peer_pb2_grpc.PeerServicer):
    """Accepts a stream, then never reads from it again: writes pile up against HTTP/2 flow control."""

    async def Stream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await request_iterator.__anext__()
        yield peer_pb2.StreamAck(member_id=5)
        await asyncio.sleep(30)


@pytest.fixture
async def stuck_reader() -> AsyncIterator[str]:
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(_StuckServicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"http://127.0.0.1:{port}"
    await server.stop(0)


async def test_peer_that_stops_reading_is_cut_off(make_endpoint: MakeEndpoint, stuck_reader: str) -> None:
    opts = TransportOptions(**{**FAST.__dict__, "write_timeout_s": 0.3})
    a, live = await make_endpoint(1, options=opts), await make_endpoint(2)
    a.transport.add_peer(2, [live.url])
    a.transport.add_peer(5, [stuck_reader])
    big = [app(1, 5, i, b"z" * 200_000) for i in range(40)]  # 8 MB: far beyond the flow-control windows
    a.transport.send(big)
    for r in range(1, 11):
        a.transport.send([hb(1, 2, commit=r)])
        await eventually(lambda r=r: any(m.commit == r for m in live.messages()), timeout_s=2, what=f"round {r}")  # type: ignore[misc]
        await asyncio.sleep(0.02)
    await eventually(lambda: "longer than 0.3s" in stats_of(a, 5).last_error, what="write timeout")
    await eventually(lambda: 5 in a.unreachable, what="stuck peer reported")
    assert stats_of(a, 5).dropped > 0


# ---------------------------------------------------------------------------------------------- calls


async def test_call_round_trip_and_errors(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)
    link(a, b)

    async def echo(payload: bytes) -> bytes:
        return b"echo:" + payload

    async def slow(payload: bytes) -> bytes:
        await asyncio.sleep(5)
        return payload

    async def lease_missing(payload: bytes) -> bytes:
        raise RemoteCallError("etcdserver: requested lease not found")

    async def broken(payload: bytes) -> bytes:
        raise ValueError("boom")

    for name, fn in [("echo", echo), ("slow", slow), ("lease", lease_missing), ("broken", broken)]:
        b.transport.register_handler(name, fn)

    assert await a.transport.call(2, "echo", b"\x00hi", timeout_s=2) == b"echo:\x00hi"
    big = bytes(range(256)) * 8192  # 2 MiB: above gRPC's default message limit
    assert await a.transport.call(2, "echo", big, timeout_s=5) == b"echo:" + big

    async def fails(method: str, timeout_s: float = 2, member: int = 2) -> PeerCallError:
        with pytest.raises(PeerCallError) as info:
            await a.transport.call(member, method, b"p", timeout_s=timeout_s)
        return info.value

    e = await fails("nope")
    assert e.kind == CallErrorKind.UNKNOWN_METHOD and "'nope'" in e.detail
    t0 = time.monotonic()
    e = await fails("slow", timeout_s=0.2)
    assert e.kind == CallErrorKind.TIMEOUT and time.monotonic() - t0 < 2
    e = await fails("lease")
    assert e.kind == CallErrorKind.REMOTE and e.detail == "etcdserver: requested lease not found"
    e = await fails("broken")
    assert e.kind == CallErrorKind.INTERNAL and "boom" in e.detail
    e = await fails("echo", member=9)
    assert e.kind == CallErrorKind.UNKNOWN_PEER
    assert await a.transport.call(2, "echo", b"still fine", timeout_s=2) == b"echo:still fine"


async def test_call_and_stream_try_every_url(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)

    async def echo(payload: bytes) -> bytes:
        return payload

    b.transport.register_handler("echo", echo)
    dead = f"http://127.0.0.1:{free_port()}"
    a.transport.add_peer(2, [dead, b.url])
    assert await a.transport.call(2, "echo", b"x", timeout_s=2) == b"x"
    a.transport.send([hb(1, 2)])
    await eventually(lambda: stats_of(a, 2).connected, what="stream via the second URL")
    assert stats_of(a, 2).active_url == b.url

    a.transport.add_peer(3, [dead])
    with pytest.raises(PeerCallError) as info:
        await a.transport.call(3, "echo", b"x", timeout_s=2)
    assert info.value.kind == CallErrorKind.UNAVAILABLE and dead in info.value.detail


async def test_update_peer_moves_to_new_urls(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)
    link(a, b)
    a.transport.send([hb(1, 2)])
    await eventually(lambda: len(b.messages()) == 1, what="first delivery")
    await b.transport.stop()
    b2 = await make_endpoint(2)
    a.transport.update_peer(2, [b2.url])
    deadline = time.monotonic() + 5
    while not b2.messages():
        assert time.monotonic() < deadline
        a.transport.send([hb(1, 2, commit=5)])
        await asyncio.sleep(0.02)
    assert stats_of(a, 2).urls == (b2.url,) and stats_of(a, 2).active_url == b2.url


# ---------------------------------------------------------------------------------------------- bad input


async def _raw_stream(url: str, frames: list[Any]) -> grpc.aio.AioRpcError:
    """Send ``frames`` on a raw Peer/Stream; return the error the server ends it with."""
    async with grpc.aio.insecure_channel(url.removeprefix("http://")) as ch:
        call = peer_pb2_grpc.PeerStub(ch).Stream()  # type: ignore[no-untyped-call]
        for f in frames:
            await call.write(f)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            for _ in range(3):
                if await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF:
                    break
        return info.value


async def test_malformed_frames_drop_only_that_stream(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(1), await make_endpoint(2)
    link(a, b)
    header = peer_pb2.StreamHeader(cluster_id=CLUSTER, sender_id=1, receiver_id=2)
    good = encode_message(hb(1, 2, commit=3))
    err = await _raw_stream(b.url, [peer_pb2.StreamFrame(header=header),
                                    peer_pb2.StreamFrame(messages=[good, b"\x03garbage"])])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed message from member 1" in err.details()
    err = await _raw_stream(b.url, [peer_pb2.StreamFrame(header=header),
                                    peer_pb2.StreamFrame(messages=[good[:-1]])])  # truncated
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await _raw_stream(b.url, [peer_pb2.StreamFrame(messages=[good])])  # no header frame
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in err.details()
    assert b.received == []  # a frame with a bad message is dropped whole

    # Misaddressed and local-only messages are ignored, the rest of the frame is delivered.
    hup = encode_message(Message(MessageType.HUP, to=NodeId(2), frm=NodeId(1)))
    other = encode_message(hb(1, 7))
    async with grpc.aio.insecure_channel(b.url.removeprefix("http://")) as ch:
        call = peer_pb2_grpc.PeerStub(ch).Stream()  # type: ignore[no-untyped-call]
        await call.write(peer_pb2.StreamFrame(header=header))
        assert (await call.read()).member_id == 2
        await call.write(peer_pb2.StreamFrame(messages=[hup, other, good]))
        await eventually(lambda: len(b.received) == 1, what="the valid message")
        call.cancel()
    assert b.messages() == [hb(1, 2, commit=3)]

    # b still serves its real peer.
    a.transport.send([hb(1, 2, commit=9)])
    await eventually(lambda: len(b.messages()) == 2, what="delivery after the bad streams")


async def test_stop_silences_callbacks_and_is_idempotent(make_endpoint: MakeEndpoint, blackhole: str) -> None:
    a = await make_endpoint(1)
    a.transport.add_peer(4, [blackhole])
    a.transport.send([hb(1, 4)] * 3)
    await a.transport.stop()
    a.transport.send([hb(1, 4)])  # ignored
    await asyncio.sleep(0.05)
    assert a.unreachable == []
    await a.transport.stop()
    with pytest.raises(PeerCallError) as info:
        await a.transport.call(4, "x", b"", timeout_s=1)
    assert info.value.kind == CallErrorKind.UNAVAILABLE


async def test_argument_checks(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint(1, start=False)
    with pytest.raises(RuntimeError, match="not started"):
        a.transport.send([hb(1, 2)])
    with pytest.raises(ValueError, match="scheme must be http or https"):
        a.transport.add_peer(2, ["unix:///tmp/x"])
    with pytest.raises(ValueError, match="at least one peer URL"):
        a.transport.add_peer(2, [])
    with pytest.raises(ValueError, match="this member"):
        a.transport.add_peer(1, ["http://127.0.0.1:1"])
    a.transport.add_peer(2, ["http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="already added"):
        a.transport.add_peer(2, ["http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="no peer TLS credentials"):
        await a.transport.start(["https://127.0.0.1:0"])


def test_gen_protos_covers_the_peer_proto() -> None:
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_protos", root / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    protos = mod.find_protos(root / "src")
    assert Path("quorumkv/api/quorumkvpb/peer.proto") in protos


def _self_signed() -> tuple[bytes, bytes]:
    """A throwaway certificate for 127.0.0.1 and localhost (key PEM, cert PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quorumkv-test-peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


async def test_https_peer_urls_with_credentials() -> None:
    key, cert = _self_signed()
    got: list[list[Message]] = []
    eps = [
        PeerTransport(i, CLUSTER, got.append if i == 2 else (lambda ms: None), lambda p: None, random.Random(i),
                      options=FAST, server_credentials=grpc.ssl_server_credentials([(key, cert)]),
                      channel_credentials=grpc.ssl_channel_credentials(root_certificates=cert))
        for i in (1, 2)
    ]
    try:
        (url1,) = await eps[0].start(["https://127.0.0.1:0"])
        (url2,) = await eps[1].start(["https://127.0.0.1:0"])
        assert url1.startswith("https://") and url2.startswith("https://")
        eps[0].add_peer(2, [url2])
        eps[0].send([hb(1, 2, commit=4)])
        await eventually(lambda: len(got) == 1, what="delivery over TLS")
        assert got == [[hb(1, 2, commit=4)]]
        eps[1].register_handler("echo", _echo)
        assert await eps[0].call(2, "echo", b"tls", timeout_s=2) == b"tls"
    finally:
        for t in eps:
            await t.stop()


async def _echo(payload: bytes) -> bytes:
    return payload


async def test_frames_respect_max_batch_bytes(make_endpoint: MakeEndpoint) -> None:
    opts = TransportOptions(**{**FAST.__dict__, "max_batch_bytes": 7000})
    a, b = await make_endpoint(1, options=opts), await make_endpoint(2)
    link(a, b)
    msgs = [app(1, 2, i, b"q" * 3000) for i in range(10)] + [app(1, 2, 10, b"Q" * 20_000)]
    a.transport.send(msgs)
    await eventually(lambda: len(b.messages()) == 11, what="all eleven")
    assert b.messages() == msgs
    sizes = [sum(len(encode_message(m)) for m in batch) for batch in b.received]
    assert [len(batch) for batch in b.received] == [2, 2, 2, 2, 2, 1]
    assert all(size <= 7000 for size in sizes[:-1]) and sizes[-1] > 7000  # an oversized message goes alone


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    t = PeerTransport(1, CLUSTER, lambda ms: None, lambda p: None, random.Random(5),
                      options=TransportOptions(backoff_base_s=0.1, backoff_max_s=2.0))
    delays = [t._backoff_s(n) for n in range(8)]
    for n, d in enumerate(delays):
        cap = min(2.0, 0.1 * 2**n)
        assert cap / 2 <= d <= cap, (n, d)
    assert delays[5] > delays[0] * 4
    again = PeerTransport(1, CLUSTER, lambda ms: None, lambda p: None, random.Random(5),
                          options=TransportOptions(backoff_base_s=0.1, backoff_max_s=2.0))
    assert [again._backoff_s(n) for n in range(8)] == delays  # the jitter comes from the injected rng

"""Benchmark of the gRPC peer transport on loopback: append throughput and heartbeat round trips.

    PYTHONPATH=src python3.11 bench/peer_transport.py [--messages N] [--size BYTES] [--burst B] [--pings K]
        [--tls none|core|front]

The receiving member runs in a child process (its own interpreter and event loop, as in a real cluster).

* throughput: the sender ``send()`` s MsgApp messages carrying one entry of ``--size`` bytes, ``--burst`` per
  call, keeping at most ``--window`` unacknowledged (the receiver answers every append with a MsgAppResp,
  like a follower); prints messages/s and MB/s of encoded messages.
* round trip: ``--pings`` heartbeats one at a time, each answered by a heartbeat response; prints p50/p99/max
  in milliseconds, first with only the live peer, then with a dead peer (connection refused) and a stuck one
  (accepts, never answers) also being sent to, to show they do not slow the live one.

``--tls``: plaintext peer URLs (``none``, the default) or mTLS on both members' listeners, done by grpc core
(``core``: ``server_credentials`` only) or by the TLS front (``front``: ``security/tls_front.py``, what members
run); the receiver's CPU seconds during the throughput phase are printed too.

Every phase is bounded by ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import Entry, Message, MessageType, encode_message
from quorumkv.transport import PeerTransport

CLUSTER = 0x5EED
SENDER, RECEIVER, DEAD, STUCK = 1, 2, 3, 4


def _tls(mode: str, files: list[str]) -> tuple[str, dict[str, Any]]:
    """(URL scheme, PeerTransport keyword arguments) for ``--tls mode`` with ``files`` = cert, key, CA."""
    if mode == "none":
        return "http", {}
    from quorumkv.security.peer import peer_tls

    cert, key, ca = files
    tls = peer_tls(cert, key, ca, client_cert_auth=True)
    kwargs: dict[str, Any] = {"server_credentials": tls.server_credentials,
                              "channel_credentials": tls.channel_credentials}
    if mode == "front":
        kwargs["server_front"] = tls.server_front
    return "https", kwargs


async def receiver_main(mode: str, files: list[str]) -> None:
    """Child process: echo each MsgApp as a MsgAppResp and each heartbeat as a heartbeat response."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    t: PeerTransport
    cpu: list[float] = []  # process CPU at the first append and at the last one of the throughput phase
    last_index = [0]

    def on_messages(msgs: list[Message]) -> None:
        out = []
        for m in msgs:
            if m.type == MessageType.APP:
                if not cpu:
                    cpu.append(time.process_time())
                last_index[0] = max(last_index[0], m.index)
                out.append(Message(MessageType.APP_RESP, to=m.frm, frm=m.to, term=m.term,
                                   index=Index(m.index + len(m.entries))))
            elif m.type == MessageType.HEARTBEAT:
                out.append(Message(MessageType.HEARTBEAT_RESP, to=m.frm, frm=m.to, term=m.term, context=m.context))
        t.send(out)

    async def stop(_: bytes) -> bytes:
        loop.call_soon(done.set)
        return b""

    async def mark(_: bytes) -> bytes:
        return f"{time.process_time() - cpu[0]:.3f} {last_index[0]}".encode() if cpu else b"0 0"

    scheme, kwargs = _tls(mode, files)
    t = PeerTransport(RECEIVER, CLUSTER, on_messages, lambda p: None, random.Random(2), **kwargs)
    (url,) = await t.start([f"{scheme}://127.0.0.1:0"])
    t.register_handler("cpu", mark)
    t.register_handler("stop", stop)
    print(url, flush=True)
    peer_url = sys.stdin.readline().strip()
    t.add_peer(SENDER, [peer_url])
    await done.wait()
    await t.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def sender_main(args: argparse.Namespace) -> None:
    files: list[str] = []
    if args.tls != "none":
        import tempfile
        from pathlib import Path

        from quorumkv.testing.pki import make_pki

        pki = make_pki(Path(tempfile.mkdtemp(prefix="peer-bench-pki-")))
        files = [pki.cert("peer"), pki.key("peer"), str(pki.ca.path)]
    child = subprocess.Popen([sys.executable, __file__, "--receiver", "--tls", args.tls, *files],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)
    acked = 0
    pongs: dict[bytes, float] = {}
    wake = asyncio.Event()

    def on_messages(msgs: list[Message]) -> None:
        nonlocal acked
        now = time.perf_counter()
        for m in msgs:
            if m.type == MessageType.APP_RESP:
                acked = max(acked, m.index)
            elif m.type == MessageType.HEARTBEAT_RESP:
                pongs[m.context] = now
        wake.set()

    scheme, kwargs = _tls(args.tls, files)
    t = PeerTransport(SENDER, CLUSTER, on_messages, lambda p: None, random.Random(1), **kwargs)
    try:
        assert child.stdin is not None and child.stdout is not None
        peer_url = child.stdout.readline().strip()
        (url,) = await t.start([f"{scheme}://127.0.0.1:0"])
        child.stdin.write(url + "\n")
        child.stdin.flush()
        t.add_peer(RECEIVER, [peer_url])

        def acked_beyond(n: int) -> Callable[[], bool]:
            return lambda: acked > n

        def ponged(ctx: bytes) -> Callable[[], bool]:
            return lambda: ctx in pongs

        async def wait_until(pred: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + args.timeout
            while not pred():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemExit(f"timed out after {args.timeout}s: {what}")
                wake.clear()
                try:
                    async with asyncio.timeout(min(remaining, 0.05)):
                        await wake.wait()
                except TimeoutError:
                    pass

        # warm up: the streams connect
        t.send([Message(MessageType.HEARTBEAT, to=NodeId(RECEIVER), frm=NodeId(SENDER), term=Term(1),
                        context=b"warm")])
        await wait_until(ponged(b"warm"), "warm-up heartbeat")

        # throughput
        payload = b"x" * args.size
        sent = 0
        t0 = time.perf_counter()
        while acked < args.messages:
            while sent < args.messages and sent - acked < args.window:
                burst = []
                for _ in range(min(args.burst, args.messages - sent)):
                    burst.append(Message(MessageType.APP, to=NodeId(RECEIVER), frm=NodeId(SENDER), term=Term(1),
                                         log_term=Term(1), index=Index(sent), commit=Index(sent),
                                         entries=(Entry(Term(1), Index(sent + 1), data=payload),)))
                    sent += 1
                t.send(burst)
            await wait_until(acked_beyond(acked), f"acks beyond {acked}")
        dt = time.perf_counter() - t0
        one = len(encode_message(Message(MessageType.APP, to=NodeId(RECEIVER), frm=NodeId(SENDER),
                                         entries=(Entry(Term(1), Index(1), data=payload),))))
        print(f"throughput: {args.messages} appends of {args.size} B (burst {args.burst}, window {args.window}): "
              f"{args.messages / dt:,.0f} msgs/s, {args.messages * one / dt / 1e6:.1f} MB/s, {dt:.2f}s")
        cpu_s, last = (await t.call(RECEIVER, "cpu", b"", timeout_s=5)).decode().split()
        print(f"  receiver CPU during the throughput phase ({args.tls} TLS): {float(cpu_s):.2f}s, "
              f"{float(cpu_s) / max(1, int(last)) * 1e6:.1f} us per append")
        s = t.stats()[RECEIVER]
        print(f"  sender stats: sent {s.sent_messages} msgs / {s.sent_bytes} B, dropped {s.dropped}, "
              f"received {s.received_messages} msgs")

        async def pings(label: str, extra: list[int]) -> None:
            rtts = []
            for i in range(args.pings):
                ctx = f"{label}{i}".encode()
                start = time.perf_counter()
                t.send([Message(MessageType.HEARTBEAT, to=NodeId(p), frm=NodeId(SENDER), term=Term(1), context=ctx)
                        for p in [*extra, RECEIVER]])
                await wait_until(ponged(ctx), f"pong {ctx!r}")
                rtts.append((pongs[ctx] - start) * 1000)
            rtts.sort()
            p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
            print(f"round trip ({label}): p50 {statistics.median(rtts):.2f} ms, p99 {p99:.2f} ms, "
                  f"max {rtts[-1]:.2f} ms over {len(rtts)} heartbeats")

        await pings("live peer only", [])
        t.add_peer(DEAD, [f"{scheme}://127.0.0.1:{_free_port()}"])
        t.add_peer(STUCK, [f"{scheme}://127.0.0.1:{stuck.getsockname()[1]}"])
        await pings("plus a dead and a stuck peer", [DEAD, STUCK])
        st = t.stats()
        print(f"  dead peer: dropped {st[DEAD].dropped}, last error {st[DEAD].last_error!r}")
        print(f"  stuck peer: dropped {st[STUCK].dropped}, last error {st[STUCK].last_error!r}")
        await t.call(RECEIVER, "stop", b"", timeout_s=5)
    finally:
        await t.stop()
        stuck.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--size", type=int, default=256, help="entry payload bytes")
    p.add_argument("--burst", type=int, default=64, help="messages per send() call")
    p.add_argument("--window", type=int, default=2048, help="max unacknowledged appends")
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--timeout", type=float, default=60.0, help="bound of every wait, seconds")
    p.add_argument("--tls", choices=("none", "core", "front"), default="none")
    p.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receiver:
        asyncio.run(receiver_main(args.tls, args.files))
    else:
        asyncio.run(sender_main(args))


if __name__ == "__main__":
    main()

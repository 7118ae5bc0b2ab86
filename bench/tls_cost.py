"""What quorumkv's TLS choices cost gRPC, measured in one run: a gRPC server (in a child process, as a member)
with (a) static ``ssl_server_credentials`` (what quorumkv used before rotation), (b) the rotating dynamic
credentials (``security.reload``: a fetcher gRPC calls before each handshake), against plaintext for
reference. (A third variant, (b) plus a per-call ``--client-crl-file`` interceptor, was dropped when every
https:// client URL went through the TLS front, which checks the CRL once per connection.)

Two more variants measure the shared client port (``api/cmux.py``, what ``https://`` client URLs serve without
``--listen-client-http-urls``): ``cmux-splice`` (before: the front splices the encrypted bytes to a gRPC
server doing TLS on a unix socket) and ``cmux-front`` (now: ``security/tls_front.py`` terminates TLS in Python and
forwards plaintext to a gRPC server on a unix socket). The server process's CPU seconds per call are printed
next to the rates (steadier than the rates on a shared machine).

Two measures per variant, alternating variants over ``--rounds``: unary calls/s over ``--channels`` long-lived
mTLS connections (the steady state: handshakes are rare), and new connections/s (one handshake each: where the
fetcher runs). Handshake diagnostics cost nothing here: they run only after a dial fails.

    PYTHONPATH=src:. python3 -m bench.tls_cost --seconds 3 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench._proc import read_cpu_seconds
from quorumkv.security.reload import ReloadingServerCredentials
from quorumkv.testing.pki import PKI, make_pki

METHOD = "/bench.Echo/Call"
VARIANTS = ("plaintext", "static", "dynamic", "cmux-splice", "cmux-front")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(variant: str, port: int, pki_dir: str, ready: Any) -> None:
    async def main() -> None:
        d = Path(pki_dir)
        server = grpc.aio.server()

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler})])
        addr = f"127.0.0.1:{port}"
        if variant.startswith("cmux-"):
            await _serve_cmux(variant, server, port, d)
            ready.set()
            await server.wait_for_termination()
            return
        if variant == "plaintext":
            server.add_insecure_port(addr)
        elif variant == "static":
            creds = grpc.ssl_server_credentials([((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())],
                                                root_certificates=(d / "ca.crt").read_bytes(),
                                                require_client_auth=True)
            server.add_secure_port(addr, creds)
        else:
            server.add_secure_port(addr, ReloadingServerCredentials(
                str(d / "server.crt"), str(d / "server.key"), str(d / "ca.crt"), client_cert_auth=True).credentials())
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def _serve_cmux(variant: str, server: grpc.aio.Server, port: int, d: Path) -> None:
    from quorumkv.api.cmux import ClientMux
    from quorumkv.security.tls_front import TLSFront

    sock_dir = tempfile.mkdtemp(prefix="tls-cost-sock-")
    path = f"{sock_dir}/0s.sock"
    crt, key, ca = str(d / "server.crt"), str(d / "server.key"), str(d / "ca.crt")
    front = None
    if variant == "cmux-splice":
        server.add_secure_port(f"unix:{path}", ReloadingServerCredentials(crt, key, ca, client_cert_auth=True)
                               .credentials())
    else:
        server.add_insecure_port(f"unix:{path}")
        front = TLSFront(crt, key, ca, client_cert_auth=True)
    await server.start()
    mux = ClientMux(stream_limit=65536)
    mux.listen("127.0.0.1", port, secure=True)

    async def no_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    mux.start({True: [path]}, no_http, None, front)


def _channel(variant: str, port: int, pki: PKI) -> grpc.aio.Channel:
    if variant == "plaintext":
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    creds = grpc.ssl_channel_credentials(pki.ca.path.read_bytes(), Path(pki.key("client")).read_bytes(),
                                         Path(pki.cert("client")).read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def _calls(variant: str, port: int, pki: PKI, channels: int, seconds: float) -> float:
    chans = [_channel(variant, port, pki) for _ in range(channels)]
    calls = [c.unary_unary(METHOD) for c in chans]
    for call in calls:
        await call(b"x", timeout=10)
    done = 0
    stop = time.monotonic() + seconds

    async def worker(call: Any) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call(b"0123456789", timeout=10)
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(c) for c in calls for _ in range(8)))
    elapsed = time.monotonic() - start
    for c in chans:
        await c.close()
    return done / elapsed


async def _connects(variant: str, port: int, pki: PKI, seconds: float) -> float:
    done = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        async with _channel(variant, port, pki) as chan:
            await chan.unary_unary(METHOD)(b"x", timeout=10)
        done += 1
    return done / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    pki = make_pki(Path(tempfile.mkdtemp(prefix="tls-cost-")))
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, dict[str, list[float]]] = {v: {"calls": [], "connects": [], "cpu_us": []}
                                                  for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            port, ready = _free_port(), ctx.Event()
            proc = ctx.Process(target=_serve, args=(variant, port, str(pki.directory), ready), daemon=True)
            proc.start()
            try:
                if not ready.wait(30):
                    raise SystemExit(f"{variant} server did not start")
                assert proc.pid is not None
                cpu0 = read_cpu_seconds(proc.pid)
                rate = asyncio.run(_calls(variant, port, pki, args.channels, args.seconds))
                cpu = read_cpu_seconds(proc.pid) - cpu0
                results[variant]["calls"].append(rate)
                # the server's CPU per call (the warm-up calls and channel set-up included: a few of thousands)
                results[variant]["cpu_us"].append(cpu / max(1.0, rate * args.seconds) * 1e6)
                results[variant]["connects"].append(asyncio.run(_connects(variant, port, pki, args.seconds)))
            finally:
                proc.terminate()
                proc.join(10)
    base = "static" if "static" in variants else variants[0]
    base_calls = statistics.median(results[base]["calls"])
    base_conn = statistics.median(results[base]["connects"])
    print(f"{'variant':<14}{'calls/s':>10}{'vs ' + base:>16}{'server µs/call':>16}{'connects/s':>12}"
          f"{'vs ' + base:>16}")
    for v in variants:
        c, n = statistics.median(results[v]["calls"]), statistics.median(results[v]["connects"])
        us = statistics.median(results[v]["cpu_us"])
        print(f"{v:<14}{c:>10.0f}{c / base_calls - 1:>+16.1%}{us:>16.0f}{n:>12.1f}{n / base_conn - 1:>+16.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

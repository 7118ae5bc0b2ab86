"""A host program for ``bench/busy_host.py``: embeds a quorumkv member in process mode, prints
``READY <member pid>``, then hogs its own GIL (a pure-Python loop on the main thread and on one more thread) until
its stdin is closed; then it stops the member and exits."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from quorumkv import embed
from quorumkv.embed import ServerConfig


def spin(stop: threading.Event) -> int:
    """Pure-Python work that holds the GIL between the interpreter's switch points."""
    total = 0
    while not stop.is_set():
        for i in range(20_000):
            total += i * i % 7
    return total


def wait_for_eof(stop: threading.Event) -> None:
    sys.stdin.read()
    stop.set()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--client-port", type=int, required=True)
    parser.add_argument("--peer-port", type=int, required=True)
    parser.add_argument("--log-path", type=Path, required=True)
    args = parser.parse_args()
    client, peer = f"http://127.0.0.1:{args.client_port}", f"http://127.0.0.1:{args.peer_port}"
    config = ServerConfig(name="default", data_dir=str(args.data_dir), listen_client_urls=[client],
                          advertise_client_urls=[client], listen_peer_urls=[peer], initial_advertise_peer_urls=[peer])
    handle = embed.start(config, isolation="process", log_path=args.log_path, ready_timeout_s=60.0)
    try:
        print(f"READY {handle.pid}", flush=True)
        stop = threading.Event()
        threading.Thread(target=wait_for_eof, args=(stop,), daemon=True).start()
        helper = threading.Thread(target=spin, args=(stop,), daemon=True)
        helper.start()
        spin(stop)
        helper.join(timeout=5)
    finally:
        handle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

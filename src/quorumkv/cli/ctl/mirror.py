"""``make-mirror [options] <destination>``: etcdctl 3.4's live mirror of one cluster's keys into another.

What it does, as etcdctl 3.4 does it: read the source's keys (under ``--prefix``) at one revision R, in pages
of 1000, putting each into the destination; then watch the source from R+1 and apply each revision's events to
the destination in one transaction. Keys are renamed by replacing the first occurrence of ``--prefix`` with
``--dest-prefix`` (default: the same prefix; ``--no-dest-prefix``: the root). The number of keys mirrored so
far is printed every 30 seconds (``QUORUMKV_MIRROR_REPORT_INTERVAL`` seconds instead, for tests); on a
terminal a progress line counts them as well. It runs until interrupted or until an error (exit 1), e.g. the
source compacted the revision being watched.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.cli.ctl.app import GoFlag, bad_args, command, root
from quorumkv.cli.ctl.kv import prefix_range_end
from quorumkv.cli.ctl.session import EXIT_ERROR, CtlError, Session, Settings, error_text
from quorumkv.client import EtcdError

__all__ = ["REPORT_INTERVAL_ENV"]

#: Seconds between two counts (etcdctl: 30).
REPORT_INTERVAL_ENV = "QUORUMKV_MIRROR_REPORT_INTERVAL"
BATCH_LIMIT = 1000
COMPACTED = "etcdserver: mvcc: required revision has been compacted"


class _Counter:
    def __init__(self) -> None:
        self.total = 0
        self.lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.total += n


def _report(counter: _Counter, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        sys.stdout.write(f"{counter.total}\n")
        sys.stdout.flush()


def _base_range(prefix: bytes) -> tuple[bytes, bytes]:
    """etcd's Syncer: everything from ``\\x00`` when there is no prefix, else the prefix range."""
    if not prefix:
        return b"\x00", b"\x00"
    return prefix, prefix_range_end(prefix)


def _rename(key: bytes, prefix: bytes, dest_prefix: bytes) -> bytes:
    """Go's ``strings.Replace(key, prefix, destPrefix, 1)``."""
    if not prefix:
        return dest_prefix + key
    return key.replace(prefix, dest_prefix, 1)


def _sync_base(src: Session, dst: Session, prefix: bytes, dest_prefix: bytes, counter: _Counter) -> int:
    """Copy every key under ``prefix`` at one revision; returns that revision."""
    key, end = _base_range(prefix)
    rev = int(src.call("KV", "Range", rpc_pb2.RangeRequest(key=b"foo"), idempotent=True).header.revision)
    while True:
        resp = src.call("KV", "Range", rpc_pb2.RangeRequest(key=key, range_end=end, limit=BATCH_LIMIT, revision=rev),
                        idempotent=True)
        for kv in resp.kvs:
            dst.call("KV", "Put", rpc_pb2.PutRequest(key=_rename(kv.key, prefix, dest_prefix), value=kv.value))
            counter.add()
        if not resp.more or not resp.kvs:
            return rev
        key = resp.kvs[-1].key + b"\x00"


def _op(ev: kv_pb2.Event, prefix: bytes, dest_prefix: bytes) -> rpc_pb2.RequestOp:
    key = _rename(ev.kv.key, prefix, dest_prefix)
    if ev.type == kv_pb2.Event.PUT:
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=ev.kv.value))
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


def _sync_updates(src: Session, dst: Session, prefix: bytes, dest_prefix: bytes, rev: int, counter: _Counter,
                  stop: threading.Event) -> None:
    key, end = _base_range(prefix)
    create = rpc_pb2.WatchCreateRequest(key=key, range_end=end, start_revision=rev + 1)

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(create_request=create)
        stop.wait()

    try:
        for wr in src.stream("Watch", "Watch", requests()):
            if wr.compact_revision != 0:
                raise CtlError(EXIT_ERROR, COMPACTED)
            if wr.canceled:
                raise CtlError(EXIT_ERROR, wr.cancel_reason or "watch canceled by the source")
            ops: list[rpc_pb2.RequestOp] = []
            last = 0
            for ev in wr.events:
                if last and ev.kv.mod_revision > last:  # one destination txn per source revision
                    dst.call("KV", "Txn", rpc_pb2.TxnRequest(success=ops))
                    ops = []
                last = ev.kv.mod_revision
                ops.append(_op(ev, prefix, dest_prefix))
                counter.add()
            if ops:
                dst.call("KV", "Txn", rpc_pb2.TxnRequest(success=ops))
    except EtcdError as err:
        raise CtlError(EXIT_ERROR, error_text(err)) from None


@command(
    root,
    "make-mirror",
    short="Makes a mirror at the destination etcd cluster",
    usage="make-mirror [options] <destination>",
    flags=(
        GoFlag("dest-cacert", "string", "", "Verify certificates of TLS enabled secure servers using this CA bundle"),
        GoFlag("dest-cert", "string", "",
               "Identify secure client using this TLS certificate file for the destination cluster"),
        GoFlag("dest-insecure-transport", "bool", True, "Disable transport security for client connections"),
        GoFlag("dest-key", "string", "", "Identify secure client using this TLS key file"),
        GoFlag("dest-prefix", "string", "",
               "destination prefix to mirror a prefix to a different prefix in the destination cluster"),
        GoFlag("no-dest-prefix", "bool", False, "mirror key-values to the root of the destination cluster"),
        GoFlag("prefix", "string", "", "Key-value prefix to mirror"),
    ),
)
def make_mirror_cmd(settings: Settings, args: list[str], dest_cacert: str, dest_cert: str,
                    dest_insecure_transport: bool, dest_key: str, dest_prefix: str, no_dest_prefix: bool,
                    prefix: str) -> None:
    if len(args) != 1:
        bad_args("make-mirror takes one destination argument")
    if no_dest_prefix and dest_prefix:
        bad_args("`--dest-prefix` and `--no-dest-prefix` cannot be set at the same time, choose one")
    target_prefix = "" if no_dest_prefix else (dest_prefix or prefix)
    dest_settings = replace(settings, endpoints=[args[0]], cacert=dest_cacert, cert=dest_cert, key=dest_key,
                            insecure_transport=dest_insecure_transport, user="", password="")
    interval = float(os.environ.get(REPORT_INTERVAL_ENV, "30") or 30)
    counter = _Counter()
    stop = threading.Event()
    threading.Thread(target=_report, args=(counter, interval, stop), daemon=True, name="mirror-report").start()
    bar = None
    if sys.stdout.isatty():
        from quorumkv.backup.progress import Progress

        bar = Progress("mirroring keys", unit="keys").__enter__()
    try:
        with Session(settings) as src, Session(dest_settings) as dst:
            src.dial()
            dst.dial()
            if bar is not None:
                threading.Thread(target=_tick, args=(bar, counter, stop), daemon=True).start()
            rev = _sync_base(src, dst, prefix.encode(), target_prefix.encode(), counter)
            _sync_updates(src, dst, prefix.encode(), target_prefix.encode(), rev, counter, stop)
    finally:
        stop.set()
        if bar is not None:
            bar.__exit__(None, None, None)


def _tick(bar: object, counter: _Counter, stop: threading.Event) -> None:
    seen = 0
    while not stop.wait(0.5):
        now = counter.total
        bar.advance(now - seen)  # type: ignore[attr-defined]
        seen = now

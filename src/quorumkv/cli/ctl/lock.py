"""``lock <lockname> [exec-command arg1 arg2 ...]`` and ``elect <election-name> [proposal]`` (etcdctl 3.4's).

Both run the concurrency recipe client-side (``quorumkv.client`` Lock / Election: a kept-alive lease, a key
``<name>/<lease hex>``, the oldest key wins), as etcdctl does with clientv3/concurrency, so they work against
any etcd v3 server. SIGINT / SIGTERM release the lock (resign) and exit 0; while still waiting they give up
with ``context canceled``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import GoFlag, bad_args, command, printer, root
from quorumkv.cli.ctl.kv import arg_bytes
from quorumkv.cli.ctl.printers import Printer
from quorumkv.cli.ctl.session import EXIT_ERROR, CtlError, Session, Settings, error_text
from quorumkv.client import EtcdError
from quorumkv.client._types import KeyValue

__all__ = ["elect_cmd", "lock_cmd"]

#: How often a holder checks that its lease is still alive while it waits for a signal.
_POLL_S = 0.2


class _Canceled(Exception):
    """A signal arrived before the lock / leadership was obtained."""


class _Signals:
    """SIGINT/SIGTERM: before ``armed`` they interrupt the wait for the lock; after, they set ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.armed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.done.set()
        else:
            raise _Canceled()


@contextmanager
def _trap() -> Iterator[_Signals]:
    sigs = _Signals()
    previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, sigs.handle)
    try:
        yield sigs
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _show_key(session: Session, show: Printer, key: bytes) -> bool:
    """Print ``key`` as ``get`` does; False when it is gone."""
    resp = session.call("KV", "Range", rpc_pb2.RangeRequest(key=key), idempotent=True)
    if not resp.kvs:
        return False
    show.get(resp)
    sys.stdout.flush()
    return True


def _wait(sigs: _Signals, alive: Callable[[], bool]) -> bool:
    """Until a signal (True) or the session's lease is lost (False)."""
    sigs.armed = True
    while not sigs.done.wait(_POLL_S):
        if not alive():
            return False
    return True


LOCK_FLAGS = (GoFlag("ttl", "int", "10", "timeout for session"),)


@command(root, "lock", short="Acquires a named lock", usage="lock <lockname> [exec-command arg1 arg2 ...]",
         flags=LOCK_FLAGS)
def lock_cmd(settings: Settings, args: list[str], ttl: int) -> None:
    if not args:
        bad_args("lock takes a lock name argument and an optional command to execute")
    name, cmd_args = arg_bytes(args[0]), args[1:]
    show = printer(settings)
    with Session(settings) as session, _trap() as sigs:
        session.dial()
        mutex = session.client.lock(name, ttl=ttl)
        try:
            mutex.acquire()
        except _Canceled:
            raise CtlError(EXIT_ERROR, "context canceled") from None
        except EtcdError as err:
            raise CtlError(EXIT_ERROR, error_text(err)) from None
        try:
            assert mutex.key is not None and mutex.lease is not None
            if cmd_args:
                _run_locked(cmd_args, mutex.key, mutex.header_revision)
                return
            if not _show_key(session, show, mutex.key):
                raise CtlError(EXIT_ERROR, "lock lost on init")
            lease = mutex.lease
            if not _wait(sigs, lambda: lease.alive):
                raise CtlError(EXIT_ERROR, "session expired")
        finally:
            sigs.armed = True  # a signal while releasing must not interrupt the release
            mutex.release()


def _run_locked(cmd_args: list[str], key: bytes, rev: int) -> None:
    env = {"ETCD_LOCK_KEY": os.fsdecode(key), "ETCD_LOCK_REV": str(rev), **os.environ}
    sys.stdout.flush()
    try:
        code = subprocess.call(cmd_args, env=env)
    except FileNotFoundError:
        raise CtlError(EXIT_ERROR, f'exec: "{cmd_args[0]}": executable file not found in $PATH') from None
    except OSError as exc:
        raise CtlError(EXIT_ERROR, f"fork/exec {cmd_args[0]}: {exc.strerror.lower() if exc.strerror else exc}"
                       ) from None
    if code < 0:
        raise CtlError(EXIT_ERROR, f"signal: {signal.Signals(-code).name}")
    if code != 0:
        raise CtlError(EXIT_ERROR, f"exit status {code}")  # etcdctl 3.4 exits 1 whatever the command's status


ELECT_FLAGS = (GoFlag("listen", "bool", False, "observation mode", short="l"),)


@command(root, "elect", short="Observes and participates in leader election",
         usage="elect <election-name> [proposal]",
         flags=ELECT_FLAGS)
def elect_cmd(settings: Settings, args: list[str], listen: bool) -> None:
    if len(args) not in (1, 2):
        bad_args("elect takes one election name argument and an optional proposal argument")
    if listen:
        if len(args) != 1:
            bad_args("proposal given but -l is set")
        _observe(settings, arg_bytes(args[0]))
        return
    if len(args) != 2:
        bad_args("no proposal argument but -l not set")
    _campaign(settings, arg_bytes(args[0]), arg_bytes(args[1]))


def _campaign(settings: Settings, name: bytes, proposal: bytes) -> None:
    show = printer(settings)
    with Session(settings) as session, _trap() as sigs:
        session.dial()
        election = session.client.election(name)
        try:
            election.campaign(proposal)
        except _Canceled:
            raise CtlError(EXIT_ERROR, "context canceled") from None
        except EtcdError as err:
            raise CtlError(EXIT_ERROR, error_text(err)) from None
        try:
            assert election.key is not None and election.lease is not None
            _show_key(session, show, election.key)
            lease = election.lease
            if not _wait(sigs, lambda: lease.alive):
                raise CtlError(EXIT_ERROR, "elect: session expired")
        finally:
            sigs.armed = True
            election.resign()


def _observe(settings: Settings, name: bytes) -> None:
    show = printer(settings)
    with Session(settings) as session, _trap():
        session.dial()
        election = session.client.election(name)
        try:
            for kv in election.observe():
                show.get(_as_range(kv))
                sys.stdout.flush()
        except _Canceled:
            return
        except EtcdError as err:
            raise CtlError(EXIT_ERROR, error_text(err)) from None
    raise CtlError(EXIT_ERROR, "elect: observer lost")


def _as_range(kv: KeyValue) -> rpc_pb2.RangeResponse:
    from quorumkv.api.mvccpb import kv_pb2

    return rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(
        key=kv.key, value=kv.value, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
        version=kv.version, lease=kv.lease)], count=1)

"""``watch`` (with ``--`` exec commands and ``-i`` interactive mode)."""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
from collections.abc import Iterator

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.cli.ctl.app import GoFlag, bad_args, command, root
from quorumkv.cli.ctl.gofmt import go_quote
from quorumkv.cli.ctl.kv import arg_bytes, prefix_range_end
from quorumkv.cli.ctl.printers import Printer, write_err
from quorumkv.cli.ctl.session import EXIT_BAD_CONNECTION, EXIT_INTERRUPTED, CtlError, Session, Settings, error_text
from quorumkv.client import EtcdError

__all__ = ["watch_request"]

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"

WATCH_FLAGS = (
    GoFlag("interactive", "bool", False, "Interactive mode", short="i"),
    GoFlag("prefix", "bool", False, "Watch on a prefix if prefix is set"),
    GoFlag("prev-kv", "bool", False, "get the previous key-value pair before the event happens"),
    GoFlag("progress-notify", "bool", False, "get periodic watch progress notification from server"),
    GoFlag("rev", "int", "0", "Revision to start watching"),
)


def watch_request(
    args: list[str], *, prefix: bool, prev_kv: bool, rev: int, progress_notify: bool = False
) -> rpc_pb2.WatchCreateRequest:
    """etcdctl's getWatchChan: the WatchCreateRequest for ``key [range_end]``."""
    if not args:
        bad_args("bad number of arguments")
    req = rpc_pb2.WatchCreateRequest(key=arg_bytes(args[0]), start_revision=rev, prev_kv=prev_kv)
    if len(args) == 2:
        if prefix:
            bad_args("`range_end` and `--prefix` are mutually exclusive")
        req.range_end = arg_bytes(args[1])
    elif len(args) > 2:
        bad_args("bad number of arguments")
    if prefix:
        if not req.key:
            req.key, req.range_end = b"\x00", b"\x00"
        else:
            req.range_end = prefix_range_end(req.key)
    req.progress_notify = progress_notify
    return req


def _cancel_error(resp: rpc_pb2.WatchResponse) -> str:
    if resp.compact_revision:
        return COMPACTED
    if resp.cancel_reason:
        return resp.cancel_reason
    return FUTURE_REV


def _run_exec(exec_args: list[str], resp: rpc_pb2.WatchResponse) -> None:
    for event in resp.events:
        env = dict(os.environ)
        env["ETCD_WATCH_REVISION"] = str(resp.header.revision)
        env["ETCD_WATCH_EVENT_TYPE"] = '"' + ("DELETE" if event.type == kv_pb2.Event.DELETE else "PUT") + '"'
        env["ETCD_WATCH_KEY"] = go_quote(event.kv.key)
        env["ETCD_WATCH_VALUE"] = go_quote(event.kv.value)
        sys.stdout.flush()
        try:
            code = subprocess.call(exec_args, env=env)
        except OSError as exc:
            write_err(f"command {exec_args!r} error ({exc})\n")
            raise SystemExit(1) from None
        if code != 0:
            write_err(f"command {exec_args!r} error (exit status {code})\n")
            raise SystemExit(1)


def _stream(session: Session, requests: queue.Queue[rpc_pb2.WatchRequest | None]) -> Iterator[rpc_pb2.WatchResponse]:
    def gen() -> Iterator[rpc_pb2.WatchRequest]:
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    return iter(session.stream("Watch", "Watch", gen()))


def run_watch(session: Session, show: Printer, creates: list[rpc_pb2.WatchCreateRequest], exec_args: list[str]) -> None:
    """Watch until the server cancels every watcher; prints each response like printWatchCh."""
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
    for create in creates:
        requests.put(rpc_pb2.WatchRequest(create_request=create))
    live = 0
    try:
        for resp in _stream(session, requests):
            if resp.created and not resp.events and not resp.canceled:
                live += 1
                continue
            if resp.canceled:
                write_err(f"watch was canceled ({_cancel_error(resp)})\n")
            show.watch(resp)
            sys.stdout.flush()
            if exec_args:
                _run_exec(exec_args, resp)
            if resp.canceled:
                live -= 1
                if live <= 0:
                    break
    except EtcdError as err:
        raise CtlError(EXIT_BAD_CONNECTION, error_text(err)) from None
    finally:
        requests.put(None)
    raise CtlError(EXIT_INTERRUPTED, "watch is canceled by the server")


def _split_exec(args: list[str]) -> tuple[list[str], list[str]]:
    """Arguments after a literal ``--`` following ``watch`` on the command line run as a command per event."""
    argv = sys.argv[1:]
    if "watch" in argv:
        after = argv[argv.index("watch") + 1 :]
        if "--" in after:
            exec_args = after[after.index("--") + 1 :]
            if exec_args and args[-len(exec_args) :] == exec_args:
                return args[: -len(exec_args)], exec_args
    return args, []


def _interactive(session: Session, show: Printer, base: dict[str, object]) -> None:
    """``watch -i``: read ``watch [options] <key or prefix>`` lines from stdin, one watcher per line."""
    creates: list[rpc_pb2.WatchCreateRequest] = []
    for raw in sys.stdin:
        words = shlex.split(raw)
        if not words:
            continue
        if words[0] != "watch":
            write_err(f"Invalid command {raw.strip()!s} (only support watch)\n")
            continue
        flags = dict(base)
        positional: list[str] = []
        for word in words[1:]:
            if word == "--prefix":
                flags["prefix"] = True
            elif word == "--prev-kv":
                flags["prev_kv"] = True
            elif word.startswith("--rev="):
                flags["rev"] = int(word.split("=", 1)[1])
            else:
                positional.append(word)
        try:
            creates.append(watch_request(positional, **flags))  # type: ignore[arg-type]
        except CtlError as exc:
            write_err(f"Invalid command: {raw.strip()} ({exc.message})\n")
    run_watch(session, show, creates, [])


@command(
    root,
    "watch",
    short="Watches events stream on keys or prefixes",
    usage="watch [options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]",
    flags=WATCH_FLAGS,
)
def watch_cmd(
    settings: Settings, args: list[str], interactive: bool, prefix: bool, prev_kv: bool, rev: int, progress_notify: bool
) -> None:
    env_key, env_range = os.environ.get("ETCDCTL_WATCH_KEY", ""), os.environ.get("ETCDCTL_WATCH_RANGE_END", "")
    if not env_key and env_range:
        bad_args(f'ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END="{env_range}"')
    show = Printer(settings.write_out, settings.hex)
    flags: dict[str, object] = {"prefix": prefix, "prev_kv": prev_kv, "rev": rev, "progress_notify": progress_notify}
    if interactive:
        with Session(settings) as session:
            _interactive(session, show, flags)
        return
    watch_args, exec_args = _split_exec(args)
    if env_key:
        if watch_args:
            bad_args("bad number of arguments")
        watch_args = [env_key] + ([env_range] if env_range else [])
    create = watch_request(watch_args, **flags)  # type: ignore[arg-type]
    with Session(settings) as session:
        run_watch(session, show, [create], exec_args)

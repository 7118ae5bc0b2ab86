"""``get``, ``put``, ``del``, ``txn`` and ``compaction`` (etcdctl 3.4 semantics and messages)."""

from __future__ import annotations

import os
import re
import sys
from typing import IO

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import GoFlag, bad_args, command, parse_go_int, printer, root
from quorumkv.cli.ctl.printers import write_out
from quorumkv.cli.ctl.session import (
    EXIT_BAD_ARGS,
    EXIT_BAD_FEATURE,
    EXIT_ERROR,
    EXIT_INVALID_INPUT,
    CtlError,
    Session,
    Settings,
)

__all__ = ["get_op", "parse_compare", "prefix_range_end", "put_op"]


def arg_bytes(arg: str) -> bytes:
    return os.fsencode(arg)


def prefix_range_end(key: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd."""
    end = bytearray(key)
    for index in range(len(end) - 1, -1, -1):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\x00"


GET_FLAGS = (
    GoFlag("consistency", "string", "l", "Linearizable(l) or Serializable(s)"),
    GoFlag("from-key", "bool", False, "Get keys that are greater than or equal to the given key using byte compare"),
    GoFlag("keys-only", "bool", False, "Get only the keys"),
    GoFlag("limit", "int", "0", "Maximum number of results"),
    GoFlag("order", "string", "", "Order of results; ASCEND or DESCEND (ASCEND by default)"),
    GoFlag("prefix", "bool", False, "Get keys with matching prefix"),
    GoFlag("print-value-only", "bool", False, 'Only write values when using the "simple" output format'),
    GoFlag("rev", "int", "0", "Specify the kv revision"),
    GoFlag("sort-by", "string", "", "Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION"),
)

_SORT_ORDERS = {"ASCEND": rpc_pb2.RangeRequest.ASCEND, "DESCEND": rpc_pb2.RangeRequest.DESCEND, "": None}
_SORT_TARGETS = {
    "CREATE": rpc_pb2.RangeRequest.CREATE,
    "KEY": rpc_pb2.RangeRequest.KEY,
    "MODIFY": rpc_pb2.RangeRequest.MOD,
    "VALUE": rpc_pb2.RangeRequest.VALUE,
    "VERSION": rpc_pb2.RangeRequest.VERSION,
    "": rpc_pb2.RangeRequest.KEY,
}


def get_op(
    args: list[str],
    *,
    consistency: str = "l",
    from_key: bool = False,
    keys_only: bool = False,
    limit: int = 0,
    order: str = "",
    prefix: bool = False,
    rev: int = 0,
    sort_by: str = "",
    **_: object,
) -> rpc_pb2.RangeRequest:
    """etcdctl's getGetOp: the RangeRequest for ``get`` arguments (raises :class:`CtlError` like etcdctl)."""
    if not args:
        bad_args("get command needs one argument as key and an optional argument as range_end")
    if prefix and from_key:
        bad_args("`--prefix` and `--from-key` cannot be set at the same time, choose one")
    req = rpc_pb2.RangeRequest()
    if consistency == "s":
        req.serializable = True
    elif consistency != "l":
        raise CtlError(EXIT_BAD_FEATURE, f'unknown consistency flag "{consistency}"')
    key = arg_bytes(args[0])
    if len(args) > 1:
        if prefix or from_key:
            bad_args("too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
        req.range_end = arg_bytes(args[1])
    req.limit = limit
    if rev > 0:
        req.revision = rev
    if order.upper() not in _SORT_ORDERS:
        raise CtlError(EXIT_BAD_FEATURE, f"bad sort order {order}")
    sort_order = _SORT_ORDERS[order.upper()]
    if sort_by.upper() not in _SORT_TARGETS:
        raise CtlError(EXIT_BAD_FEATURE, f"bad sort target {sort_by}")
    target = _SORT_TARGETS[sort_by.upper()]
    if sort_order is None or (target == rpc_pb2.RangeRequest.KEY and sort_order == rpc_pb2.RangeRequest.ASCEND):
        sort_order = rpc_pb2.RangeRequest.NONE
    req.sort_order = sort_order
    req.sort_target = target
    if prefix:
        if not key:
            key = b"\x00"
            req.range_end = b"\x00"
        else:
            req.range_end = prefix_range_end(key)
    if from_key:
        if not key:
            key = b"\x00"
        req.range_end = b"\x00"
    req.key = key
    if keys_only:
        req.keys_only = True
    return req


@command(
    root,
    "get",
    short="Gets the key or a range of keys",
    usage="get [options] <key> [range_end]",
    flags=GET_FLAGS,
)
def get_cmd(settings: Settings, args: list[str], print_value_only: bool, **flags: object) -> None:
    req = get_op(args, **flags)  # type: ignore[arg-type]
    with Session(settings) as session:
        resp = session.call("KV", "Range", req, idempotent=True)
    if print_value_only and settings.write_out != "simple":
        bad_args("print-value-only is only for `--write-out=simple`")
    printer(settings, value_only=print_value_only).get(resp)


PUT_FLAGS = (
    GoFlag("ignore-lease", "bool", False, "updates the key using its current lease"),
    GoFlag("ignore-value", "bool", False, "updates the key using its current value"),
    GoFlag("lease", "string", "0", "lease ID (in hexadecimal) to attach to the key"),
    GoFlag("prev-kv", "bool", False, "return the previous key-value pair before modification"),
)
PUT_LONG = """Puts the given key into the store.

When <value> begins with '-', <value> is interpreted as a flag.
Insert '--' for workaround:

$ put <key> -- <value>
$ put -- <key> <value>

If <value> isn't given as a command line argument and '--ignore-value' is not specified,
this command tries to read the value from standard input.

If <lease> isn't given as a command line argument and '--ignore-lease' is not specified,
this command tries to read the value from standard input.

For example,
$ cat file | put <key>
will store the content of the file to <key>."""


def put_op(
    args: list[str],
    *,
    ignore_lease: bool = False,
    ignore_value: bool = False,
    lease: str = "0",
    prev_kv: bool = False,
    stdin: IO[bytes] | None = None,
) -> rpc_pb2.PutRequest:
    """etcdctl's getPutOp."""
    usage = "put command needs 1 argument and input from stdin or 2 arguments"
    if not args:
        bad_args(usage)
    req = rpc_pb2.PutRequest(key=arg_bytes(args[0]))
    if ignore_value and len(args) > 1:
        bad_args("put command needs only 1 argument when 'ignore-value' is set")
    if not ignore_value:
        if len(args) > 1:
            req.value = arg_bytes(args[1])
        else:
            data = (stdin or sys.stdin.buffer).read()
            if not data:
                bad_args(usage)
            req.value = data
    try:
        lease_id = parse_go_int(lease, base=16)
    except ValueError as exc:
        bad_args(f"bad lease ID ({exc}), expecting ID in Hex")
    req.lease = lease_id
    req.prev_kv = prev_kv
    req.ignore_value = ignore_value
    req.ignore_lease = ignore_lease
    return req


@command(
    root,
    "put",
    short="Puts the given key into the store",
    usage="put [options] <key> <value> (<value> can also be given from stdin)",
    long=PUT_LONG,
    flags=PUT_FLAGS,
)
def put_cmd(settings: Settings, args: list[str], **flags: object) -> None:
    req = put_op(args, **flags)  # type: ignore[arg-type]
    with Session(settings) as session:
        resp = session.call("KV", "Put", req)
    printer(settings).put(resp)


DEL_FLAGS = (
    GoFlag("from-key", "bool", False, "delete keys that are greater than or equal to the given key using byte compare"),
    GoFlag("prefix", "bool", False, "delete keys with matching prefix"),
    GoFlag("prev-kv", "bool", False, "return deleted key-value pairs"),
)


def del_op(
    args: list[str], *, from_key: bool = False, prefix: bool = False, prev_kv: bool = False
) -> rpc_pb2.DeleteRangeRequest:
    """etcdctl's getDelOp."""
    if not args or len(args) > 2:
        bad_args("del command needs one argument as key and an optional argument as range_end")
    if prefix and from_key:
        bad_args("`--prefix` and `--from-key` cannot be set at the same time, choose one")
    req = rpc_pb2.DeleteRangeRequest()
    key = arg_bytes(args[0])
    if len(args) > 1:
        if prefix or from_key:
            bad_args("too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
        req.range_end = arg_bytes(args[1])
    if prefix:
        if not key:
            key = b"\x00"
            req.range_end = b"\x00"
        else:
            req.range_end = prefix_range_end(key)
    req.prev_kv = prev_kv
    if from_key:
        if not key:
            key = b"\x00"
        req.range_end = b"\x00"
    req.key = key
    return req


@command(
    root,
    "del",
    short="Removes the specified key or range of keys [key, range_end)",
    usage="del [options] <key> [range_end]",
    flags=DEL_FLAGS,
)
def del_cmd(settings: Settings, args: list[str], **flags: bool) -> None:
    req = del_op(args, **flags)
    with Session(settings) as session:
        resp = session.call("KV", "DeleteRange", req)
    printer(settings).delete(resp)


# ------------------------------------------------------------------------------------------------ txn

_ARGIFY_RE = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|[^'"\s]\S*[^'"\s]?""")
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def go_unquote(text: str) -> str:
    """strconv.Unquote for a double- or back-quoted Go string literal; raises ValueError."""
    if len(text) >= 2 and text[0] == text[-1] == "`":
        return text[1:-1]
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError("invalid syntax")
    body = text[1:-1]
    out = bytearray()
    index = 0
    while index < len(body):
        ch = body[index]
        if ch == '"':
            raise ValueError("invalid syntax")
        if ch != "\\":
            out += os.fsencode(ch)
            index += 1
            continue
        esc = body[index + 1 : index + 2]
        if esc in _GO_ESCAPES:
            out += _GO_ESCAPES[esc].encode()
            index += 2
        elif esc == "x":
            out.append(int(body[index + 2 : index + 4], 16))
            index += 4
        elif esc in ("u", "U"):
            size = 4 if esc == "u" else 8
            out += chr(int(body[index + 2 : index + 2 + size], 16)).encode()
            index += 2 + size
        elif esc.isdigit():
            out.append(int(body[index + 1 : index + 4], 8))
            index += 4
        else:
            raise ValueError("invalid syntax")
    return os.fsdecode(bytes(out))


def argify(line: str) -> list[str]:
    """etcdctl's Argify: split a txn op line shell-style (double quotes unquoted, single quotes stripped)."""
    args = []
    for word in _ARGIFY_RE.findall(line):
        if word.startswith("'"):
            word = word[1:-1]
        elif word.startswith('"'):
            try:
                word = go_unquote(word)
            except ValueError:
                pass
        args.append(word)
    return args


_QUOTED = r'"(?:[^"\\]|\\.)*"|`[^`]*`'
_COMPARE_RE = re.compile(rf"^\s*({_QUOTED})\)\s+(\S+)\s+({_QUOTED})")
_CMP_RESULTS = {
    "=": rpc_pb2.Compare.EQUAL,
    "==": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    "<": rpc_pb2.Compare.LESS,
    ">": rpc_pb2.Compare.GREATER,
}


def parse_compare(line: str) -> rpc_pb2.Compare:
    """etcdctl's parseCompare: ``target("key") op "value"``."""
    target, paren, rest = line.partition("(")
    if not paren:
        raise ValueError(f"malformed comparison: {line}")
    match = _COMPARE_RE.match(rest)
    if match is None:
        raise ValueError(f"malformed comparison: {line}")
    key, op, val = go_unquote(match.group(1)), match.group(2), go_unquote(match.group(3))
    if op not in _CMP_RESULTS:
        raise ValueError(f"malformed comparison: {line} (unknown op {op})")
    cmp = rpc_pb2.Compare(key=arg_bytes(key), result=_CMP_RESULTS[op])
    try:
        if target in ("ver", "version"):
            cmp.target = rpc_pb2.Compare.VERSION
            cmp.version = parse_go_int(val)
        elif target in ("c", "create"):
            cmp.target = rpc_pb2.Compare.CREATE
            cmp.create_revision = parse_go_int(val)
        elif target in ("m", "mod"):
            cmp.target = rpc_pb2.Compare.MOD
            cmp.mod_revision = parse_go_int(val)
        elif target in ("val", "value"):
            cmp.target = rpc_pb2.Compare.VALUE
            cmp.value = arg_bytes(val)
        elif target == "lease":
            cmp.target = rpc_pb2.Compare.LEASE
            cmp.lease = parse_go_int(val, base=16)
        else:
            raise ValueError(f"malformed comparison: {line} (unknown target {target})")
    except ValueError as exc:
        if str(exc).startswith("malformed"):
            raise
        raise ValueError(f"invalid txn compare request: {line}") from None
    return cmp


def _split_flags(words: list[str], flags: tuple[GoFlag, ...]) -> tuple[list[str], dict[str, object]] | None:
    """pflag-style parsing of one txn op's words; None on an unknown flag or a bad value."""
    by_name = {flag.name: flag for flag in flags}
    values: dict[str, object] = {}
    positional: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            positional.extend(words[index:])
            break
        if not word.startswith("--") or word == "--":
            positional.append(word)
            continue
        name, sep, raw = word[2:].partition("=")
        flag = by_name.get(name)
        if flag is None:
            return None
        if flag.kind == "bool":
            if sep and raw not in ("true", "false", "1", "0", "t", "f", "TRUE", "FALSE", "True", "False"):
                return None
            values[flag.dest] = (raw in ("true", "1", "t", "TRUE", "True")) if sep else True
            continue
        if not sep:
            if index >= len(words):
                return None
            raw = words[index]
            index += 1
        try:
            values[flag.dest] = flag.convert(raw)
        except Exception:
            return None
    return positional, values


def parse_request_op(line: str) -> rpc_pb2.RequestOp:
    """etcdctl's parseRequestUnion: one ``get|put|del ...`` line of a txn."""
    args = argify(line)
    if len(args) < 2:
        raise ValueError(f"invalid txn compare request: {line}")
    name, words = args[0], args[1:]
    specs = {"get": GET_FLAGS, "put": PUT_FLAGS, "del": DEL_FLAGS}
    if name not in specs:
        raise ValueError(f"invalid txn request: {line}")
    parsed = _split_flags(words, specs[name])
    if parsed is None:
        raise ValueError(f"invalid txn request: {line}")
    positional, values = parsed
    if name == "get":
        values.pop("print_value_only", None)
        return rpc_pb2.RequestOp(request_range=get_op(positional, **values))  # type: ignore[arg-type]
    if name == "put":
        return rpc_pb2.RequestOp(request_put=put_op(positional, **values))  # type: ignore[arg-type]
    return rpc_pb2.RequestOp(request_delete_range=del_op(positional, **values))  # type: ignore[arg-type]


def _read_line(stream: IO[bytes]) -> str:
    raw = stream.readline()
    if not raw.endswith(b"\n"):
        raise CtlError(EXIT_INVALID_INPUT, "EOF")
    return os.fsdecode(raw).strip()


def read_txn(stream: IO[bytes], interactive: bool = False) -> rpc_pb2.TxnRequest:
    """The txn request described by etcdctl's stdin format (compares, blank, success, blank, failure, blank)."""
    req = rpc_pb2.TxnRequest()

    def prompt(text: str) -> None:
        if interactive:
            write_out(text + "\n")
            sys.stdout.flush()

    prompt("compares:")
    while line := _read_line(stream):
        try:
            req.compare.append(parse_compare(line))
        except ValueError as exc:
            raise CtlError(EXIT_INVALID_INPUT, str(exc)) from None
    for branch, text in (
        (req.success, "success requests (get, put, del):"),
        (req.failure, "failure requests (get, put, del):"),
    ):
        prompt(text)
        while line := _read_line(stream):
            try:
                branch.append(parse_request_op(line))
            except ValueError as exc:
                raise CtlError(EXIT_INVALID_INPUT, str(exc)) from None
    return req


@command(
    root,
    "txn",
    short="Txn processes all the requests in one transaction",
    usage="txn [options]",
    flags=(GoFlag("interactive", "bool", False, "Input transaction in interactive mode", short="i"),),
)
def txn_cmd(settings: Settings, args: list[str], interactive: bool) -> None:
    if args:
        bad_args("txn command does not accept argument")
    req = read_txn(sys.stdin.buffer, interactive)
    with Session(settings) as session:
        resp = session.call("KV", "Txn", req)
    printer(settings).txn(resp)


@command(
    root,
    "compaction",
    short="Compacts the event history in etcd",
    usage="compaction [options] <revision>",
    flags=(GoFlag("physical", "bool", False, "'true' to wait for compaction to physically remove all old revisions"),),
)
def compaction_cmd(settings: Settings, args: list[str], physical: bool) -> None:
    if len(args) != 1:
        raise CtlError(EXIT_BAD_ARGS, "compaction command needs 1 argument")
    try:
        revision = parse_go_int(args[0])
    except ValueError as exc:
        raise CtlError(EXIT_ERROR, str(exc)) from None
    with Session(settings) as session:
        session.call("KV", "Compact", rpc_pb2.CompactionRequest(revision=revision, physical=physical))
    printer(settings).compaction(revision)

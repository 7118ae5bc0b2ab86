"""Go formatting primitives that etcdctl 3.4's output is made of.

``go_quote`` is ``strconv.Quote`` (``%q``), ``go_json`` is ``encoding/json`` applied to the gogo-protobuf
structs etcdctl prints (proto field names as JSON keys, ``omitempty`` everywhere, bytes as base64, 64-bit
integers as numbers, oneofs as ``{"Outer":{"Inner":...}}``), ``go_duration`` is ``time.Duration.String``
and ``humanize_bytes`` is go-humanize's ``Bytes`` (SI units, as in etcdctl's "DB SIZE" column).
"""

from __future__ import annotations

import base64
import math
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "GoJSON",
    "go_duration",
    "go_json",
    "go_json_string",
    "go_quote",
    "humanize_bytes",
    "tabwrite",
]

#: Fields newer than etcd 3.4's API; etcdctl 3.4 does not know them, so they never appear in its JSON.
_NEWER_FIELDS: dict[str, frozenset[str]] = {
    "HashKVResponse": frozenset({"hash_revision"}),
    "SnapshotResponse": frozenset({"version"}),
    "StatusResponse": frozenset({"storageVersion", "dbSizeQuota", "downgradeInfo"}),
}


def _go_printable(ch: str) -> bool:
    """``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    if ch == " ":
        return True
    return unicodedata.category(ch)[0] in "LMNPS"


def go_quote(data: bytes | str) -> str:
    """``strconv.Quote(string(data))``: Go's ``%q`` of a byte string (invalid UTF-8 bytes as ``\\xNN``)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    out = ['"']
    text = raw.decode("utf-8", "surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif _go_printable(ch):
            out.append(ch)
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\v":
            out.append("\\v")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def go_json_string(text: str) -> str:
    """A JSON string as Go's ``encoding/json`` writes it (HTML-safe escapes, U+2028/2029 escaped)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class GoJSON:
    """A pre-rendered JSON fragment (lets callers assemble clientv3's wrapper structs around messages)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _scalar(field: Any, value: Any) -> str:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return '"' + base64.b64encode(value).decode("ascii") + '"'
    if field.type == FieldDescriptor.TYPE_STRING:
        return go_json_string(value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(value)
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return repr(float(value))
    return str(int(value))


def _is_empty(field: Any, msg: Message) -> bool:
    if field.is_repeated:
        return len(getattr(msg, field.name)) == 0
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return not msg.HasField(field.name)
    return not getattr(msg, field.name)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _message(msg: Message) -> str:
    desc = msg.DESCRIPTOR
    skip = _NEWER_FIELDS.get(desc.name, frozenset())
    parts: list[str] = []
    done_oneofs: set[str] = set()
    for field in desc.fields:
        if field.name in skip:
            continue
        oneof = field.containing_oneof
        if oneof is not None and not _is_synthetic(oneof):
            if oneof.name in done_oneofs:
                continue
            done_oneofs.add(oneof.name)
            which = msg.WhichOneof(oneof.name)
            if which is None:
                continue
            inner = desc.fields_by_name[which]
            parts.append(f'"{_camel(oneof.name)}":{{"{_camel(which)}":{_scalar(inner, getattr(msg, which))}}}')
            continue
        if _is_empty(field, msg):
            continue
        value = getattr(msg, field.name)
        if field.is_repeated:
            rendered = "[" + ",".join(_scalar(field, item) for item in value) + "]"
        else:
            rendered = _scalar(field, value)
        parts.append(f'"{field.name}":{rendered}')
    return "{" + ",".join(parts) + "}"


def _is_synthetic(oneof: Any) -> bool:
    return bool(getattr(oneof, "is_synthetic", False)) or oneof.name.startswith("_")


def go_json(value: Any) -> str:
    """Render ``value`` as etcdctl's ``json.Marshal`` would.

    Messages follow the gogo struct rules (see the module docstring); ``dict`` keeps insertion order (a Go
    struct); lists, ``None`` (null), bool, int, str and :class:`GoJSON` fragments are what they say.
    """
    if isinstance(value, GoJSON):
        return value.text
    if isinstance(value, Message):
        return _message(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return go_json_string(value)
    if isinstance(value, bytes):
        return '"' + base64.b64encode(value).decode("ascii") + '"'
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_json_string(k)}:{go_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as Go JSON")


def header_fields(msg: Message) -> dict[str, Any]:
    """The ``ResponseHeader`` fields inlined by clientv3's lease structs (``*pb.ResponseHeader`` embedded)."""
    out: dict[str, Any] = {}
    header = msg.header  # type: ignore[attr-defined]
    for name in ("cluster_id", "member_id", "revision", "raft_term"):
        value = getattr(header, name)
        if value:
            out[name] = value
    return out


def _fmt_frac(value: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fractional digits of value/10**prec without trailing zeros, and the integer part."""
    digits = ""
    printed = False
    for _ in range(prec):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits = str(digit) + digits
        value //= 10
    return ("." + digits if printed else ""), value


def go_duration(seconds: float) -> str:
    """``time.Duration.String()`` for a duration given in seconds (nanosecond resolution)."""
    nanos = round(seconds * 1e9)
    neg = nanos < 0
    u = abs(nanos)
    if u == 0:
        return "0s"
    if u < 1_000_000_000:
        if u < 1000:
            text = f"{u}ns"
        elif u < 1_000_000:
            frac, whole = _fmt_frac(u, 3)
            text = f"{whole}{frac}µs"
        else:
            frac, whole = _fmt_frac(u, 6)
            text = f"{whole}{frac}ms"
    else:
        frac, whole = _fmt_frac(u, 9)
        secs = whole % 60
        minutes = whole // 60
        text = f"{secs}{frac}s"
        if minutes:
            hours = minutes // 60
            text = f"{minutes % 60}m{text}"
            if hours:
                text = f"{hours}h{text}"
    return "-" + text if neg else text


def humanize_bytes(size: int) -> str:
    """go-humanize ``Bytes``: "20 kB", "1.2 MB", "512 B"."""
    if size < 10:
        return f"{size} B"
    sizes = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    exp = math.floor(math.log(size) / math.log(1000))
    suffix = sizes[int(exp)]
    value = math.floor(size / (1000**exp) * 10 + 0.5) / 10
    return f"{value:.0f} {suffix}" if value >= 10 else f"{value:.1f} {suffix}"


def go_slice(items: Iterable[str]) -> str:
    """``fmt.Sprintf("%v", []string{...})``."""
    return "[" + " ".join(items) + "]"


def tabwrite(rows: Sequence[tuple[str, str]]) -> list[str]:
    """Go ``text/tabwriter`` (tab padding, width 8, padding 1) for two-cell lines ``left\\tright``."""
    if not rows:
        return []
    width = max(len(left) for left, _ in rows) + 1
    width = (width + 7) // 8 * 8
    lines = []
    for left, right in rows:
        tabs = max(1, -(-(width - len(left)) // 8))
        lines.append(left + "\t" * tabs + right)
    return lines

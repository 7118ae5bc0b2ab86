"""Strict JSON -> protobuf decoding for the gateway, with the rules and error texts of etcd 3.4's gateway.

etcd 3.4's grpc-gateway decodes a request with golang/protobuf's ``jsonpb`` on top of Go's ``encoding/json``;
its answers to bad input (checked against etcd 3.4.23 with curl) are what this module reproduces:

* bytes fields are standard base64 *with* padding, line breaks ignored (Go's ``base64.StdEncoding``); anything
  else is ``illegal base64 data at input byte N`` (N as Go counts it);
* integer fields take a JSON number or a quoted number; a fraction, an exponent or an out-of-range value is
  ``json: cannot unmarshal number 1.5 into Go value of type int64``; a quoted non-number is Go's JSON syntax
  error (``invalid character 'a' looking for beginning of value``);
* an enum takes its value name or any int32 (``unknown value "X" for enum etcdserverpb.RangeRequest_SortOrder``);
* a value of the wrong JSON type is ``json: cannot unmarshal string into Go value of type bool`` and the like;
* ``null`` leaves a field unset; unknown fields are ignored; field names may be the proto or the JSON name.

Every problem is a :class:`DecodeError` whose message is the text etcd puts in its 400 answer (code 3,
InvalidArgument); no Python exception text ever reaches the client. JSON syntax errors are described in Go's
words (``invalid character 'x' looking for beginning of value``, ``unexpected end of JSON input``), though the
character Go names may differ from the one named here for some malformed documents.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["DecodeError", "decode_value", "go_b64decode", "loads", "parse_message"]


class DecodeError(ValueError):
    """A request body etcd's gateway would refuse; ``str()`` is etcd's message."""


class _Number(str):
    """A JSON number kept as its literal text (Go reports and range-checks the literal)."""


def _kind(value: Any) -> str:
    """Go's name for a JSON value's type in UnmarshalTypeError messages."""
    if isinstance(value, _Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _type_error(value: Any, go_type: str) -> DecodeError:
    return DecodeError(f"json: cannot unmarshal {_kind(value)} into Go value of type {go_type}")


def _constant(name: str) -> Any:
    raise DecodeError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_constant)


def _syntax_error(text: str, exc: json.JSONDecodeError) -> DecodeError:
    pos = exc.pos
    if pos >= len(text.rstrip()):
        return DecodeError("unexpected end of JSON input")
    char = text[pos]
    shown = _shown(char)
    if char == "-" and exc.msg.startswith("Expecting value"):  # a minus sign not followed by a digit
        after = text[pos + 1] if pos + 1 < len(text) else " "  # Go feeds a space at the end of input
        return DecodeError(f"invalid character '{_shown(after)}' in numeric literal")
    literal = _LITERALS.get(char)
    if literal is not None and exc.msg.startswith("Expecting value"):
        for i, expected in enumerate(literal):
            if pos + i >= len(text):
                return DecodeError("unexpected end of JSON input")
            if text[pos + i] != expected:
                return DecodeError(f"invalid character '{_shown(text[pos + i])}' in literal {literal} "
                                   f"(expecting '{expected}')")
    if exc.msg.startswith("Extra data"):
        return DecodeError(f"invalid character '{shown}' after top-level value")
    if exc.msg.startswith("Expecting property name"):
        return DecodeError(f"invalid character '{shown}' looking for beginning of object key string")
    if exc.msg.startswith("Expecting ',' delimiter"):
        after = "object key:value pair" if _inside_object(text, pos) else "array element"
        return DecodeError(f"invalid character '{shown}' after {after}")
    if exc.msg.startswith("Expecting ':' delimiter"):
        return DecodeError(f"invalid character '{shown}' after object key")
    if exc.msg.startswith("Invalid control character"):
        return DecodeError(f"invalid character '{shown}' in string literal")
    if exc.msg.startswith(("Invalid \\escape", "Invalid \\u")):
        bad = text[pos + 1] if exc.msg.startswith("Invalid \\escape") and pos + 1 < len(text) else char
        return DecodeError(f"invalid character '{_shown(bad)}' in string escape code")
    if exc.msg.startswith("Unterminated string"):
        return DecodeError("unexpected end of JSON input")
    return DecodeError(f"invalid character '{shown}' looking for beginning of value")


_LITERALS = {"n": "null", "t": "true", "f": "false"}


def _shown(char: str) -> str:
    """A character as Go's JSON errors quote it."""
    return repr(char)[1:-1] if char not in "'\\" else "\\" + char


def _inside_object(text: str, pos: int) -> bool:
    depth_obj = text.rfind("{", 0, pos)
    return depth_obj > text.rfind("[", 0, pos)


def loads(data: bytes | str) -> Any:
    """One JSON value, numbers kept as literals; raises :class:`DecodeError` with Go's wording."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(text, exc) from None
    except RecursionError:
        raise DecodeError("exceeded max depth") from None


def decode_value(text: str) -> tuple[Any, int]:
    """``raw_decode`` with Go's error wording (for streamed bodies holding several JSON values)."""
    try:
        return _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(text, exc) from None
    except RecursionError:
        raise DecodeError("exceeded max depth") from None


_STD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DECODE_MAP = {ord(c): i for i, c in enumerate(_STD_ALPHABET)}


def go_b64decode(text: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString``: padding required, ``\\r``/``\\n`` skipped, non-strict trailing
    bits; the error names the offending byte offset exactly as Go's ``CorruptInputError`` does."""
    src = text.encode("utf-8", errors="surrogatepass")
    out = bytearray()
    si = 0
    n = len(src)
    while si < n:
        dbuf = [0, 0, 0, 0]
        dlen = 4
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise DecodeError(f"illegal base64 data at input byte {si - j}")
            ch = src[si]
            si += 1
            value = _DECODE_MAP.get(ch)
            if value is not None:
                dbuf[j] = value
                j += 1
                continue
            if ch in (0x0A, 0x0D):
                continue
            if ch != 0x3D:  # '='
                raise DecodeError(f"illegal base64 data at input byte {si - 1}")
            if j in (0, 1):
                raise DecodeError(f"illegal base64 data at input byte {si - 1}")
            if j == 2:  # "==" expected; the first "=" is consumed
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    raise DecodeError(f"illegal base64 data at input byte {n}")
                if src[si] != 0x3D:
                    raise DecodeError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            if si < n:
                raise DecodeError(f"illegal base64 data at input byte {si}")
            dlen = j
            break
        val = (dbuf[0] << 18) | (dbuf[1] << 12) | (dbuf[2] << 6) | dbuf[3]
        chunk = bytes(((val >> 16) & 0xFF, (val >> 8) & 0xFF, val & 0xFF))
        out += chunk[: dlen - 1]
        if dlen < 4:
            return bytes(out)
    return bytes(out)


_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_INT_RANGES = {
    "int64": (-(2**63), 2**63 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint64": (0, 2**64 - 1),
    "uint32": (0, 2**32 - 1),
}
_GO_INT = {
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_SINT64: "int64", FieldDescriptor.TYPE_SFIXED64: "int64",
    FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_SINT32: "int32", FieldDescriptor.TYPE_SFIXED32: "int32",
    FieldDescriptor.TYPE_UINT64: "uint64", FieldDescriptor.TYPE_FIXED64: "uint64",
    FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_FIXED32: "uint32",
}


def _in_range(literal: str, lo: int, hi: int) -> int | None:
    """The integer a JSON number literal spells if it is one in ``lo..hi`` (no fraction, no exponent)."""
    if len(literal) > 21 or not _INT_RE.match(literal):  # 21 characters hold any 64-bit value and its sign
        return None
    value = int(literal)
    return value if lo <= value <= hi else None


def _go_enum_name(enum: EnumDescriptor) -> str:
    package = enum.file.package
    local = enum.full_name[len(package) + 1:] if package else enum.full_name
    return f"{package}.{local.replace('.', '_')}" if package else local.replace(".", "_")


def _integer(value: Any, go_type: str) -> int:
    if isinstance(value, str) and not isinstance(value, _Number):
        inner = value  # jsonpb drops the quotes and decodes what is inside as JSON
        if not inner.strip():
            raise DecodeError("unexpected end of JSON input")
        value = loads(inner)
    if not isinstance(value, _Number):
        raise _type_error(value, go_type)
    number = _in_range(value, *_INT_RANGES[go_type])
    if number is None:
        raise DecodeError(f"json: cannot unmarshal number {value} into Go value of type {go_type}")
    return number


def _float(value: Any, go_type: str) -> float:
    if isinstance(value, str) and not isinstance(value, _Number):
        if value in ("NaN", "Infinity", "-Infinity"):
            return float(value.replace("Infinity", "inf"))
        value = loads(value) if value.strip() else _constant("\x00")
    if not isinstance(value, _Number):
        raise _type_error(value, go_type)
    try:
        return float(value)
    except (ValueError, OverflowError):  # pragma: no cover - JSON numbers always parse as floats
        raise DecodeError(f"json: cannot unmarshal number {value} into Go value of type {go_type}") from None


def _scalar(field: Any, value: Any) -> Any:
    """One JSON value for the non-message ``field`` (a FieldDescriptor), converted as jsonpb converts it."""
    t = field.type
    if t == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        go_type = _go_enum_name(enum)
        if isinstance(value, str) and not isinstance(value, _Number):
            ev = enum.values_by_name.get(value)
            if ev is None:
                raise DecodeError(f'unknown value "{value}" for enum {go_type}')
            return ev.number
        if not isinstance(value, _Number):
            raise _type_error(value, go_type)
        number = _in_range(value, -(2**31), 2**31 - 1)
        if number is None:
            raise DecodeError(f"json: cannot unmarshal number {value} into Go value of type {go_type}")
        return number
    if t in _GO_INT:
        return _integer(value, _GO_INT[t])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _float(value, "float64" if t == FieldDescriptor.TYPE_DOUBLE else "float32")
    if t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, "bool")
        return value
    if t == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str) or isinstance(value, _Number):
            raise _type_error(value, "string")
        return value
    if t == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, str) and not isinstance(value, _Number):
            return go_b64decode(value)
        if isinstance(value, list):  # Go's encoding/json also fills a []byte from an array of numbers
            return bytes(_byte(v) for v in value)
        raise _type_error(value, "[]uint8")
    raise DecodeError(f"unsupported field type for {field.name}")  # pragma: no cover - not in etcd's API


def _byte(value: Any) -> int:
    if not isinstance(value, _Number):
        raise _type_error(value, "uint8")
    number = _in_range(value, 0, 255)
    if number is None:
        raise DecodeError(f"json: cannot unmarshal number {value} into Go value of type uint8")
    return number


def _fill(msg: Message, data: Any) -> None:
    if not isinstance(data, dict):
        raise _type_error(data, "map[string]json.RawMessage")
    desc = msg.DESCRIPTOR
    for key, value in data.items():
        field = desc.fields_by_name.get(key)
        if field is None:
            field = next((f for f in desc.fields if f.json_name == key), None)
        if field is None or value is None:
            continue  # unknown fields are ignored; null leaves the field unset (as jsonpb)
        if field.is_repeated:
            if not isinstance(value, list):
                raise _type_error(value, "[]json.RawMessage")
            target = getattr(msg, field.name)
            for item in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    if item is None:
                        target.add()
                        continue
                    _fill(target.add(), item)
                elif item is not None:
                    target.append(_scalar(field, item))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, field.name)
            _fill(sub, value)
            sub.SetInParent()
        else:
            setattr(msg, field.name, _scalar(field, value))


def parse_message(data: Any, cls: type[Message]) -> Message:
    """``data`` (from :func:`loads`) as a ``cls`` message; raises :class:`DecodeError` as etcd would refuse it."""
    msg = cls()
    if data is None:
        return msg
    _fill(msg, data)
    return msg

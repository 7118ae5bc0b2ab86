"""Strict input on every surface (issue 22, item 5).

* The JSON gateway decodes as etcd 3.4's does (strict base64, typed numbers, named enums) and refuses bad input
  with etcd's 400 answer, byte for byte (differential test against a real etcd 3.4).
* The gRPC side answers undecodable request bytes as grpc-go does (INTERNAL, ``grpc: error unmarshalling
  request: ...``) and unknown methods with grpc-go's UNIMPLEMENTED text, never a Python class name.
* A property-based fuzz run (hypothesis) sends random and mutated requests to both surfaces of one member for a
  bounded time and checks: nothing crashes or hangs, a refused request changes no data (revision and HashKV
  unchanged) and the member still answers afterwards. ``QUORUMKV_FUZZ_SECONDS`` sets the time per surface
  (default 6 s; docs/reliability.md records longer runs).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.jsonpb import DecodeError, go_b64decode, loads, parse_message
from quorumkv.testing.processes import ETCD_BIN, ServerProcess, free_port, start_etcd, start_quorumkv

FUZZ_SECONDS = float(os.environ.get("QUORUMKV_FUZZ_SECONDS", "6"))
#: Python text that must never reach a client.
PYTHON_TELLTALES = ("Traceback", "<class", "Error parsing message", "object has no attribute", "Exception",
                    "JSONDecodeError", "Expecting value", "quorumkv: internal error")


# ------------------------------------------------------------------------------------------- unit: decoding


@pytest.mark.parametrize(("text", "expected"), [
    # Go's base64.StdEncoding as etcd 3.4's gateway answers (each checked with curl against etcd 3.4.23)
    ("!!!", "illegal base64 data at input byte 0"), ("YQ", "illegal base64 data at input byte 0"),
    ("YQ=", "illegal base64 data at input byte 3"), ("YQ===", "illegal base64 data at input byte 4"),
    ("YWJjZA", "illegal base64 data at input byte 4"), ("Y", "illegal base64 data at input byte 0"),
    ("YQ==YQ==", "illegal base64 data at input byte 4"), ("=", "illegal base64 data at input byte 0"),
    ("YW Jj", "illegal base64 data at input byte 2"), ("YWJj-_", "illegal base64 data at input byte 4"),
    ("YWI==", "illegal base64 data at input byte 4"), ("YWJjZA=x", "illegal base64 data at input byte 6"),
    ("YWJj\r\nZA==", b"abcd"), ("YW\nJj", b"abc"), ("YWI=", b"ab"), ("YQ=\n=", b"a"), ("", b""),
])
def test_base64_as_go_decodes_it(text: str, expected: str | bytes) -> None:
    if isinstance(expected, bytes):
        assert go_b64decode(text) == expected
    else:
        with pytest.raises(DecodeError) as info:
            go_b64decode(text)
        assert str(info.value) == expected


@given(st.binary(max_size=64))
def test_base64_round_trips(data: bytes) -> None:
    assert go_b64decode(base64.b64encode(data).decode()) == data


@given(st.text(alphabet="ABCDabcd0189+/=-_ \n\r!", max_size=16))
def test_base64_accepts_exactly_padded_standard_base64(text: str) -> None:
    stripped = text.replace("\n", "").replace("\r", "")
    try:
        expected: bytes | None = base64.b64decode(stripped, validate=True)
    except ValueError:
        expected = None
    if expected is not None and len(stripped) % 4 == 0:
        assert go_b64decode(text) == expected
    else:
        with pytest.raises(DecodeError, match=r"^illegal base64 data at input byte \d+$"):
            go_b64decode(text)


@pytest.mark.parametrize(("body", "expected"), [
    ('{"key":"YQ==","limit":"abc"}', "invalid character 'a' looking for beginning of value"),
    ('{"key":"YQ==","limit":1.5}', "json: cannot unmarshal number 1.5 into Go value of type int64"),
    ('{"key":"YQ==","limit":"99999999999999999999"}',
     "json: cannot unmarshal number 99999999999999999999 into Go value of type int64"),
    ('{"key":"YQ==","sort_order":"BOGUS"}', 'unknown value "BOGUS" for enum etcdserverpb.RangeRequest_SortOrder'),
    ('{"key":"YQ==","keys_only":"yes"}', "json: cannot unmarshal string into Go value of type bool"),
    ('{"key":1}', "json: cannot unmarshal number into Go value of type []uint8"),
    ("[1]", "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
    ("notjson", "invalid character 'o' in literal null (expecting 'u')"),
    ('{"key":"YQ==","limit":' + "9" * 5000 + "}",  # longer than Python's int() takes: still Go's answer
     "json: cannot unmarshal number " + "9" * 5000 + " into Go value of type int64"),
    ('{"key":"YQ==","limit":"-"}', "invalid character ' ' in numeric literal"),
])
def test_json_errors_in_gos_words(body: str, expected: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_message(loads(body), pb.RangeRequest)
    assert str(info.value) == expected


def test_json_accepts_what_jsonpb_accepts() -> None:
    msg = parse_message(loads('{"key":"YQ==","rangeEnd":"Yg==","limit":"5","sort_order":"DESCEND",'
                              '"sort_target":2,"keys_only":true,"unknown":{"x":[1]},"revision":null}'),
                        pb.RangeRequest)
    assert msg == pb.RangeRequest(key=b"a", range_end=b"b", limit=5, sort_order=pb.RangeRequest.DESCEND,
                                  sort_target=pb.RangeRequest.CREATE, keys_only=True)
    txn = parse_message(loads('{"compare":[{"key":"YQ==","target":"VALUE","result":"EQUAL","value":"eA=="}],'
                              '"success":[{"request_put":{"key":"YQ==","value":"eQ=="}}]}'), pb.TxnRequest)
    assert txn.compare[0].WhichOneof("target_union") == "value" and txn.success[0].request_put.value == b"y"


# ------------------------------------------------------------------------------------ differential: etcd


def _post(port: int, path: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


BAD_BODIES: list[tuple[str, str]] = [
    ("/v3/kv/range", '{"key":"!!!"}'),
    ("/v3/kv/range", '{"key":"YQ"}'),
    ("/v3/kv/range", '{"key":"YQ==","limit":"abc"}'),
    ("/v3/kv/range", '{"key":"YQ==","sort_order":"BOGUS"}'),
    ("/v3/kv/range", '{"key":"YQ==","limit":1.5}'),
    ("/v3/kv/range", '{"key":1}'),
    ("/v3/kv/range", "[1]"),
    ("/v3/kv/range", "notjson"),
    ("/v3/kv/range", '{"key":"YW Jj"}'),
    ("/v3/kv/range", '{"key":"YQ==","keys_only":"yes"}'),
    ("/v3/kv/put", '{"key":"YQ==","value":"x"}'),
    ("/v3/kv/put", '{"key":"YQ==","lease":"-"}'),
    ("/v3/kv/txn", '{"compare":[{"key":"YQ==","target":"NOPE"}]}'),
    ("/v3/kv/txn", '{"success":{"request_put":{}}}'),
    ("/v3/kv/txn", '{"success":[{"request_put":{"key":"YQ==","value":"!"}}]}'),
    ("/v3/kv/deleterange", '{"key":"YQ==","prev_kv":1}'),
    ("/v3/kv/compaction", '{"revision":"1e3"}'),
    ("/v3/lease/grant", '{"TTL":"ten"}'),
    ("/v3/lease/revoke", '{"ID":true}'),
    ("/v3/kv/range", '{"key":"YQ==",}'),
    ("/v3/kv/range", '{"key" "YQ=="}'),
]


@pytest.fixture(scope="module")
def gateway_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[ServerProcess, int]]]:
    if shutil.which(ETCD_BIN) is None:
        pytest.skip("etcd 3.4 not on PATH")
    base = tmp_path_factory.mktemp("strict")
    http_port = free_port()
    etcd = start_etcd(base / "etcd")
    try:
        qkv = start_quorumkv(base / "q", extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{http_port}"])
    except BaseException:
        etcd.stop()
        raise
    try:
        yield {"etcd": (etcd, etcd.client_port), "quorumkv": (qkv, http_port)}
    finally:
        qkv.stop()
        etcd.stop()


@pytest.mark.interop
def test_gateway_refuses_bad_bodies_as_etcd_does(gateway_pair: dict[str, tuple[ServerProcess, int]]) -> None:
    for path, body in BAD_BODIES:
        answers = {kind: _post(port, path, body.encode()) for kind, (_, port) in gateway_pair.items()}
        assert answers["quorumkv"] == answers["etcd"], (path, body)
        assert answers["etcd"][0] == 400, (path, body, answers["etcd"])


def _raw_unary(target: str, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        try:
            call(payload, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.interop
def test_grpc_undecodable_bytes_and_unknown_methods_as_etcd(
        gateway_pair: dict[str, tuple[ServerProcess, int]]) -> None:
    targets = {kind: f"127.0.0.1:{proc.client_port}" for kind, (proc, _) in gateway_pair.items()}
    for method in ("/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.Lease/LeaseGrant",
                   "/etcdserverpb.Maintenance/Status"):
        for payload in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x12"):
            answers = {kind: _raw_unary(t, method, payload) for kind, t in targets.items()}
            for code, details in answers.values():
                # grpc-go's text for the cause varies (unexpected EOF, ...); the code and prefix are fixed
                assert code == grpc.StatusCode.INTERNAL, (method, payload, answers)
                assert details.startswith("grpc: error unmarshalling request: "), (method, payload, answers)
    for method in ("/etcdserverpb.KV/Nope", "/etcdserverpb.Nope/Range"):
        answers = {kind: _raw_unary(t, method, b"") for kind, t in targets.items()}
        assert answers["quorumkv"] == answers["etcd"] and answers["etcd"][0] == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------------------------------------ fuzzing

#: (method path, gateway path, a valid request): the services a fuzzer may call without changing the cluster's
#: shape (no member, auth or alarm calls: a random valid one could legitimately break the member for the rest).
SEEDS: list[tuple[str, str, Message]] = [
    ("/etcdserverpb.KV/Range", "/v3/kv/range", pb.RangeRequest(key=b"k1", range_end=b"k9", limit=3)),
    ("/etcdserverpb.KV/Put", "/v3/kv/put", pb.PutRequest(key=b"fz", value=b"v", prev_kv=True)),
    ("/etcdserverpb.KV/DeleteRange", "/v3/kv/deleterange", pb.DeleteRangeRequest(key=b"fz", range_end=b"g")),
    ("/etcdserverpb.KV/Txn", "/v3/kv/txn", pb.TxnRequest(
        compare=[pb.Compare(key=b"k1", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"v1")],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"fz", value=b"t"))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k1"))])),
    ("/etcdserverpb.KV/Compact", "/v3/kv/compaction", pb.CompactionRequest(revision=1)),
    ("/etcdserverpb.Lease/LeaseGrant", "/v3/lease/grant", pb.LeaseGrantRequest(TTL=60)),
    ("/etcdserverpb.Lease/LeaseRevoke", "/v3/lease/revoke", pb.LeaseRevokeRequest(ID=7)),
    ("/etcdserverpb.Lease/LeaseTimeToLive", "/v3/lease/timetolive", pb.LeaseTimeToLiveRequest(ID=7, keys=True)),
    ("/etcdserverpb.Maintenance/Status", "/v3/maintenance/status", pb.StatusRequest()),
    ("/etcdserverpb.Maintenance/HashKV", "/v3/maintenance/hash", pb.HashKVRequest(revision=0)),
]


def _mutate(data: st.DataObject, raw: bytes) -> bytes:
    ops = data.draw(st.lists(st.sampled_from(["flip", "cut", "insert", "dup"]), min_size=1, max_size=4))
    out = bytearray(raw)
    for op in ops:
        at = data.draw(st.integers(0, len(out)))
        if op == "flip" and out:
            at = min(at, len(out) - 1)
            out[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            out += out[:at]
    return bytes(out)


def _json_seed(msg: Message) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                       st.text(max_size=12), st.sampled_from(["YQ==", "!!", "DESCEND", "BOGUS", "1e3", "-1"]))
_json_value = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)), max_leaves=8)


@pytest.fixture(scope="module")
def fuzz_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    http_port = free_port()
    server = start_quorumkv(tmp_path_factory.mktemp("fuzz"),
                            extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{http_port}"])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.client_port}") as channel:
            put = channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=pb.PutRequest.SerializeToString,
                                      response_deserializer=pb.PutResponse.FromString)
            for i in range(1, 6):
                put(pb.PutRequest(key=b"k%d" % i, value=b"v%d" % i), timeout=20)
        yield server, http_port
    finally:
        server.stop()


class _State:
    """(revision, HashKV hash, compact revision): a refused request must leave it as it was."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.hash_kv = channel.unary_unary("/etcdserverpb.Maintenance/HashKV",
                                           request_serializer=pb.HashKVRequest.SerializeToString,
                                           response_deserializer=pb.HashKVResponse.FromString)

    def read(self) -> tuple[int, int, int]:
        resp = self.hash_kv(pb.HashKVRequest(), timeout=20)
        return resp.header.revision, resp.hash, resp.compact_revision


#: Examples per surface: about what FUZZ_SECONDS holds at ~100 ms per example (two HashKV reads and the call);
#: the time budget stops a slow run early. Hypothesis draws every example, so this bounds the run's length.
_EXAMPLES = max(20, int(FUZZ_SECONDS * 10))
_DEADLINES: dict[str, float] = {}


def _time_left(surface: str) -> bool:
    """True while ``surface``'s fuzzing budget lasts (its clock starts with its first example)."""
    deadline = _DEADLINES.setdefault(surface, time.monotonic() + FUZZ_SECONDS)
    return time.monotonic() < deadline


@contextlib.contextmanager
def _shrink_freely(surface: str) -> Iterator[None]:
    """After a failure, lift the time budget so that hypothesis can replay and shrink it."""
    try:
        yield
    except BaseException:
        _DEADLINES[surface] = float("inf")
        raise


@pytest.mark.timeout(int(FUZZ_SECONDS * 3) + 180)  # the budget, the examples' tail and the fixture
@settings(max_examples=_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_grpc_surface(fuzz_member: tuple[ServerProcess, int], data: st.DataObject) -> None:
    server, _ = fuzz_member
    method, _, seed = data.draw(st.sampled_from(SEEDS))
    payload = (_mutate(data, seed.SerializeToString()) if data.draw(st.booleans())
               else data.draw(st.binary(max_size=64)))
    watch_payload = data.draw(st.one_of(st.none(), st.binary(max_size=32)))
    if not _time_left("grpc"):
        return  # everything is drawn first, so the data a run draws never depends on the clock
    with _shrink_freely("grpc"), grpc.insecure_channel(f"127.0.0.1:{server.client_port}") as channel:
        state = _State(channel)
        before = state.read()
        try:
            channel.unary_unary(method)(payload, timeout=15)
            refused = False
        except grpc.RpcError as exc:
            assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, ("hang", method, payload)
            assert exc.code() != grpc.StatusCode.UNKNOWN or "started members" in (exc.details() or ""), \
                (method, payload, exc.details())
            assert not any(t in (exc.details() or "") for t in PYTHON_TELLTALES), (method, payload, exc.details())
            refused = True
        if refused:
            assert state.read() == before, (method, payload)
        # the watch stream too: one random message, then the stream answers or ends with an error
        if watch_payload is not None:
            watch = channel.stream_stream("/etcdserverpb.Watch/Watch")
            stream = watch(iter([watch_payload]), timeout=5)
            try:
                next(stream)
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                assert not any(t in (exc.details() or "") for t in PYTHON_TELLTALES), exc.details()
            except StopIteration:
                pass
            finally:
                stream.cancel()


@pytest.mark.timeout(int(FUZZ_SECONDS * 3) + 180)  # the budget, the examples' tail and the fixture
@settings(max_examples=_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_http_surface(fuzz_member: tuple[ServerProcess, int], data: st.DataObject) -> None:
    server, http_port = fuzz_member
    _, path, seed = data.draw(st.sampled_from(SEEDS))
    body_obj = _json_seed(seed)
    kind = data.draw(st.sampled_from(["value", "field", "bytes"]))
    if kind == "value":
        body = json.dumps(data.draw(_json_value)).encode()
    elif kind == "field":
        field = data.draw(st.sampled_from(sorted(body_obj) or ["key"]))
        body_obj[field] = data.draw(_json_value)
        body = json.dumps(body_obj).encode()
    else:
        body = _mutate(data, json.dumps(body_obj).encode())
    if not _time_left("http"):
        return
    with _shrink_freely("http"), grpc.insecure_channel(f"127.0.0.1:{server.client_port}") as channel:
        state = _State(channel)
        before = state.read()
        try:
            status, answer = _post(http_port, path, body, timeout=15)
        except TimeoutError:
            raise AssertionError(("hang", path, body)) from None
        if status != 200:
            err = json.loads(answer)
            assert set(err) == {"error", "message", "code"}, (path, body, answer)
            assert not any(t in err["message"] for t in PYTHON_TELLTALES), (path, body, answer)
            assert state.read() == before, (path, body)


def test_the_member_still_answers_after_fuzzing(fuzz_member: tuple[ServerProcess, int]) -> None:
    server, http_port = fuzz_member
    with grpc.insecure_channel(f"127.0.0.1:{server.client_port}") as channel:
        put = channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=pb.PutRequest.SerializeToString,
                                  response_deserializer=pb.PutResponse.FromString)
        rev = put(pb.PutRequest(key=b"after", value=b"fuzz"), timeout=20).header.revision
    status, answer = _post(http_port, "/v3/kv/range", json.dumps({"key": base64.b64encode(b"after").decode()}).encode())
    assert status == 200 and json.loads(answer)["kvs"][0]["mod_revision"] == str(rev)
    assert server.alive()

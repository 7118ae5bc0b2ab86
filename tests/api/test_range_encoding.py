"""KV.Range answers encoded (``apply.encode_kvs`` + ``servicers.encoded_range_response``): the bytes are exactly
what protobuf's ``SerializeToString`` writes for the same RangeResponse, and the gateway decodes them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.servicers import EncodedMessage, _sends_encoded, encoded_range_response
from quorumkv.mvcc.store import KeyValue
from quorumkv.server.apply import encode_kvs

int64 = st.integers(-(2**63), 2**63 - 1)
key_values = st.builds(KeyValue, st.binary(min_size=1, max_size=300), int64, int64, int64,
                       st.binary(max_size=5000), int64)


@settings(max_examples=200, deadline=None)
@given(kvs=st.lists(key_values, max_size=12), keys_only=st.booleans(), revision=int64, count=int64,
       more=st.booleans(), with_header=st.booleans(), member_id=st.integers(0, 2**64 - 1))
def test_encoded_range_response_is_what_protobuf_writes(kvs: list[KeyValue], keys_only: bool, revision: int,
                                                        count: int, more: bool, with_header: bool,
                                                        member_id: int) -> None:
    head = pb.RangeResponse(count=count, more=more)
    if with_header:
        head.header.revision = revision
        head.header.member_id = member_id
    whole = pb.RangeResponse()
    whole.CopyFrom(head)
    for kv in kvs:
        whole.kvs.add(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                      version=kv.version, value=b"" if keys_only else kv.value, lease=kv.lease)
    encoded = encoded_range_response(head, encode_kvs(kvs, keys_only=keys_only))
    assert encoded.data == whole.SerializeToString()
    assert encoded.message() == whole


def test_the_serializer_passes_encoded_answers_through() -> None:
    send = _sends_encoded(pb.RangeResponse.SerializeToString)
    resp = pb.RangeResponse(count=3)
    assert send(resp) == resp.SerializeToString()
    encoded = EncodedMessage(b"\x20\x07", pb.RangeResponse)
    assert send(encoded) is encoded.data
    assert encoded.message() == pb.RangeResponse(count=7)

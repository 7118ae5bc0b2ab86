"""Binary encoding of messages, entries and persistent state: exact round trips, loud failures."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DecodeError,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    decode_conf_change,
    decode_entry,
    decode_hard_state,
    decode_message,
    decode_snapshot,
    describe_message,
    encode_conf_change,
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.builds(NodeId, u64)
terms = st.builds(Term, u64)
indexes = st.builds(Index, u64)
blobs = st.binary(max_size=64)

entries = st.builds(Entry, terms, indexes, st.sampled_from(EntryType), blobs)
conf_states = st.builds(ConfState, st.lists(ids, max_size=5).map(tuple), st.lists(ids, max_size=3).map(tuple))
snapshots = st.builds(Snapshot, blobs, st.builds(SnapshotMetadata, conf_states, indexes, terms))
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=ids,
    frm=ids,
    term=terms,
    log_term=terms,
    index=indexes,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=indexes,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=indexes,
    context=blobs,
    snap_offset=u64,
    snap_total=u64,
)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@given(entries)
def test_entry_round_trip(e: Entry) -> None:
    assert decode_entry(encode_entry(e)) == e


@given(st.builds(HardState, terms, ids, indexes))
def test_hard_state_round_trip(hs: HardState) -> None:
    assert decode_hard_state(encode_hard_state(hs)) == hs


@given(snapshots)
def test_snapshot_round_trip(s: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(s)) == s


@given(st.builds(ConfChange, st.sampled_from(ConfChangeType), ids, blobs))
def test_conf_change_round_trip(cc: ConfChange) -> None:
    assert decode_conf_change(encode_conf_change(cc)) == cc


@settings(max_examples=50, deadline=None)
@given(messages, st.data())
def test_truncated_message_raises_decode_error(m: Message, data: st.DataObject) -> None:
    buf = encode_message(m)
    cut = data.draw(st.integers(min_value=0, max_value=len(buf) - 1))
    with pytest.raises(DecodeError):
        decode_message(buf[:cut])


def test_trailing_bytes_are_rejected() -> None:
    buf = encode_message(Message(MessageType.HEARTBEAT, NodeId(1), NodeId(2), Term(3)))
    with pytest.raises(DecodeError):
        decode_message(buf + b"x")


def test_encoding_is_compact() -> None:
    e = Entry(Term(5), Index(10), EntryType.NORMAL, b"hello")
    assert len(encode_entry(e)) == 21 + 5
    hb = Message(MessageType.HEARTBEAT, NodeId(1), NodeId(2), Term(3))
    assert len(encode_message(hb)) < 100


def test_values_are_frozen_and_slotted() -> None:
    e = Entry(Term(1), Index(1))
    with pytest.raises(AttributeError):
        e.term = Term(2)  # type: ignore[misc]
    assert not hasattr(e, "__dict__")
    assert not hasattr(Message(MessageType.APP), "__dict__")


def test_describe_message_is_readable() -> None:
    m = Message(
        MessageType.APP,
        NodeId(1),
        NodeId(2),
        Term(3),
        Term(2),
        Index(5),
        (Entry(Term(3), Index(6), EntryType.NORMAL, b"x"),),
        Index(5),
    )
    assert describe_message(m) == "2->1 MsgApp Term:3 Log:2/5 Commit:5 Entries:[3/6 EntryNormal 'x']"

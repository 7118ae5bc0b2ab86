"""storage.bbolt: random bucket/key spaces round-trip write -> read; damaged files are refused clearly."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorumkv.storage import bbolt
from quorumkv.storage.bbolt import BboltError, BboltFile, read_db, write_db

PAGE_SIZES = (512, 1024, 4096)

keys = st.binary(min_size=1, max_size=40)
#: Mostly small values; some larger than a page (overflow pages) at every page size tested.
values = st.one_of(st.binary(max_size=30), st.binary(min_size=600, max_size=9000))
bucket_space = st.dictionaries(
    st.binary(min_size=1, max_size=12),
    st.dictionaries(keys, values, max_size=60),  # empty buckets included
    max_size=6,
)


def _sorted(space: dict[bytes, dict[bytes, bytes]]) -> dict[bytes, list[tuple[bytes, bytes]]]:
    return {name: sorted(items.items()) for name, items in space.items()}


def _page_types(path: Path) -> set[int]:
    """Flags of every page header at a page boundary below the high-water mark (overflow pages skipped)."""
    with BboltFile(path) as db:
        data = path.read_bytes()
        flags = set()
        pgid = 2
        while pgid < db.high_water_pgid:
            _, f, _, overflow = struct.unpack_from("<QHHI", data, pgid * db.page_size_bytes)
            flags.add(f)
            pgid += overflow + 1
        return flags


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=bucket_space, page_size=st.sampled_from(PAGE_SIZES))
def test_random_bucket_spaces_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                         space: dict[bytes, dict[bytes, bytes]], page_size: int) -> None:
    path = tmp_path_factory.mktemp("bbolt") / "db"
    expected = _sorted(space)
    size = write_db(path, expected, page_size_bytes=page_size, txid=7)
    assert size == path.stat().st_size and size % page_size == 0
    assert read_db(path) == expected
    with BboltFile(path) as db:
        assert db.bucket_names() == sorted(expected)
        assert db.meta.txid == 7 and db.page_size_bytes == page_size


@settings(max_examples=8, deadline=None)
@given(count=st.integers(min_value=300, max_value=1500), key_size=st.integers(min_value=1, max_value=300))
def test_many_keys_need_branch_pages(tmp_path_factory: pytest.TempPathFactory, count: int, key_size: int) -> None:
    path = tmp_path_factory.mktemp("bbolt") / "db"
    items = sorted((i.to_bytes(4, "big") + b"k" * key_size, str(i).encode()) for i in range(count))
    write_db(path, {b"key": items, b"empty": []}, page_size_bytes=1024)
    assert read_db(path) == {b"key": items, b"empty": []}
    assert bbolt.FLAG_BRANCH in _page_types(path)


def test_big_values_use_overflow_pages_and_small_buckets_are_inline(tmp_path: Path) -> None:
    path = tmp_path / "db"
    big = bytes(range(256)) * 100  # 25,600 bytes: a leaf of 7 pages of 4 KiB
    space = {b"big": [(b"a", big), (b"b", b"")], b"small": [(b"k", b"v")], b"none": []}
    write_db(path, space)
    assert read_db(path) == space
    overflows = []
    with BboltFile(path) as db:
        data = path.read_bytes()
        pgid = 2
        while pgid < db.high_water_pgid:
            overflow = struct.unpack_from("<QHHI", data, pgid * 4096)[3]
            overflows.append(overflow)
            pgid += overflow + 1
        assert pgid == db.high_water_pgid
    assert max(overflows) == 6
    # small and empty buckets live inline in the root bucket's leaf: they take no page of their own
    write_db(tmp_path / "only-big.db", {b"big": space[b"big"]})
    assert (tmp_path / "only-big.db").stat().st_size == path.stat().st_size


def test_streamed_into_a_file_object_and_page_size_checked(tmp_path: Path) -> None:
    buf = io.BytesIO()
    buf.write(b"")
    size = write_db(buf, {b"b": iter([(b"x", b"1"), (b"y", b"2")])})
    (tmp_path / "db").write_bytes(buf.getvalue())
    assert size == len(buf.getvalue()) and read_db(tmp_path / "db") == {b"b": [(b"x", b"1"), (b"y", b"2")]}
    with pytest.raises(BboltError, match="page size"):
        write_db(io.BytesIO(), {}, page_size_bytes=3000)


@pytest.mark.parametrize("items, problem", [
    ([(b"b", b"1"), (b"a", b"2")], "not strictly ascending"),
    ([(b"a", b"1"), (b"a", b"2")], "not strictly ascending"),
    ([(b"", b"1")], "key of 0 bytes"),
])
def test_writer_refuses_what_bbolt_cannot_hold(tmp_path: Path, items: list[tuple[bytes, bytes]],
                                               problem: str) -> None:
    with pytest.raises(BboltError, match=problem):
        write_db(tmp_path / "db", {b"b": items})


# -- damaged files ---------------------------------------------------------------------------------------------


@pytest.fixture
def good_db(tmp_path: Path) -> Path:
    path = tmp_path / "good.db"
    items = [(f"k{i:05d}".encode(), b"v" * (i % 50)) for i in range(2000)]
    write_db(path, {b"key": items, b"meta": [(b"m", b"1")]})
    assert len(read_db(path)[b"key"]) == 2000
    return path


def _damaged(good: Path, name: str, offset: int, new: bytes | None = None, cut_to: int | None = None) -> Path:
    data = bytearray(good.read_bytes())
    if cut_to is not None:
        data = data[:cut_to]
    if new is not None:
        data[offset:offset + len(new)] = new
    bad = good.with_name(name)
    bad.write_bytes(bytes(data))
    return bad


def test_bad_meta_checksum_is_refused(good_db: Path) -> None:
    for page in (0, 1):
        txid_at = page * 4096 + 16 + 48  # the meta's txid field
        bad = _damaged(good_db, f"meta{page}.db", txid_at, b"\x99")
        with pytest.raises(BboltError, match=rf"{bad.name}.*meta page {page} fails its checksum"):
            read_db(bad)


def test_truncated_file_is_refused(good_db: Path) -> None:
    size = good_db.stat().st_size
    for cut in (10, 100, 4096 + 50, size - 4096, size - 1):
        bad = _damaged(good_db, f"cut{cut}.db", 0, cut_to=cut)
        with pytest.raises(BboltError, match=rf"{bad.name}.*(truncated|too short|missing)"):
            read_db(bad)


def test_not_bbolt_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + bytes(8192))
    with pytest.raises(BboltError, match="not a bbolt file"):
        read_db(junk)
    with pytest.raises(BboltError, match="cannot open"):
        read_db(tmp_path / "missing.db")


def test_damaged_pages_are_refused(good_db: Path) -> None:
    with BboltFile(good_db) as db:
        root = db.meta.root_pgid
        last = db.high_water_pgid
    # a leaf page's header id overwritten; a leaf element pointing far outside its page; the root page's
    # flags made a freelist's; two keys of a leaf swapped out of order
    leaf_at = 2 * 4096
    cases = {
        "id.db": (leaf_at, struct.pack("<Q", 12345), r"header says page 12345"),
        "elem.db": (leaf_at + 16 + 4, struct.pack("<I", 1 << 30), r"points outside the page"),
        "flags.db": (root * 4096 + 8, struct.pack("<H", bbolt.FLAG_FREELIST), r"flags 0x10"),
    }
    for name, (offset, new, problem) in cases.items():
        with pytest.raises(BboltError, match=problem):
            read_db(_damaged(good_db, name, offset, new))
    data = good_db.read_bytes()
    first = data.index(b"k00000")
    swapped = _damaged(good_db, "order.db", first, b"k00001")
    with pytest.raises(BboltError, match="out of order"):
        read_db(swapped)
    assert last > root


def test_a_page_neither_used_nor_free_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "leak.db"
    write_db(path, {b"b": [(b"k", b"v")]})
    data = bytearray(path.read_bytes()) + bytes(4096)  # one more page, counted by both metas but unreferenced
    for page in (0, 1):
        at = page * 4096 + 16
        fields = list(struct.unpack_from("<IIIIQQQQQQ", data, at))
        fields[7] += 1
        fields[9] = bbolt.fnv64a(struct.pack("<IIIIQQQQQ", *fields[:9]))
        struct.pack_into("<IIIIQQQQQQ", data, at, *fields)
    path.write_bytes(bytes(data))
    with pytest.raises(BboltError, match="neither in use nor free"):
        read_db(path)


_FUZZ_SPACE = {
    b"big": [(b"a", b"x" * 3000), (b"b", b"y")],
    b"key": [(b"%05d" % i, b"v" * (i % 7)) for i in range(120)],
    b"small": [(b"k", b"v")],
    b"z": [],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 20), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 20)))
def test_damaged_bytes_are_refused_or_read_never_crash(tmp_path: Path, flips: list[tuple[int, int]],
                                                       cut: int | None) -> None:
    """Any damage: either the data still reads (damage inside a value) or one BboltError, never another
    exception, a hang or unbounded recursion."""
    good = tmp_path / "fuzz-good.db"
    if not good.exists():
        write_db(good, _FUZZ_SPACE, page_size_bytes=1024)
    data = bytearray(good.read_bytes())
    for at, xor in flips:
        data[at % len(data)] ^= xor
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    bad = tmp_path / "fuzz-bad.db"
    bad.write_bytes(bytes(data))
    try:
        got = read_db(bad)
    except BboltError as exc:
        assert str(bad) in str(exc)
    else:  # damage that bbolt's layout cannot notice (inside a value, a shortened inline bucket) reads as data
        assert all(isinstance(k, bytes) and isinstance(v, bytes) for items in got.values() for k, v in items)


def test_keys_bigger_than_a_page_make_overflowing_branch_pages(tmp_path: Path) -> None:
    path = tmp_path / "db"
    items = [(bytes([i]) * bbolt.MAX_KEY_BYTES, b"v%d" % i) for i in range(1, 6)]
    write_db(path, {b"b": items}, page_size_bytes=512)
    assert read_db(path) == {b"b": items}
    assert bbolt.FLAG_BRANCH in _page_types(path)
    with pytest.raises(BboltError, match="key of 32769 bytes"):
        write_db(tmp_path / "too-big.db", {b"b": [(b"k" * (bbolt.MAX_KEY_BYTES + 1), b"")]})

"""bbolt database files (etcd's storage engine): a reader and a writer in pure Python.

Written from bbolt's documented file layout (all integers little-endian, as bbolt writes them on x86-64/arm64):

- the file is a sequence of pages of ``page_size_bytes``; every page starts with a 16-byte header
  ``id u64, flags u16, count u16, overflow u32``; a page with ``overflow`` = n spans n + 1 consecutive pages;
- pages 0 and 1 are meta pages (flag 0x04); after the header: ``magic u32 (0xED0CDAED), version u32 (2),
  page_size u32, flags u32, root bucket (root pgid u64, sequence u64), freelist pgid u64, high-water pgid u64,
  txid u64, checksum u64`` where the checksum is FNV-64a of the 56 bytes before it. The valid meta with the
  higher txid is the current one;
- branch pages (0x01) hold ``count`` elements ``pos u32, ksize u32, pgid u64`` and leaf pages (0x02) hold
  elements ``flags u32, pos u32, ksize u32, vsize u32``; ``pos`` counts from the element's own first byte to
  its key (a leaf value follows its key);
- a bucket is a leaf value (element flag 0x01) holding ``root pgid u64, sequence u64``; root 0 means an inline
  bucket whose leaf page (header + elements) follows those 16 bytes. The meta's root bucket lists the
  top-level buckets;
- the freelist page (0x10) lists free page ids as u64; a count of 0xFFFF means the first u64 is the count.

Invariants kept by :func:`write_db`: keys inside a bucket and bucket names are strictly ascending and non-empty;
every page below the high-water mark is reachable from the meta or listed free (none are free in a new file);
both meta pages describe the same tree (page 0 with ``txid``, page 1 with ``txid - 1``, as bbolt's own
copy-out does), so the file opens with either. Only top-level buckets are supported (all etcd uses).
:class:`BboltFile` checks the metas, every page header, element bounds, key order and the freelist before
returning data, and raises :class:`BboltError` naming the file and the problem.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

MAGIC = 0xED0CDAED
VERSION = 2
DEFAULT_PAGE_SIZE_BYTES = 4096
#: Largest key bbolt accepts (bytes) and largest value.
MAX_KEY_BYTES = 32768
MAX_VALUE_BYTES = (1 << 31) - 2

FLAG_BRANCH = 0x01
FLAG_LEAF = 0x02
FLAG_META = 0x04
FLAG_FREELIST = 0x10
#: Leaf element flag: the value is a bucket.
ELEMENT_BUCKET = 0x01
#: Meta freelist pgid when the freelist is not stored (bbolt's NoFreelistSync).
NO_FREELIST = 0xFFFF_FFFF_FFFF_FFFF

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid, sum
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
_U64 = struct.Struct("<Q")
_META_SUMMED_BYTES = _META.size - 8
#: A bucket is written inline (inside its parent's leaf) when its page would be at most page_size / 4 bytes.
_INLINE_RATIO = 4
_MIN_PAGE_SIZE_BYTES = 512
#: Branch levels a reader follows at most (a bbolt tree of 2^64 keys is far shallower; more means a damaged file).
_MAX_TREE_DEPTH = 64
_MAX_PAGE_SIZE_BYTES = 65536

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_U64_MASK = 0xFFFF_FFFF_FFFF_FFFF


class BboltError(ValueError):
    """A bbolt file that cannot be read (damaged, truncated, not bbolt) or data that cannot be written."""


def fnv64a(data: bytes) -> int:
    """FNV-1a, 64-bit (the meta page checksum)."""
    h = _FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV64_PRIME) & _U64_MASK
    return h


@dataclass(frozen=True)
class Meta:
    """One meta page's fields."""

    page_id: int
    page_size_bytes: int
    flags: int
    root_pgid: int
    root_sequence: int
    freelist_pgid: int
    high_water_pgid: int
    txid: int


def _pack_meta(page_id: int, page_size_bytes: int, root_pgid: int, freelist_pgid: int, high_water_pgid: int,
               txid: int) -> bytes:
    fields = (MAGIC, VERSION, page_size_bytes, 0, root_pgid, 0, freelist_pgid, high_water_pgid, txid)
    summed = _META.pack(*fields, 0)[:_META_SUMMED_BYTES]
    body = _META.pack(*fields, fnv64a(summed))
    page = _PAGE_HEADER.pack(page_id, FLAG_META, 0, 0) + body
    return page + bytes(page_size_bytes - len(page))


# -- writer ------------------------------------------------------------------------------------------------------


def _leaf_body(items: list[tuple[int, bytes, bytes]]) -> bytes:
    """Elements then key/value data of a leaf page; ``items`` are (element flags, key, value)."""
    count = len(items)
    elements = bytearray()
    data = bytearray()
    for i, (flags, key, value) in enumerate(items):
        pos = (count - i) * _LEAF_ELEMENT.size + len(data)
        elements += _LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
        data += key
        data += value
    return bytes(elements + data)


def _branch_body(children: list[tuple[bytes, int]]) -> bytes:
    count = len(children)
    elements = bytearray()
    data = bytearray()
    for i, (key, pgid) in enumerate(children):
        pos = (count - i) * _BRANCH_ELEMENT.size + len(data)
        elements += _BRANCH_ELEMENT.pack(pos, len(key), pgid)
        data += key
    return bytes(elements + data)


class _PageWriter:
    """Appends pages to ``out`` from pgid 2 on (0 and 1 are the metas, written last by ``finish``)."""

    def __init__(self, out: BinaryIO, page_size_bytes: int) -> None:
        self.out = out
        self.page_size_bytes = page_size_bytes
        self.start = out.tell()
        self.next_pgid = 2
        out.write(bytes(2 * page_size_bytes))

    def write_page(self, flags: int, count: int, body: bytes) -> int:
        """Write one page (with overflow pages if ``body`` needs them); returns its pgid."""
        size = _PAGE_HEADER.size + len(body)
        pages = -(-size // self.page_size_bytes)
        pgid = self.next_pgid
        self.out.write(_PAGE_HEADER.pack(pgid, flags, count, pages - 1))
        self.out.write(body)
        self.out.write(bytes(pages * self.page_size_bytes - size))
        self.next_pgid += pages
        return pgid

    def write_tree(self, items: Iterable[tuple[int, bytes, bytes]]) -> int:
        """Leaf pages for ``items`` (sorted), then branch levels above them; returns the root pgid."""
        capacity = self.page_size_bytes - _PAGE_HEADER.size
        level: list[tuple[bytes, int]] = []
        page: list[tuple[int, bytes, bytes]] = []
        used = 0
        for item in items:
            size = _LEAF_ELEMENT.size + len(item[1]) + len(item[2])
            if page and used + size > capacity:
                level.append((page[0][1], self.write_page(FLAG_LEAF, len(page), _leaf_body(page))))
                page, used = [], 0
            page.append(item)
            used += size
        if page or not level:
            level.append((page[0][1] if page else b"", self.write_page(FLAG_LEAF, len(page), _leaf_body(page))))
        while len(level) > 1:
            parents: list[tuple[bytes, int]] = []
            group: list[tuple[bytes, int]] = []
            used = 0
            for child in level:
                size = _BRANCH_ELEMENT.size + len(child[0])
                if len(group) >= 2 and used + size > capacity:  # two at least (overflowing if keys are big):
                    # every level has at most half as many pages as the one below, so the loop ends
                    parents.append((group[0][0], self.write_page(FLAG_BRANCH, len(group), _branch_body(group))))
                    group, used = [], 0
                group.append(child)
                used += size
            parents.append((group[0][0], self.write_page(FLAG_BRANCH, len(group), _branch_body(group))))
            level = parents
        return level[0][1]

    def finish(self, root_pgid: int, txid: int) -> int:
        """Write an empty freelist and both metas; returns the file's size in bytes."""
        freelist = self.write_page(FLAG_FREELIST, 0, b"")
        end = self.out.tell()
        self.out.seek(self.start)
        for page_id, page_txid in ((0, txid), (1, txid - 1)):
            self.out.write(_pack_meta(page_id, self.page_size_bytes, root_pgid, freelist, self.next_pgid, page_txid))
        self.out.seek(end)
        return self.next_pgid * self.page_size_bytes


def _checked(bucket: bytes, items: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[int, bytes, bytes]]:
    previous: bytes | None = None
    for key, value in items:
        if not key or len(key) > MAX_KEY_BYTES:
            raise BboltError(f"bucket {bucket!r}: key of {len(key)} bytes (bbolt keys are 1-{MAX_KEY_BYTES} bytes)")
        if len(value) > MAX_VALUE_BYTES:
            raise BboltError(f"bucket {bucket!r}: value of {len(value)} bytes is larger than bbolt accepts")
        if previous is not None and key <= previous:
            raise BboltError(f"bucket {bucket!r}: keys are not strictly ascending ({previous!r} then {key!r})")
        previous = key
        yield 0, bytes(key), bytes(value)


def _bucket_value(writer: _PageWriter, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The leaf value naming bucket ``name``: inline when small, else a header pointing at its written tree."""
    limit = writer.page_size_bytes // _INLINE_RATIO
    stream = _checked(name, items)
    head: list[tuple[int, bytes, bytes]] = []
    size = _PAGE_HEADER.size
    for item in stream:
        head.append(item)
        size += _LEAF_ELEMENT.size + len(item[1]) + len(item[2])
        if size > limit:
            break
    else:
        inline = _PAGE_HEADER.pack(0, FLAG_LEAF, len(head), 0) + _leaf_body(head)
        return _BUCKET_HEADER.pack(0, 0) + inline

    def all_items() -> Iterator[tuple[int, bytes, bytes]]:
        yield from head
        yield from stream

    return _BUCKET_HEADER.pack(writer.write_tree(all_items()), 0)


def write_db(dest: str | os.PathLike[str] | BinaryIO, buckets: Mapping[bytes, Iterable[tuple[bytes, bytes]]], *,
             page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES, txid: int = 2) -> int:
    """Write a bbolt database holding ``buckets`` (top-level bucket name -> its (key, value) pairs, keys
    strictly ascending; each iterable is consumed once, lazily). ``dest`` is a path (created or truncated) or a
    seekable binary file positioned where the database starts. Returns the database's size in bytes (a whole
    number of pages). Raises BboltError for keys bbolt cannot hold or out-of-order keys."""
    if page_size_bytes & (page_size_bytes - 1) or not _MIN_PAGE_SIZE_BYTES <= page_size_bytes <= _MAX_PAGE_SIZE_BYTES:
        raise BboltError(f"page size {page_size_bytes} is not a power of two between {_MIN_PAGE_SIZE_BYTES} and "
                         f"{_MAX_PAGE_SIZE_BYTES}")
    if txid < 1:
        raise BboltError(f"txid must be at least 1, not {txid}")
    if isinstance(dest, (str, os.PathLike)):
        with open(dest, "wb+") as fh:
            return write_db(fh, buckets, page_size_bytes=page_size_bytes, txid=txid)
    writer = _PageWriter(dest, page_size_bytes)
    names = sorted(buckets)
    root_items = [(ELEMENT_BUCKET, name, _bucket_value(writer, name, buckets[name]))
                  for name in _checked_names(names)]
    root = writer.write_tree(root_items)
    return writer.finish(root, txid)


def _checked_names(names: list[bytes]) -> list[bytes]:
    for name in names:
        if not name or len(name) > MAX_KEY_BYTES:
            raise BboltError(f"bucket name of {len(name)} bytes (bbolt names are 1-{MAX_KEY_BYTES} bytes)")
    return names


# -- reader ------------------------------------------------------------------------------------------------------


class BboltFile:
    """A bbolt file opened for reading (memory-mapped). Every read checks what it touches; :meth:`check` walks
    the whole file (what ``bbolt check`` verifies: every page reachable once or free, never both)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            raise BboltError(f"cannot open bbolt file {self.path}: {exc.strerror}") from None
        with fh:
            self.file_size_bytes = os.fstat(fh.fileno()).st_size
            if self.file_size_bytes < _PAGE_HEADER.size + _META.size:
                raise self._error(f"is {self.file_size_bytes} bytes, too short to hold a meta page "
                                  "(truncated or not a bbolt file)")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.meta = self._current_meta()
        self.page_size_bytes = self.meta.page_size_bytes
        self.high_water_pgid = self.meta.high_water_pgid

    # context manager --------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> BboltFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # metas ------------------------------------------------------------------------------------------------------

    def _error(self, problem: str) -> BboltError:
        return BboltError(f"bbolt file {self.path} {problem}")

    def _meta_at(self, offset: int, page_id: int) -> Meta | str:
        """The meta page at ``offset``, or why it is not a valid one."""
        if offset + _PAGE_HEADER.size + _META.size > self.file_size_bytes:
            return f"meta page {page_id} is missing (file truncated)"
        pid, flags, _, _ = _PAGE_HEADER.unpack_from(self._map, offset)
        raw = self._map[offset + _PAGE_HEADER.size:offset + _PAGE_HEADER.size + _META.size]
        magic, version, page_size, meta_flags, root, sequence, freelist, pgid, txid, checksum = _META.unpack(raw)
        if magic != MAGIC:
            return f"meta page {page_id} has magic {magic:#x}, not bbolt's {MAGIC:#x} (not a bbolt file?)"
        if version != VERSION:
            return f"meta page {page_id} has version {version}, this reader knows bbolt version {VERSION}"
        if checksum != fnv64a(raw[:_META_SUMMED_BYTES]):
            return f"meta page {page_id} fails its checksum (damaged)"
        if pid != page_id or not flags & FLAG_META:
            return f"meta page {page_id} has page header id {pid}, flags {flags:#x}"
        if page_size & (page_size - 1) or not _MIN_PAGE_SIZE_BYTES <= page_size <= _MAX_PAGE_SIZE_BYTES:
            return f"meta page {page_id} has an impossible page size {page_size}"
        if pgid < 3 or not 2 <= root < pgid or (freelist != NO_FREELIST and not 2 <= freelist < pgid):
            return (f"meta page {page_id} is inconsistent (root page {root}, freelist page {freelist}, "
                    f"{pgid} pages)")
        return Meta(page_id, page_size, meta_flags, root, sequence, freelist, pgid, txid)

    def _current_meta(self) -> Meta:
        first = self._meta_at(0, 0)
        if isinstance(first, str):
            raise self._error(first)
        second = self._meta_at(first.page_size_bytes, 1)
        if isinstance(second, str):
            raise self._error(second)
        if first.page_size_bytes != second.page_size_bytes:
            raise self._error(f"has meta pages disagreeing on the page size ({first.page_size_bytes} and "
                              f"{second.page_size_bytes})")
        meta = first if first.txid >= second.txid else second
        needed = meta.high_water_pgid * meta.page_size_bytes
        if self.file_size_bytes < needed:
            raise self._error(f"is truncated: its meta page counts {meta.high_water_pgid} pages of "
                              f"{meta.page_size_bytes} bytes ({needed} bytes) but the file has "
                              f"{self.file_size_bytes} bytes")
        return meta

    # pages ------------------------------------------------------------------------------------------------------

    def _page(self, pgid: int, want: int) -> tuple[int, int, int, int]:
        """(offset, flags, count, end offset) of page ``pgid``, whose flags must be one of ``want``."""
        if not 2 <= pgid < self.high_water_pgid:
            raise self._error(f"refers to page {pgid}, outside its pages 2-{self.high_water_pgid - 1}")
        offset = pgid * self.page_size_bytes
        pid, flags, count, overflow = _PAGE_HEADER.unpack_from(self._map, offset)
        if pid != pgid:
            raise self._error(f"has page {pgid} whose header says page {pid} (damaged)")
        if not flags & want or flags & ~(FLAG_BRANCH | FLAG_LEAF | FLAG_META | FLAG_FREELIST):
            raise self._error(f"has page {pgid} with flags {flags:#x} where a {_kind(want)} page belongs")
        if pgid + overflow >= self.high_water_pgid:
            raise self._error(f"has page {pgid} with {overflow} overflow pages, past its last page "
                              f"{self.high_water_pgid - 1}")
        return offset, flags, count, offset + (overflow + 1) * self.page_size_bytes

    def _span(self, pgid: int) -> range:
        offset = pgid * self.page_size_bytes
        overflow = _PAGE_HEADER.unpack_from(self._map, offset)[3]
        return range(pgid, pgid + overflow + 1)

    def _leaf_elements(self, buf: bytes | mmap.mmap, where: str, start: int, count: int, end: int
                       ) -> Iterator[tuple[int, bytes, bytes]]:
        """(flags, key, value) of a leaf page in ``buf`` whose header is at ``start`` and whose bytes end at
        ``end``."""
        base = start + _PAGE_HEADER.size
        if base + count * _LEAF_ELEMENT.size > end:
            raise self._error(f"has {where} with {count} elements that do not fit in it")
        for i in range(count):
            at = base + i * _LEAF_ELEMENT.size
            flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(buf, at)
            key_at = at + pos
            if pos < (count - i) * _LEAF_ELEMENT.size or key_at + ksize + vsize > end:
                raise self._error(f"has {where} whose element {i} points outside the page (damaged)")
            yield flags, bytes(buf[key_at:key_at + ksize]), bytes(buf[key_at + ksize:key_at + ksize + vsize])

    def _walk(self, pgid: int, where: str, seen: set[int] | None, low: bytes | None, high: bytes | None,
              depth: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        """Elements of the tree rooted at ``pgid`` in key order; keys must lie in [low, high). ``seen``: pages
        already reached (a fresh set when None), so a damaged file with a cycle is refused, not looped over."""
        if depth > _MAX_TREE_DEPTH:
            raise self._error(f"has a tree in {where} deeper than {_MAX_TREE_DEPTH} levels (damaged)")
        start, flags, count, end = self._page(pgid, FLAG_BRANCH | FLAG_LEAF)
        if seen is None:
            seen = set()
        span = set(self._span(pgid))
        if span & seen:
            raise self._error(f"has page {pgid} reachable twice in {where} (damaged)")
        seen |= span
        page_where = f"{where}, page {pgid}"
        if flags & FLAG_LEAF:
            previous = low
            for i, (eflags, key, value) in enumerate(self._leaf_elements(self._map, page_where, start, count,
                                                                                        end)):
                if (previous is not None and (key < previous or (key == previous and i > 0))) or \
                        (high is not None and key >= high):
                    raise self._error(f"has keys out of order in {page_where} (damaged)")
                previous = key
                yield eflags, key, value
            return
        if count == 0:
            raise self._error(f"has an empty branch page in {page_where} (damaged)")
        base = start + _PAGE_HEADER.size
        if base + count * _BRANCH_ELEMENT.size > end:
            raise self._error(f"has {page_where} with {count} elements that do not fit in it")
        children: list[tuple[bytes, int]] = []
        for i in range(count):
            at = base + i * _BRANCH_ELEMENT.size
            pos, ksize, child = _BRANCH_ELEMENT.unpack_from(self._map, at)
            if pos < (count - i) * _BRANCH_ELEMENT.size or at + pos + ksize > end:
                raise self._error(f"has {page_where} whose element {i} points outside the page (damaged)")
            key = self._map[at + pos:at + pos + ksize]
            if children and key <= children[-1][0]:
                raise self._error(f"has keys out of order in {page_where} (damaged)")
            children.append((key, child))
        if (low is not None and children[0][0] < low) or (high is not None and children[-1][0] >= high):
            raise self._error(f"has keys out of order in {page_where} (damaged)")
        for i, (key, child) in enumerate(children):
            child_high = children[i + 1][0] if i + 1 < len(children) else high
            yield from self._walk(child, where, seen, key if i else low, child_high, depth + 1)

    def _buckets(self, seen: set[int] | None) -> Iterator[tuple[bytes, bytes]]:
        for eflags, name, value in self._walk(self.meta.root_pgid, "the root bucket", seen, None, None):
            if not eflags & ELEMENT_BUCKET:
                raise self._error(f"has a plain key {name!r} among its top-level buckets (not an etcd db)")
            if len(value) < _BUCKET_HEADER.size:
                raise self._error(f"has bucket {name!r} with a {len(value)}-byte header (damaged)")
            yield name, value

    def _bucket_items(self, name: bytes, value: bytes, seen: set[int] | None) -> Iterator[tuple[bytes, bytes]]:
        root, _ = _BUCKET_HEADER.unpack_from(value)
        where = f"bucket {name!r}"
        if root == 0:
            inline = value[_BUCKET_HEADER.size:]
            if len(inline) < _PAGE_HEADER.size:
                raise self._error(f"has inline {where} without a page (damaged)")
            _, flags, count, _ = _PAGE_HEADER.unpack_from(inline)
            if flags != FLAG_LEAF:
                raise self._error(f"has inline {where} whose page is not a leaf (damaged)")
            previous: bytes | None = None
            for eflags, key, item in self._leaf_elements(inline, f"inline {where}", 0, count, len(inline)):
                if previous is not None and key <= previous:
                    raise self._error(f"has keys out of order in inline {where} (damaged)")
                previous = key
                yield self._plain(where, eflags, key, item)
            return
        for eflags, key, item in self._walk(root, where, seen, None, None):
            yield self._plain(where, eflags, key, item)

    def _plain(self, where: str, eflags: int, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        if eflags & ELEMENT_BUCKET:
            raise self._error(f"has a nested bucket {key!r} in {where} (etcd never nests buckets; not supported)")
        return key, value

    # public API -------------------------------------------------------------------------------------------------

    def bucket_names(self) -> list[bytes]:
        """Top-level bucket names, ascending."""
        return [name for name, _ in self._buckets(None)]

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a top-level bucket in key order; KeyError if there is no such bucket."""
        for name, value in self._buckets(None):
            if name == bucket:
                return self._bucket_items(name, value, None)
        raise KeyError(bucket)

    def iter_all(self) -> Iterator[tuple[bytes, Iterator[tuple[bytes, bytes]]]]:
        """(bucket name, its items) for every bucket in order (consume each bucket's items before the next)."""
        for name, value in list(self._buckets(None)):
            yield name, self._bucket_items(name, value, None)

    def freelist(self) -> list[int]:
        """Free page ids as the meta's freelist page lists them ([] when the freelist is not stored)."""
        if self.meta.freelist_pgid == NO_FREELIST:
            return []
        start, _, count, end = self._page(self.meta.freelist_pgid, FLAG_FREELIST)
        at = start + _PAGE_HEADER.size
        if count == 0xFFFF:
            if at + 8 > end:
                raise self._error("has a freelist page too short for its count (damaged)")
            count = _U64.unpack_from(self._map, at)[0]
            at += 8
        if at + 8 * count > end:
            raise self._error(f"has a freelist page listing {count} pages that do not fit in it (damaged)")
        return [_U64.unpack_from(self._map, at + 8 * i)[0] for i in range(count)]

    def check(self) -> None:
        """Walk everything: page headers, element bounds, key order, every page used once or free, never both;
        raises BboltError on the first problem."""
        seen: set[int] = {0, 1}
        for name, value in list(self._buckets(seen)):
            for _ in self._bucket_items(name, value, seen):
                pass
        free = self.freelist()
        if self.meta.freelist_pgid != NO_FREELIST:
            seen |= set(self._span(self.meta.freelist_pgid))
        for pgid in free:
            if not 2 <= pgid < self.high_water_pgid:
                raise self._error(f"lists page {pgid} as free, outside its pages 2-{self.high_water_pgid - 1}")
            if pgid in seen:
                raise self._error(f"lists page {pgid} as free although it is in use (damaged)")
        if self.meta.freelist_pgid != NO_FREELIST:
            lost = set(range(self.high_water_pgid)) - seen - set(free)
            if lost:
                raise self._error(f"has {len(lost)} pages neither in use nor free (first: {min(lost)}; damaged)")


def _kind(want: int) -> str:
    names = [n for f, n in ((FLAG_BRANCH, "branch"), (FLAG_LEAF, "leaf"), (FLAG_FREELIST, "freelist")) if want & f]
    return " or ".join(names)


def read_db(path: str | os.PathLike[str]) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every top-level bucket of a bbolt file with its (key, value) pairs in key order, after :meth:`BboltFile.check`.
    Raises BboltError naming the file and the problem."""
    with BboltFile(path) as db:
        db.check()
        return {name: [(bytes(k), bytes(v)) for k, v in items] for name, items in db.iter_all()}

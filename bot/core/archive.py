"""pg_dump's custom-format archive, read just far enough to give a piped dump its data offsets.

pg_dump writing to a file goes back at the end and records in the table of contents where each
table's data starts. Writing to a pipe (as every backup does) it cannot, so the TOC says
"position not set", and ``pg_restore --jobs`` must find each table's data by skipping through
the archive block by block. Uncompressed (-Z0) archives frame every COPY row as a block of its
own, so that skipping costs a read and a seek per row: on bench/'s 1 GB database pg_restore -j2
spent ~1.3 CPU-s on it, and without the sizes the offsets give, it cannot start the biggest
tables first either (about 0.35 s of wall time).

When a restore unpacks an archive to a local file, :class:`BlockFinder` watches the bytes go past
and notes where data blocks start; :func:`fill_offsets` then writes those positions into the
TOC, making the file what ``pg_dump -f`` would have written (tests compare the two).

How a block start is recognised: every data block ends with a zero length (five zero bytes)
and the next begins with a block type and its entry's dump id (a sign byte and four bytes).
COPY text never contains a zero byte, so in the data of an uncompressed archive that sequence
occurs only where a block starts. Large-object blocks hold raw bytes and could contain it by
chance: unless every entry's block is seen exactly once, in TOC order, nothing is changed
(pg_restore then scans, as before), and neither is an archive this code does not fully
understand. pg_restore itself checks the block id it finds at every offset.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"PGDMP"
ARCH_CUSTOM = 1
K_OFFSET_POS_NOT_SET = 1
K_OFFSET_POS_SET = 2
K_OFFSET_NO_DATA = 3
OFFSET_STATES = (K_OFFSET_POS_NOT_SET, K_OFFSET_POS_SET, K_OFFSET_NO_DATA)
BLK_DATA = 1
BLK_BLOBS = 3
BLOCK_TYPES = (BLK_DATA, BLK_BLOBS)
# Archive versions whose header and TOC layout this reader knows (PostgreSQL 12 to 16).
KNOWN_VERSIONS = ((1, 12), (1, 13), (1, 14), (1, 15))
INT_SIZE = 4  # pg_dump writes ints as a sign byte and sizeof(int) bytes
END_MARK = b"\x00" * (1 + INT_SIZE)  # WriteInt(0): the end of a block's data
HEAD_LEN = len(END_MARK) + 2 + INT_SIZE  # end mark, block type, the dump id's sign and bytes


class ArchiveFormatError(Exception):
    """The file is not a custom archive this module can read."""


@dataclass(frozen=True)
class TocSlot:
    """A TOC entry's data position as the archive records it."""

    dump_id: int
    desc: str
    state: int  # K_OFFSET_*: set, not set (has data, position unknown), no data
    offset: int  # meaningful when state is K_OFFSET_POS_SET
    field_pos: int  # where its offset field (a state byte and off_size bytes) sits in the file
    tag: str = ""  # the object's name ("table name" for a constraint…), exactly, spaces and all
    namespace: str = ""
    deps: tuple[int, ...] = ()  # dump ids of the entries it depends on


@dataclass(frozen=True)
class ArchiveToc:
    off_size: int
    data_start: int  # the first byte after the TOC: where the first data block starts
    entries: tuple[TocSlot, ...]  # in TOC order

    @property
    def unset(self) -> list[TocSlot]:
        """Entries with data whose position is not recorded."""
        return [e for e in self.entries if e.state == K_OFFSET_POS_NOT_SET]

    @property
    def offsets(self) -> dict[int, int]:
        """dump id -> recorded data position."""
        return {e.dump_id: e.offset for e in self.entries if e.state == K_OFFSET_POS_SET}


class Truncated(ArchiveFormatError):
    """The bytes end inside the header or table of contents."""


class _Reader:
    """Sequential reads with the position kept, for the TOC; ``read_at(pos, n)`` returns up to n
    bytes at pos (fewer only at the end)."""

    def __init__(self, read_at: Callable[[int, int], bytes]) -> None:
        self.read_at = read_at
        self.pos = 0
        self._buf = b""
        self._at = 0  # index of pos in _buf

    def take(self, n: int) -> bytes:
        while len(self._buf) - self._at < n:
            more = self.read_at(self.pos + len(self._buf) - self._at, max(1 << 16, n))
            if not more:
                raise Truncated("the archive ends inside its table of contents")
            self._buf = self._buf[self._at:] + more
            self._at = 0
        out = self._buf[self._at:self._at + n]
        self._at += n
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        raw = self.take(1 + INT_SIZE)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def str(self) -> bytes | None:
        n = self.int()
        if n < 0:
            return None
        return self.take(n)


def read_toc(fd: int, *, data_uncompressed: bool = True) -> ArchiveToc:
    """Parse the header and TOC of the custom archive in ``fd`` (see ``parse_toc``)."""
    return parse_toc(lambda pos, n: os.pread(fd, n, pos), data_uncompressed=data_uncompressed)


def parse_toc(read_at: Callable[[int, int], bytes], *, data_uncompressed: bool = True) -> ArchiveToc:
    """Parse an archive's header and TOC (layout: pg_backup_archiver.c, ReadHead and ReadToc;
    pg_backup_custom.c, _ReadExtraToc). ``data_uncompressed``: refuse an archive whose data
    pg_dump compressed (what the block finder needs; reading the TOC alone does not)."""
    r = _Reader(read_at)
    if r.take(len(MAGIC)) != MAGIC:
        raise ArchiveFormatError("not a pg_dump custom archive")
    vmaj, vmin, _vrev = r.take(3)
    if (vmaj, vmin) not in KNOWN_VERSIONS:
        raise ArchiveFormatError(f"archive version {vmaj}.{vmin} is not one this reader knows")
    int_size, off_size, fmt = r.take(3)
    if int_size != INT_SIZE or fmt != ARCH_CUSTOM or not 1 <= off_size <= 8:
        raise ArchiveFormatError("unexpected archive layout")
    compression = r.byte() if (vmaj, vmin) >= (1, 15) else r.int()
    if compression != 0 and data_uncompressed:
        # Compressed blocks hold arbitrary bytes: the block-start sequence proves nothing there.
        raise ArchiveFormatError("the archive's data is compressed by pg_dump")
    for _ in range(7):  # creation time
        r.int()
    for _ in range(3):  # database name, server version, pg_dump version
        r.str()
    count = r.int()
    entries: list[TocSlot] = []
    for _ in range(count):
        dump_id = r.int()
        r.int()  # had a data dumper
        r.str()  # catalog id: table oid
        r.str()  # oid
        tag = (r.str() or b"").decode("utf-8", "replace")
        desc = (r.str() or b"").decode("utf-8", "replace")
        r.int()  # section
        for _ in range(3):  # definition, drop statement, copy statement
            r.str()
        namespace = (r.str() or b"").decode("utf-8", "replace")
        r.str()  # tablespace
        if (vmaj, vmin) >= (1, 14):
            r.str()  # table access method
        r.str()  # owner
        r.str()  # "with oids" (always "false")
        deps: list[int] = []
        while (dep := r.str()) is not None:  # dependencies (decimal dump ids), ended by a null string
            if dep.isdigit():
                deps.append(int(dep))
        field_pos = r.pos
        state = r.byte()
        offset = int.from_bytes(r.take(off_size), "little")
        if state not in OFFSET_STATES or (state != K_OFFSET_POS_SET and offset != 0):
            raise ArchiveFormatError(f"unexpected data position for entry {dump_id}")
        entries.append(TocSlot(dump_id, desc, state, offset, field_pos, tag, namespace, tuple(deps)))
    return ArchiveToc(off_size, r.pos, tuple(entries))


class BlockFinder:
    """Fed an archive's bytes in order (any chunk sizes), notes where the blocks of the entries
    whose position is not set seem to start: ``seen[dump_id]``. It reads the TOC from the first
    bytes, so it looks only for those entries and only for the block types they can have; it
    stops looking (``failed`` says why) at the first doubt, as fill_offsets would then refuse."""

    HEAD_LIMIT = 64 << 20  # a TOC bigger than this is not waited for
    LOOKALIKE_LIMIT = 10_000  # heads of entries not looked for (only large objects have any)

    def __init__(self) -> None:
        self.pos = 0  # bytes fed so far
        self.seen: dict[int, list[int]] = {}
        self.failed: str | None = None
        self._head: list[bytes] | None = []  # the bytes so far, until the TOC could be read
        self._next_try = 1 << 16  # head size at which to try reading the TOC (doubling: linear cost)
        self._wanted: set[int] = set()
        self._marks: tuple[bytes, ...] = ()
        self._lookalikes = 0
        self._tail = b""  # the last HEAD_LEN - 1 bytes: a block start may straddle two chunks

    def _start(self, final: bool = False) -> None:
        """Read the TOC from the first bytes, then scan what came after it."""
        assert self._head is not None
        data = b"".join(self._head)
        try:
            toc = parse_toc(lambda pos, n: data[pos:pos + n])
        except Truncated:
            if final or len(data) > self.HEAD_LIMIT:
                self._stop("its table of contents could not be read in full")
            else:
                self._head = [data]
            return
        except ArchiveFormatError as exc:
            self._stop(str(exc))
            return
        self._head = None
        unset = toc.unset
        self._wanted = {e.dump_id for e in unset}
        kinds = {BLK_BLOBS if e.desc == "BLOBS" else BLK_DATA for e in unset}
        self._marks = tuple(END_MARK + bytes([k, 0]) for k in sorted(kinds))
        # After the TOC, never in it; the first block, which has no end mark before it, is
        # checked by fill_offsets itself.
        start = toc.data_start
        self._scan(data[start:], start, len(data) - start - (HEAD_LEN - 1))
        self._tail = data[-(HEAD_LEN - 1):]

    def finish(self) -> None:
        """The end of the archive: a TOC still being waited for is read now."""
        if self._head is not None:
            self._start(final=True)

    def _stop(self, why: str) -> None:
        self.failed, self._head, self._marks = why, None, ()

    def _scan(self, data: bytes, base: int, limit: int) -> None:
        """Record block starts whose head begins before index ``limit``; data[0] is at ``base``."""
        for mark in self._marks:
            i = data.find(mark)
            while 0 <= i < limit and i + HEAD_LEN <= len(data):
                dump_id = int.from_bytes(data[i + len(mark):i + HEAD_LEN], "little")
                if dump_id in self._wanted:
                    spots = self.seen.setdefault(dump_id, [])
                    if base + i + len(END_MARK) not in spots:
                        spots.append(base + i + len(END_MARK))
                    if len(spots) > 1:  # fill_offsets would refuse: stop paying for the search
                        self._stop(f"entry {dump_id}'s data seems to start in more than one place")
                        return
                else:
                    self._lookalikes += 1
                    if self._lookalikes > self.LOOKALIKE_LIMIT:  # large objects full of them
                        self._stop("too many block look-alikes in the data")
                        return
                i = data.find(mark, i + 1)

    def feed(self, chunk: bytes) -> None:
        if self.failed or not chunk:
            self.pos += len(chunk)
            return
        self.pos += len(chunk)
        if self._head is not None:
            self._head.append(chunk)
            if self.pos >= self._next_try:
                self._next_try *= 2
                self._start()
            return
        base = self.pos - len(chunk)
        if self._tail:  # a start straddling the previous chunk and this one
            joined = self._tail + chunk[:HEAD_LEN - 1]
            self._scan(joined, base - len(self._tail), len(self._tail))
        # Complete heads only: one that starts in the last HEAD_LEN - 1 bytes is found next time.
        self._scan(chunk, base, len(chunk) - (HEAD_LEN - 1))
        keep = HEAD_LEN - 1
        self._tail = chunk[-keep:] if len(chunk) >= keep else (self._tail + chunk)[-keep:]


def fill_offsets(fd: int, finder: BlockFinder) -> int:
    """Write into the archive's TOC the data positions ``finder`` saw (see the module's notes) and
    return how many entries got one: all that lacked one, or none when any is in doubt (not seen,
    seen twice, out of order), leaving the file as it was."""
    finder.finish()
    if finder.failed:
        raise ArchiveFormatError(finder.failed)
    toc = read_toc(fd)
    unset = toc.unset
    if not unset:
        return 0
    # The first block follows the TOC directly, with no end mark before it.
    head = os.pread(fd, 2 + INT_SIZE, toc.data_start)
    first = (int.from_bytes(head[2:], "little")
             if len(head) == 2 + INT_SIZE and head[0] in BLOCK_TYPES and head[1] == 0 else None)
    positions: list[int] = []
    for slot in unset:
        spots = {p for p in finder.seen.get(slot.dump_id, []) if p >= toc.data_start}
        if slot.dump_id == first:
            spots.add(toc.data_start)
        if len(spots) != 1:  # not seen, or seen twice: no guessing
            return 0
        positions.append(spots.pop())
    # pg_dump writes the data in TOC order: positions out of that order mean a misreading.
    if positions != sorted(set(positions)):
        return 0
    for slot, position in zip(unset, positions, strict=True):
        os.pwrite(fd, bytes([K_OFFSET_POS_SET]) + position.to_bytes(toc.off_size, "little"), slot.field_pos)
    return len(positions)

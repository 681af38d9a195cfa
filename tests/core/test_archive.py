"""A piped pg_dump's archive gets the data offsets pg_dump itself records when writing to a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.core import archive
from bot.core.pgtools import Command, ConnInfo, find_bindir
from tests.fixtures.pg import big_table, query

# A large object whose bytes look like block starts: a zero-length end mark, a block type and a
# sign byte, twice over, then random bytes. Its archive block holds raw bytes, unlike COPY text.
LOOKALIKE = "'\\x" + "00000000000100" * 2 + "'::bytea || decode(md5(random()::text), 'hex')"


def _dump(url: str, *args: str) -> bytes:
    info = ConnInfo.parse(url)
    return Command("pg_dump", find_bindir()).run(["--format=custom", *args, f"--dbname={info.safe_conninfo()}"],
                                                 info).stdout


def _with_data(url: str) -> str:
    big_table(url, mb=2)
    query(url, f"SELECT lo_from_bytea(0, {LOOKALIKE} || repeat('x', 100000)::bytea)")
    return url


def _fed(data: bytes, sizes: list[int]) -> archive.BlockFinder:
    finder = archive.BlockFinder()
    at, i = 0, 0
    while at < len(data):
        n = sizes[i % len(sizes)]
        finder.feed(data[at:at + n])
        at, i = at + n, i + 1
    return finder


def _file(tmp_path: Path, name: str, data: bytes) -> int:
    path = tmp_path / name
    path.write_bytes(data)
    return os.open(path, os.O_RDWR)


def test_filled_offsets_are_the_ones_pg_dump_writes_to_a_file(crm_db, tmp_path):
    # GIVEN a database with table data and a large object, dumped through a pipe and to a file
    _with_data(crm_db)
    piped = _dump(crm_db, "--compress=0")
    _dump(crm_db, "--compress=0", f"--file={tmp_path / 'filed.dump'}")
    filed = os.open(tmp_path / "filed.dump", os.O_RDONLY)
    fd = _file(tmp_path, "piped.dump", piped)
    before = archive.read_toc(fd)
    expected = archive.read_toc(filed).offsets
    assert before.offsets == {} and len(before.unset) == len(expected) >= 5, before
    assert {e.desc for e in before.unset} >= {"TABLE DATA", "BLOBS"}
    # WHEN its bytes stream past a finder (as a restore unpacks them) and the offsets are filled in
    filled = archive.fill_offsets(fd, _fed(piped, [1 << 20]))
    # THEN every entry got exactly the position pg_dump recorded in the file
    assert filled == len(expected)
    assert archive.read_toc(fd).offsets == expected
    assert archive.read_toc(fd).unset == []


def test_block_starts_are_found_whatever_the_chunk_sizes(crm_db):
    # GIVEN an archive
    data = _dump(_with_data(crm_db), "--compress=0")
    whole = _fed(data, [len(data)]).seen
    # WHEN it arrives in chunks of odd sizes, block starts straddling the chunk boundaries
    for sizes in ([1], [3, 7, 11], [5, 9999, 2], [65536]):
        # THEN the same places are seen
        assert _fed(data, sizes).seen == whole, sizes
    assert sum(len(p) for p in whole.values()) >= 5


def _unchanged_after(tmp_path: Path, data: bytes, finder: archive.BlockFinder) -> None:
    fd = _file(tmp_path, "doubt.dump", data)
    assert archive.fill_offsets(fd, finder) == 0
    os.close(fd)
    assert (tmp_path / "doubt.dump").read_bytes() == data


def test_any_doubt_leaves_the_archive_as_it_was(crm_db, tmp_path):
    # GIVEN an archive and what a finder saw in it
    data = _dump(crm_db, "--compress=0")
    ids = [e.dump_id for e in archive.read_toc(_file(tmp_path, "probe.dump", data)).unset]
    assert len(ids) >= 3

    def seen() -> archive.BlockFinder:
        return _fed(data, [1 << 20])

    # WHEN one entry's block seems to start in two places, THEN nothing is written
    twice = seen()
    twice.seen[ids[1]].append(twice.seen[ids[1]][0] + 100)
    _unchanged_after(tmp_path, data, twice)
    # WHEN one entry's block was not seen at all, THEN nothing is written
    missing = seen()
    del missing.seen[ids[1]]
    _unchanged_after(tmp_path, data, missing)
    # WHEN the positions are out of TOC order, THEN nothing is written
    swapped = seen()
    swapped.seen[ids[1]], swapped.seen[ids[2]] = swapped.seen[ids[2]], swapped.seen[ids[1]]
    _unchanged_after(tmp_path, data, swapped)


@pytest.mark.parametrize("args, why", [
    (["--compress=6"], "compressed"),
    (["--compress=0", "--schema-only"], None),
])
def test_archives_it_cannot_vouch_for_are_refused_or_left_alone(crm_db, tmp_path, args, why):
    # GIVEN an archive pg_dump compressed itself (its blocks are arbitrary bytes), or one without data
    data = _dump(crm_db, *args)
    fd = _file(tmp_path, "other.dump", data)
    if why:
        # THEN reading it says why, and a restore goes on without offsets (see restore._fill_offsets)
        with pytest.raises(archive.ArchiveFormatError, match=why):
            archive.read_toc(fd)
    else:
        # THEN there is nothing to fill and nothing is written
        assert archive.fill_offsets(fd, _fed(data, [1 << 20])) == 0
        assert (tmp_path / "other.dump").read_bytes() == data


def test_a_file_that_is_not_a_custom_archive_is_refused(tmp_path):
    fd = _file(tmp_path, "plain.sql", b"--\n-- PostgreSQL database dump\n--\n")
    with pytest.raises(archive.ArchiveFormatError, match="not a pg_dump custom archive"):
        archive.read_toc(fd)
    cut = _file(tmp_path, "cut.dump", b"PGDMP\x01\x0e\x00\x04\x08\x01")
    with pytest.raises(archive.ArchiveFormatError, match="ends inside"):
        archive.read_toc(cut)


def test_a_failing_observer_never_fails_the_unpacking(tmp_path):
    # GIVEN a threaded writer whose observer breaks on the second chunk
    from bot.core.codec import ThreadedWriter

    seen: list[bytes] = []

    def observe(chunk: bytes) -> None:
        if seen:
            raise ValueError("observer bug")
        seen.append(chunk)

    with open(tmp_path / "out", "wb") as f:
        writer = ThreadedWriter(f, observe=observe)
        for part in (b"one ", b"two ", b"three"):
            writer.write(part)
        writer.close()
    # THEN every chunk was written, the observer was dropped and its failure kept
    assert (tmp_path / "out").read_bytes() == b"one two three"
    assert seen == [b"one "] and isinstance(writer.observe_error, ValueError)
    assert writer.error is None


def test_a_large_object_full_of_lookalikes_of_a_real_block_start_changes_nothing(crm_db, tmp_path):
    # GIVEN a large object that repeats, thousands of times, the start of a real table's data block
    # (its dump id taken from a first dump; adding a large object does not renumber tables)
    first = archive.read_toc(_file(tmp_path, "first.dump", _dump(crm_db, "--compress=0")))
    table = next(e for e in first.unset if e.desc == "TABLE DATA")
    head = archive.END_MARK + bytes([archive.BLK_DATA, 0]) + table.dump_id.to_bytes(4, "little")
    query(crm_db, "SELECT lo_from_bytea(0, decode(repeat(%s, 20000), 'hex'))", [head.hex()])
    data = _dump(crm_db, "--compress=0")
    fd = _file(tmp_path, "lookalikes.dump", data)
    assert table.dump_id in {e.dump_id for e in archive.read_toc(fd).unset}
    # WHEN it streams past a finder
    finder = _fed(data, [1 << 20])
    # THEN it stops looking at the second place, and the archive is left as it was
    assert len(finder.seen[table.dump_id]) == 2
    assert finder.failed == f"entry {table.dump_id}'s data seems to start in more than one place"
    with pytest.raises(archive.ArchiveFormatError, match="more than one place"):
        archive.fill_offsets(fd, finder)
    assert (tmp_path / "lookalikes.dump").read_bytes() == data


def test_a_large_object_full_of_other_lookalikes_stops_the_search(crm_db, tmp_path):
    # GIVEN a large object full of block heads of an entry that does not exist (id 0)
    head = archive.END_MARK + bytes([archive.BLK_DATA, 0]) + (0).to_bytes(4, "little")
    query(crm_db, "SELECT lo_from_bytea(0, decode(repeat(%s, 20000), 'hex'))", [head.hex()])
    data = _dump(crm_db, "--compress=0")
    # WHEN it streams past a finder, THEN the finder gives up rather than loop over each one
    finder = _fed(data, [1 << 20])
    assert finder.failed == "too many block look-alikes in the data"


def test_the_1_15_header_of_postgresql_16_is_read_too(crm_db, tmp_path):
    # GIVEN a 1.14 archive rewritten as 1.15 writes its header: the compression level (an int of
    # five bytes) becomes a one-byte algorithm, so everything after moves 4 bytes forward
    data = _dump(crm_db, "--compress=0")
    assert data[5:8] == b"\x01\x0e\x00"  # PostgreSQL 15's pg_dump writes 1.14
    v15 = data[:6] + b"\x0f" + data[7:11] + b"\x00" + data[16:]
    old, new = (archive.read_toc(_file(tmp_path, n, d)) for n, d in (("v14.dump", data), ("v15.dump", v15)))
    # THEN the same entries are read, each 4 bytes earlier
    assert [(e.dump_id, e.desc, e.state) for e in new.entries] == [(e.dump_id, e.desc, e.state) for e in old.entries]
    assert [e.field_pos for e in new.entries] == [e.field_pos - 4 for e in old.entries]
    assert new.data_start == old.data_start - 4

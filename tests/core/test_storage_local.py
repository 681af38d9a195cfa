"""Behaviour of the local-directory backend: atomic commits, clean failures, clear messages."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core.storage.local import LocalStorage, remove_stale_partials
from bot.errors import NotFound, StorageError

KEY = "default/default-20261129-020000-a1b2.dump.zst"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so that a real write hits a real ENOSPC."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    # The suite runs as root (CI does): a full disk is simulated for real, never skipped.
    assert shutil.which("mount"), "the mount command is needed to simulate a full disk"
    # Fixed argument list: nothing untrusted reaches the command.
    result = subprocess.run(  # noqa: S603
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"this suite runs as root and needs tmpfs mounts: {result.stderr.strip()}"
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)  # noqa: S603


def test_round_trip_returns_the_same_bytes(tmp_path: Path) -> None:
    # GIVEN a storage and some data written in several chunks
    storage = LocalStorage(tmp_path / "backups")
    data = os.urandom(300_000)
    writer = storage.open_writer(KEY)
    for start in range(0, len(data), 64 * 1024):
        writer.write(data[start : start + 64 * 1024])
    # WHEN the copy is committed
    stored = writer.commit(expected_size=len(data), sha256=_sha(data))
    # THEN it is readable under its key with the right size and location
    assert stored.size == len(data)
    assert stored.location == str(tmp_path / "backups" / "default" / KEY.split("/")[1])
    assert storage.get_bytes(KEY) == data
    with storage.open_reader(KEY) as f:
        assert f.read(10) == data[:10]
    assert storage.stat(KEY) == stored
    assert storage.list_keys() == [KEY]


def test_partial_write_leaves_nothing_under_final_key(tmp_path: Path) -> None:
    # GIVEN a write in progress
    storage = LocalStorage(tmp_path)
    writer = storage.open_writer(KEY)
    writer.write(b"x" * 1000)
    # THEN the final key does not exist and the partial is hidden from listings
    assert storage.stat(KEY) is None
    assert storage.list_keys() == []
    assert storage.used_bytes() == 0
    partials = _all_files(tmp_path)
    assert len(partials) == 1 and partials[0].name.startswith(f".{Path(KEY).name}.partial-")
    # WHEN the write is aborted
    writer.abort()
    # THEN no file at all is left
    assert _all_files(tmp_path) == []


def test_commit_with_wrong_expected_size_raises_and_leaves_nothing(tmp_path: Path) -> None:
    # GIVEN 100 bytes written
    storage = LocalStorage(tmp_path)
    writer = storage.open_writer(KEY)
    writer.write(b"a" * 100)
    # WHEN committing with a different expected size
    with pytest.raises(StorageError, match="wrote 100 bytes, expected 101"):
        writer.commit(expected_size=101, sha256="0" * 64)
    # THEN neither the final file nor the partial exists
    assert storage.stat(KEY) is None
    assert _all_files(tmp_path) == []


def test_unwritable_directory_gives_clear_error(tmp_path: Path) -> None:
    # GIVEN a backup directory whose parent is a regular file (chmod means nothing to root)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    storage = LocalStorage(blocker / "backups")
    # WHEN checking it is writable
    with pytest.raises(StorageError) as caught:
        storage.check_writable()
    # THEN the message names the directory and the reason
    assert caught.value.message == (
        f"backup directory {blocker / 'backups'} is not writable: Not a directory"
    )


def test_writable_directory_is_created_and_left_clean(tmp_path: Path) -> None:
    # GIVEN a backup directory that does not exist yet
    storage = LocalStorage(tmp_path / "a" / "b")
    # WHEN checking it is writable
    storage.check_writable()
    # THEN it now exists, empty
    assert (tmp_path / "a" / "b").is_dir()
    assert _all_files(tmp_path) == []


def test_disk_full_raises_clear_error_and_removes_partial(tiny_fs: Path) -> None:
    # GIVEN a storage on a 1 MiB filesystem
    storage = LocalStorage(tiny_fs)
    writer = storage.open_writer(KEY)
    # WHEN writing 2 MiB
    with pytest.raises(StorageError) as caught:
        for _ in range(32):
            writer.write(b"z" * 64 * 1024)
        writer.commit(expected_size=2 * 1024 * 1024, sha256="0" * 64)
    # THEN the error says the disk is full, where, and nothing is left behind
    assert caught.value.message.startswith(f"disk full writing to {tiny_fs / 'default'}: ")
    assert _all_files(tiny_fs) == []
    assert storage.stat(KEY) is None


def test_missing_key_raises_not_found_naming_the_path(tmp_path: Path) -> None:
    # GIVEN a storage holding another copy of the same target
    storage = LocalStorage(tmp_path)
    storage.put_bytes(KEY.replace(".dump.zst", "-other.dump.zst"), b"x")
    # WHEN / THEN reading a key that was never written
    with pytest.raises(NotFound, match=f"no stored copy at {tmp_path / 'default'}"):
        storage.open_reader(KEY)
    with pytest.raises(NotFound):
        storage.get_bytes(KEY)
    assert storage.stat(KEY) is None


def test_a_target_folder_that_is_not_there_is_unreadable_not_missing(tmp_path: Path) -> None:
    # GIVEN a storage whose target folder is absent (an unmounted disk leaves an empty mount point)
    storage = LocalStorage(tmp_path)
    # WHEN / THEN a copy in it cannot be read now, which says nothing of the copy itself
    with pytest.raises(StorageError, match=f"the folder {tmp_path / 'default'} is not there"):
        storage.open_reader(KEY)


def test_keys_escaping_the_root_are_refused(tmp_path: Path) -> None:
    # GIVEN a storage
    storage = LocalStorage(tmp_path / "backups")
    # WHEN / THEN a key with '..' is refused instead of writing outside the root
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.put_bytes("../escape", b"x")
    assert _all_files(tmp_path) == []


def test_list_used_bytes_and_delete(tmp_path: Path) -> None:
    # GIVEN copies for two targets and a leftover partial
    storage = LocalStorage(tmp_path)
    storage.put_bytes("alpha/a1.dump", b"1" * 10)
    storage.put_bytes("alpha/a2.dump", b"2" * 20)
    storage.put_bytes("beta/b1.dump", b"3" * 40)
    (tmp_path / "alpha" / ".a3.dump.partial-xyz").write_bytes(b"4" * 80)
    # THEN listings and sizes skip the partial and honour the prefix
    assert storage.list_keys() == ["alpha/a1.dump", "alpha/a2.dump", "beta/b1.dump"]
    assert storage.list_keys("alpha/") == ["alpha/a1.dump", "alpha/a2.dump"]
    assert storage.list_keys("alpha/a2") == ["alpha/a2.dump"]
    assert storage.used_bytes() == 70
    assert storage.used_bytes("beta/") == 40
    # WHEN deleting one copy, and then deleting it again
    storage.delete("alpha/a1.dump")
    storage.delete("alpha/a1.dump")
    # THEN it is gone and the rest remains
    assert storage.list_keys() == ["alpha/a2.dump", "beta/b1.dump"]
    assert storage.used_bytes() == 60


def test_free_bytes_reports_space_even_before_the_root_exists(tmp_path: Path, tiny_fs: Path) -> None:
    # GIVEN a root that has not been created yet
    storage = LocalStorage(tmp_path / "later")
    # WHEN asking for free space
    free = storage.free_bytes()
    # THEN the filesystem it will live on answers (other writers on the machine may change its
    # free space between the two readings: a tight bound, not equality)
    assert free is not None and abs(free - shutil.disk_usage(tmp_path).free) < 64 << 20
    # AND on a filesystem of its own, which nobody else writes to, exactly that filesystem's figure
    (tiny_fs / "used").write_bytes(b"x" * 300_000)
    assert LocalStorage(tiny_fs / "later" / "still").free_bytes() == shutil.disk_usage(tiny_fs).free
    assert shutil.disk_usage(tiny_fs).free < shutil.disk_usage(tmp_path).free
    assert storage.describe() == str(tmp_path / "later")


def test_stale_partials_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    # GIVEN an old partial from a crashed run, a fresh partial and a committed copy
    storage = LocalStorage(tmp_path)
    storage.put_bytes("t/done.dump", b"ok")
    old = tmp_path / "t" / ".old.dump.partial-aaaa"
    fresh = tmp_path / "t" / ".new.dump.partial-bbbb"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    # WHEN cleaning up at start-up
    removed = remove_stale_partials(tmp_path)
    # THEN only the old partial is gone
    assert removed == [old]
    assert not old.exists()
    assert fresh.exists()
    assert storage.get_bytes("t/done.dump") == b"ok"


def test_a_killed_backups_partial_goes_at_the_next_start_while_one_being_written_stays(tmp_path: Path) -> None:
    # GIVEN a backup being written now (its writer holds the partial file's lock) for two hours,
    # and the partial of a backup that was killed two minutes ago (nobody holds its lock)
    storage = LocalStorage(tmp_path)
    writing = storage.open_writer("t/live.dump")
    writing.write(b"still coming")
    [live] = list((tmp_path / "t").glob(".live.dump.partial-*"))
    killed = tmp_path / "t" / ".killed.dump.partial-cccc"
    killed.write_bytes(b"x" * 1000)
    os.utime(killed, (time.time() - 120, time.time() - 120))
    os.utime(live, (time.time() - 7200, time.time() - 7200))
    # WHEN cleaning up at start-up
    removed = remove_stale_partials(tmp_path)
    # THEN the killed one is gone at once, the one being written is kept however old, and commits
    assert removed == [killed] and live.exists()
    assert writing.commit(expected_size=12, sha256="").size == 12
    assert storage.get_bytes("t/live.dump") == b"still coming"

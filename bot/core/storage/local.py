"""Copies on the local filesystem: streamed into a hidden partial file, renamed into place on commit."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from bot.core.storage.base import StoredObject
from bot.errors import NotFound, StorageError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"
STALE_PARTIAL_SECONDS = 3600  # where locks do not work
UNLOCKED_PARTIAL_SECONDS = 60  # a writer locks its partial file just after making it


def _is_partial(name: str) -> bool:
    return name.startswith(".") and PARTIAL_MARK in name


def _io_error(exc: OSError, path: Path) -> StorageError:
    """One clear line for a failed write; disk-full is the case operators most need to recognise."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return StorageError(f"disk full writing to {path.parent}: {reason}")
    return StorageError(f"could not write {path}: {reason}")


def _fsync_dir(directory: Path) -> None:
    # Without this a crash right after os.replace() can lose the rename itself.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalWriter:
    """Streams into ``.<name>.partial-<random>`` next to the final file; nothing is visible until commit."""

    def __init__(self, key: str, final: Path) -> None:
        self._key = key
        self._final = final
        self._written = 0
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # mkstemp gives a unique name and mode 0600: a backup is as sensitive as the database.
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}{PARTIAL_MARK}", dir=final.parent)
        except OSError as exc:
            raise _io_error(exc, final) from None
        self._tmp = Path(tmp)
        try:
            try:  # held while it is written: the start-up sweep leaves locked partial files alone
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits out a sweep probing this very file
            except OSError:
                pass  # a file system without locks: the sweep goes by age there
            self._file: BinaryIO | None = os.fdopen(fd, "wb")
        except BaseException:  # interrupted (SIGTERM, Ctrl-C) before anyone holds this writer
            os.close(fd)
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, data: bytes) -> int:
        if self._file is None:
            raise StorageError(f"writer for {self._final} is already closed")
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise _io_error(exc, self._final) from None
        self._written += len(data)
        return len(data)

    def commit(self, *, expected_size: int, sha256: str) -> StoredObject:
        if self._file is None:
            raise StorageError(f"writer for {self._final} is already closed")
        try:
            # Buffered bytes and delayed allocation can fail only here, so ENOSPC may surface late.
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        except OSError as exc:
            self.abort()
            raise _io_error(exc, self._final) from None
        if self._written != expected_size:
            self.abort()
            raise StorageError(
                f"size mismatch writing {self._final}: wrote {self._written} bytes, "
                f"expected {expected_size}"
            )
        try:
            os.replace(self._tmp, self._final)
        except OSError as exc:
            self.abort()
            raise _io_error(exc, self._final) from None
        _fsync_dir(self._final.parent)
        return StoredObject(key=self._key, size=self._written, location=str(self._final))

    def abort(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # closing a file on a full disk can fail again; the unlink below is what matters
            self._file = None
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove partial file %s: %s", self._tmp, exc)


class LocalStorage:
    """Backup copies under one directory; keys map to relative paths."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def location_of(self, key: str) -> str:
        return str(self._path(key))

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        # Keys come from our own naming, but refusing '..' keeps a bad key from escaping the root.
        if not key or any(p in ("", ".", "..") for p in parts) or _is_partial(parts[-1]):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".check-writable{PARTIAL_MARK}", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise StorageError(
                f"backup directory {self.root} is not writable: {exc.strerror or exc}"
            ) from None

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(key, self._path(key))

    def open_reader(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            _require_folder(path, "read")
            raise NotFound(f"no stored copy at {path}") from None
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror or exc}") from None

    def stat(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"could not stat {path}: {exc.strerror or exc}") from None
        return StoredObject(key=key, size=st.st_size, location=str(path))

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        writer = self.open_writer(key)
        writer.write(data)
        return writer.commit(expected_size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as f:
            return f.read()

    def delete(self, key: str) -> None:
        path = self._path(key)
        _require_folder(path, "delete")
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"could not delete {path}: {exc.strerror or exc}") from None

    def _files(self, prefix: str) -> list[tuple[str, Path]]:
        # Walk only the directory the prefix names, then filter like an S3 prefix would.
        start = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        found: list[tuple[str, Path]] = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if _is_partial(name):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append((key, path))
        return sorted(found)

    def list_keys(self, prefix: str = "") -> list[str]:
        return [key for key, _ in self._files(prefix)]

    def used_bytes(self, prefix: str = "") -> int:
        total = 0
        for _key, path in self._files(prefix):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass  # deleted by retention between the walk and the stat
        return total

    def free_bytes(self) -> int | None:
        # The root may not exist yet before the first backup; measure the filesystem it will live on.
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None


def _require_folder(path: Path, verb: str) -> None:
    """A copy's whole folder gone (an unmounted disk leaves an empty mount point; a wrong path)
    is not the copy missing or deleted: reading or deleting there is an error, so that the
    catalog never records as missing or deleted what may still be on that disk."""
    if not path.parent.is_dir():
        raise StorageError(f"could not {verb} {path}: the folder {path.parent} is not there (an unmounted disk?); "
                           f"if those backups are really gone, create it (mkdir -p {path.parent})")


def _unlocked(path: Path) -> bool | None:
    """Whether no writer holds the partial file's lock (None: locks unsupported here)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None
    finally:
        os.close(fd)


def remove_stale_partials(
    root: Path, *, max_age_seconds: float = STALE_PARTIAL_SECONDS, now: float | None = None
) -> list[Path]:
    """Delete partial files left by crashed or killed runs. A writer locks its file: an unlocked
    one is a leftover once it is a minute old (the lock is taken just after the file is made);
    where locks do not work, only files older than ``max_age_seconds`` go."""
    clock = time.time() if now is None else now
    removed: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not _is_partial(name):
                continue
            path = Path(dirpath, name)
            try:
                age = clock - path.stat().st_mtime
                if age <= UNLOCKED_PARTIAL_SECONDS:
                    continue  # young: its writer may not hold the lock yet
                free = _unlocked(path)
                if free or (free is None and age > max_age_seconds):
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove stale partial file %s: %s", path, exc)
    if removed:
        log.info("removed %d stale partial file(s) under %s", len(removed), root)
    return removed

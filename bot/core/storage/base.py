"""The storage interface every backend implements.

Keys are relative, '/'-separated paths such as ``default/default-20261129-020000-a1b2.dump.zst``.
A writer streams bytes in and makes the object visible only on ``commit``; ``abort`` (or an
exception) leaves nothing behind under the final key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol


def object_keys(target: str, backup_id: str, encrypted: bool) -> dict[str, str]:
    """Where a backup's files live in every destination."""
    suffix = ".age" if encrypted else ""
    base = f"{target}/{backup_id}"
    return {
        "dump": f"{base}.dump.zst{suffix}",
        "manifest": f"{base}.manifest.json",
        "roles": f"{base}.roles.sql{suffix}",
    }


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    location: str  # human-readable: /abs/path or s3://bucket/key


class CopyWriter(Protocol):
    def write(self, data: bytes) -> int: ...

    def commit(self, *, expected_size: int, sha256: str) -> StoredObject:
        """Make the object visible; raise StorageError if the stored size differs."""
        ...

    def abort(self) -> None:
        """Discard everything written; never raises."""
        ...


class Storage(Protocol):
    name: str  # "local" or "s3": the destination name recorded in the catalog

    def describe(self) -> str:
        """Where copies go, for humans: '/srv/backups' or 's3://bucket/prefix'."""
        ...

    def check_writable(self) -> None:
        """Raise StorageError with a clear message if a backup could not be written here."""
        ...

    def location_of(self, key: str) -> str:
        """The location a copy stored at ``key`` gets recorded with (as StoredObject.location)."""
        ...

    def open_writer(self, key: str) -> CopyWriter: ...

    def open_reader(self, key: str) -> BinaryIO:
        """A readable stream of the stored object; raise NotFound if it does not exist."""
        ...

    def stat(self, key: str) -> StoredObject | None: ...

    def put_bytes(self, key: str, data: bytes) -> StoredObject: ...

    def get_bytes(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def used_bytes(self, prefix: str = "") -> int: ...

    def free_bytes(self) -> int | None:
        """Free space at the destination, or None where that means nothing (S3)."""
        ...

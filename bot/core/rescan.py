"""Adopt backups that the destinations hold but the catalog does not know.

That happens when the catalog is lost (a new server, a fresh install pointed at the old bucket),
when an older copy of the catalog is put back, and when a process dies between storing a backup
and recording it. Without this the backups are still restorable by hand (README), but `list`,
`restore`, `verify` and retention cannot see them.

A backup's manifest is stored last, after its dump and its roles dump, so a manifest in a
destination means the backup was complete there. For every manifest the catalog does not know,
rescan checks that the dump and the roles dump are beside it and that the dump has the size the
manifest says, then records the backup as complete and *unverified*: `backupbot verify ID` reads
it back and checks its SHA-256. A dump without a manifest is reported, never adopted and never
deleted: it may be what a failed run left, or a backup whose manifest was lost, and only a
person can tell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bot.core.catalog import Catalog, Copy, parse_iso
from bot.core.redact import redact
from bot.core.storage.base import Storage, object_keys
from bot.errors import BackupbotError

MANIFEST_SUFFIX = ".manifest.json"
RESCANNED_TAG = "rescanned"  # retention keeps such a backup until it has been verified
_NAME = re.compile(r"(?P<id>[^/]+?)\.(?P<kind>manifest\.json|dump\.zst(?:\.age)?|roles\.sql(?:\.age)?)")
_KEY = re.compile(r"(?P<target>[^/]+)/" + _NAME.pattern)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def catalog_row(manifest: dict[str, Any], *, run_id: int | None, extra_tags: tuple[str, ...] = ()) -> dict[str, Any]:
    """The catalog's row for a complete backup, from its manifest (what a backup records, and
    what rescan adopts)."""
    return {
        "id": manifest["id"], "target": manifest["target"], "status": "complete",
        "kind": manifest.get("kind") or "manual", "tags": ",".join(sorted({*(manifest.get("tags") or []), *extra_tags})),
        "created_at": manifest["started_at"], "finished_at": manifest.get("finished_at"),
        "duration_s": manifest.get("duration_s"), "size_bytes": manifest["size_bytes"],
        "sha256": manifest["sha256"], "compression": "zstd",
        "encryption_key_id": manifest.get("encryption_key_id"),
        "server_version": manifest.get("server_version"), "pg_dump_version": manifest.get("pg_dump_version"),
        "database": manifest.get("database"), "profile": (manifest.get("profile") or {}).get("name"),
        "object_key": manifest["files"]["dump"], "manifest": json.dumps(manifest),
        "verify_status": "unverified", "run_id": run_id,
    }


@dataclass
class Adopted:
    backup_id: str
    target: str
    created_at: str
    size_bytes: int
    destinations: list[str]


@dataclass
class RescanResult:
    dry_run: bool
    adopted: list[Adopted] = field(default_factory=list)  # (with dry_run: would be)
    copies_added: list[tuple[str, str]] = field(default_factory=list)  # (backup id, destination)
    incomplete: list[tuple[str, str]] = field(default_factory=list)  # (destination, dump key): no manifest
    problems: list[tuple[str, str]] = field(default_factory=list)  # (destination, what is wrong)
    other_targets: set[str] = field(default_factory=set)  # manifests of targets not configured here

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "adopted": [a.__dict__ for a in self.adopted],
            "copies_added": [{"id": i, "destination": d} for i, d in self.copies_added],
            "incomplete": [{"destination": d, "key": k} for d, k in self.incomplete],
            "problems": [{"destination": d, "problem": p} for d, p in self.problems],
            "other_targets": sorted(self.other_targets),
        }


def _read_manifest(storage: Storage, key: str, backup_id: str, target: str) -> dict[str, Any]:
    """The manifest at ``key`` (``target/backup_id.manifest.json``), checked enough to record;
    ValueError says what is wrong."""
    try:
        manifest = json.loads(storage.get_bytes(key))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{key} is not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{key} is not a readable manifest")
    problems = []
    if manifest.get("id") != backup_id or manifest.get("target") != target:
        problems.append(f"it names {manifest.get('target')!r}/{manifest.get('id')!r}, not where it is stored")
    # Only the files a backup of that id writes: retention deletes what the manifest lists.
    elif manifest.get("files") != object_keys(target, backup_id, bool(manifest.get("encryption_key_id"))):
        problems.append("its file list is not that of a backup with this id")
    if not _SHA256.fullmatch(str(manifest.get("sha256", ""))):
        problems.append("it has no SHA-256")
    if not isinstance(manifest.get("size_bytes"), int) or isinstance(manifest.get("size_bytes"), bool):
        problems.append("it has no size")
    if not _is_time(manifest.get("started_at")):
        problems.append("its start time is not a time")
    if manifest.get("finished_at") is not None and not _is_time(manifest["finished_at"]):
        problems.append("its end time is not a time")
    # Everything else the catalog row takes must be of the kind a backup writes.
    kinds: dict[str, tuple[type, ...]] = {
        "duration_s": (int, float), "kind": (str,), "encryption_key_id": (str,), "server_version": (str,),
        "pg_dump_version": (str,), "database": (str,)}
    odd = [name for name, types in kinds.items()
           if manifest.get(name) is not None and not isinstance(manifest[name], types)]
    tags, profile = manifest.get("tags"), manifest.get("profile")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        odd.append("tags")
    if profile is not None and not (isinstance(profile, dict) and isinstance(profile.get("name"), (str, type(None)))):
        odd.append("profile")
    if odd:
        problems.append("unexpected " + ", ".join(odd))
    if problems:
        raise ValueError(f"{key}: " + "; ".join(problems))
    return manifest


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return parse_iso(value) is not None
    except ValueError:
        return False


def _split(key: str, targets: Collection[str] | None) -> tuple[str, str, str] | None:
    """(target, backup id, kind) of one of our files, ``<target>/<id>.<kind>``, else None. A
    configured target's name may itself hold a "/"; anything else laid out differently (another
    deployment's prefix in a shared bucket) is not ours to look at."""
    for target in sorted(targets or (), key=len, reverse=True):
        if key.startswith(target + "/"):
            shape = _NAME.fullmatch(key[len(target) + 1:])
            return (target, shape["id"], shape["kind"]) if shape else None
    shape = _KEY.fullmatch(key)
    return (shape["target"], shape["id"], shape["kind"]) if shape else None


def rescan(catalog: Catalog, storages: list[Storage], *, dry_run: bool,
           targets: Collection[str] | None = None) -> RescanResult:
    """Find complete backups in ``storages`` that ``catalog`` lacks (or lacks a copy of) and,
    unless ``dry_run``, record them. Only backups of ``targets`` (default: any) are recorded."""
    result = RescanResult(dry_run)
    known = {b.id: b for b in catalog.list(include_deleted=True)}
    found: dict[str, tuple[dict[str, Any], list[Copy]]] = {}  # unknown backups: catalog row, copies
    for storage in storages:
        try:
            keys = storage.list_keys()
        except BackupbotError as exc:
            result.problems.append((storage.name, f"cannot list {storage.describe()}: {exc.message}"))
            continue
        present = set(keys)
        for key in keys:
            parts = _split(key, targets)
            if parts is None:
                continue
            target, backup_id, kind = parts
            if targets is not None and target not in targets:
                if kind == "manifest.json":
                    result.other_targets.add(target)
                continue
            if kind.startswith("dump.zst"):
                if f"{target}/{backup_id}{MANIFEST_SUFFIX}" not in present and backup_id not in known:
                    result.incomplete.append((storage.name, key))
                continue
            if kind != "manifest.json":
                continue
            old = known.get(backup_id)
            if old is not None and (old.status == "deleted" or any(c.destination == storage.name for c in old.copies)):
                continue  # recorded already (retention removes a deleted backup's files)
            try:
                manifest = _read_manifest(storage, key, backup_id, target)
                row = catalog_row(manifest, run_id=None, extra_tags=(RESCANNED_TAG,))  # odd content raises here
                if old is not None and manifest["sha256"] != old.sha256:
                    raise ValueError(f"{key} describes a different backup than the catalog's {backup_id}")
                copy = _copy(storage, manifest)
            except ValueError as exc:
                result.problems.append((storage.name, str(exc)))
                continue
            except BackupbotError as exc:
                result.problems.append((storage.name, f"{key}: {exc.message}"))
                continue
            except Exception as exc:  # a manifest shaped like nothing we wrote: one problem, not the end
                result.problems.append((storage.name, f"{key}: unexpected content ({type(exc).__name__}: {redact(exc)})"))
                continue
            if old is not None:
                _record(result, storage.name, f"the copy of {backup_id}", partial(catalog.add_copy, backup_id, copy),
                        result.copies_added, (backup_id, storage.name))
            elif backup_id in found and found[backup_id][0]["sha256"] != row["sha256"]:
                result.problems.append((storage.name, f"{key} differs from the manifest of the same id elsewhere"))
            else:
                found.setdefault(backup_id, (row, []))[1].append(copy)
    for backup_id, (row, copies) in sorted(found.items()):
        adopted = Adopted(backup_id, row["target"], row["created_at"], row["size_bytes"],
                          [c.destination for c in copies])
        _record(result, ", ".join(adopted.destinations), backup_id,
                partial(catalog.add_backup, row, copies, only_if_new=True), result.adopted, adopted)
    return result


def _record(result: RescanResult, where: str, label: str, write: Callable[[], bool], into: list[Any],
            item: Any) -> None:
    """Count ``item`` as recorded (or, in a dry run, as to be): unless the catalog got it meanwhile
    (a backup finishing, another rescan) or cannot take it, which is a problem to report."""
    if result.dry_run:
        into.append(item)
        return
    try:
        if write():
            into.append(item)
    except Exception as exc:  # one item the catalog refused must not lose the others
        result.problems.append((where, f"could not record {label}: {type(exc).__name__}: {redact(exc)}"))


def _copy(storage: Storage, manifest: dict[str, Any]) -> Copy:
    """The copy row for a backup's files in ``storage``; ValueError if they are not all there."""
    files = manifest["files"]
    dump = storage.stat(files["dump"])
    if dump is None or storage.stat(files["roles"]) is None:
        raise ValueError(f"{files['manifest']}: its dump or roles dump is missing")
    if dump.size != manifest["size_bytes"]:
        raise ValueError(f"{files['dump']} has {dump.size} bytes, its manifest says {manifest['size_bytes']}")
    return Copy(destination=storage.name, location=dump.location, status="stored", size_bytes=dump.size,
                stored_at=manifest.get("finished_at"))

"""Verification: a stored copy re-read and checked (SHA-256, decryption, zstd, the archive's
table of contents), and the report comparing a restored database with the backup's manifest."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.core.catalog import Backup, Catalog
from bot.core.codec import DecryptError, HashingReader, ProcessSink, decode, load_identities
from bot.core.pgtools import Command
from bot.core.storage.base import Storage
from bot.errors import BackupbotError, IntegrityError, NotFound


@dataclass
class CopyCheck:
    destination: str
    ok: bool
    error: str | None = None
    toc_entries: int = 0
    toc: str = ""  # the archive's table of contents, as `pg_restore --list` prints it
    head: bytes = b""  # the archive's first bytes, when asked for (``keep_head``)
    key_problem: bool = False  # not ok because our key cannot open it: nothing said about the copy
    moved: bool = False  # not where the settings now look, but recorded elsewhere: nothing said either
    unreachable: bool = False  # could not be read now (network, permissions, unmounted): nothing said either

    @property
    def kind(self) -> str:
        """"ok", or what is wrong: "key", "moved" or "unreadable" (nothing said about the copy
        itself), "missing" or "corrupt" (the copy's own fault, recorded against it)."""
        if self.ok:
            return "ok"
        if self.key_problem:
            return "key"
        if self.moved:
            return "moved"
        if self.unreachable:
            return "unreadable"
        return "missing" if "missing" in (self.error or "") else "corrupt"


def moved_from(backup: Backup, storage: Storage) -> str | None:
    """When the destination's settings changed since the copy was stored (BACKUP_DIR, S3_BUCKET,
    S3_PREFIX), the copy is not where the destination now looks: say where it was recorded."""
    copy = next((c for c in backup.copies if c.destination == storage.name), None)
    if copy is None or not copy.location:
        return None
    try:
        now = storage.location_of(backup.object_key)
    except BackupbotError:
        return None
    if now == copy.location:
        return None
    return (f"the {storage.name} copy of {backup.id} was stored at {copy.location}, but {storage.name} now looks "
            f"at {now} (BACKUP_DIR, S3_BUCKET or S3_PREFIX changed?): move the files there, or set the old value "
            "again")


def open_copy(backup: Backup, storage: Storage, *, prefetch: bool = False) -> HashingReader:
    """A stored copy, checked against its recorded SHA-256 as it is read; close() it after."""
    return HashingReader(storage.open_reader(backup.object_key), backup.sha256,
                         f"the {storage.name} copy of {backup.id}", prefetch=prefetch)


def precheck(backup: Backup, storage: Storage) -> None:
    """Read the whole copy once and compare its SHA-256 before anything is touched."""
    reader = open_copy(backup, storage)
    try:
        while reader.read(1 << 20):
            pass
    finally:
        reader.close()


def read_roles_dump(backup: Backup, storage: Storage) -> bytes:
    """The stored roles dump (encrypted or not), checked against the SHA-256 its manifest
    recorded (backups from before that was recorded: presence only)."""
    key = backup.manifest.get("roles_dump") or backup.manifest.get("files", {}).get("roles")
    if not key:
        raise NotFound(f"backup {backup.id} has no roles dump")
    what = f"the roles dump of the {storage.name} copy of {backup.id}"
    try:
        blob = storage.get_bytes(key)
    except NotFound:
        raise IntegrityError(f"{what} is gone ({key})") from None
    expected = backup.manifest.get("roles_sha256")
    if expected and hashlib.sha256(blob).hexdigest() != expected:
        raise IntegrityError(f"{what} does not match its recorded SHA-256: it was changed or damaged")
    return blob


def verify_copy(backup: Backup, storage: Storage, *, identity_file: Path | None,
                bindir: Path | None = None, keep_head: int = 0) -> CopyCheck:
    """Stream one stored copy through sha256 → decrypt → zstd → `pg_restore --list`."""
    what = f"the {storage.name} copy of {backup.id}"
    try:
        raw = storage.open_reader(backup.object_key)
    except BackupbotError as exc:
        elsewhere = moved_from(backup, storage)  # a changed BACKUP_DIR may not exist at all
        if elsewhere:
            return CopyCheck(storage.name, False, elsewhere, moved=True)
        if isinstance(exc, NotFound):
            return CopyCheck(storage.name, False, f"{what} is missing ({storage.describe()})")
        # Unreadable right now (StorageError): not the copy's fault.
        return CopyCheck(storage.name, False, exc.message, unreachable=True)
    reader = HashingReader(raw, backup.sha256, what)
    lister = Command("pg_restore", bindir).popen(["--list"], None, stdin=subprocess.PIPE)
    sink = ProcessSink(lister.proc.stdin, keep_head)  # type: ignore[arg-type]
    out: list[bytes] = []
    try:
        import threading

        def collect() -> None:
            assert lister.proc.stdout is not None
            out.append(lister.proc.stdout.read())

        t = threading.Thread(target=collect, daemon=True)
        t.start()
        decode(reader, sink, encrypted=bool(backup.encryption_key_id), identity_file=identity_file)  # type: ignore[arg-type]
        sink.close()
        code = lister.wait(120)
        t.join(30)
    except IntegrityError as exc:
        lister.kill()
        reader.close()
        if isinstance(exc, DecryptError):  # a wrong key fails at once, before the copy was hashed
            try:
                precheck(backup, storage)
            except (IntegrityError, NotFound):
                pass  # the copy is at fault
            except BackupbotError as again:  # unreadable now: nothing can be said about the copy
                return CopyCheck(storage.name, False, f"{exc.message}; re-reading it to tell a wrong key from a "
                                 f"damaged copy failed: {again.message}", key_problem=True)
            else:
                return CopyCheck(storage.name, False, f"{exc.message} (the copy itself is intact: its SHA-256 "
                                 "matches; check AGE_IDENTITY_FILE)", key_problem=True)
        return CopyCheck(storage.name, False, exc.message)
    except BackupbotError as exc:  # unreadable (StorageError) mid-way
        lister.kill()
        return CopyCheck(storage.name, False, exc.message, unreachable=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        lister.kill()
        return CopyCheck(storage.name, False, f"{what} could not be read to the end: {exc}", unreachable=True)
    except BaseException:
        lister.kill()
        raise
    finally:
        reader.close()
    if reader.size != backup.size_bytes:
        return CopyCheck(storage.name, False, f"{what} has {reader.size} bytes, the catalog recorded {backup.size_bytes}")
    if code != 0:
        return CopyCheck(storage.name, False, f"{what} is not a readable pg_dump archive: {lister.stderr_tail[-300:]}")
    entries = sum(1 for line in b"".join(out).decode("utf-8", "replace").splitlines()
                  if line and not line.startswith(";"))
    if entries == 0:
        return CopyCheck(storage.name, False, f"{what} has an empty table of contents")
    try:
        read_roles_dump(backup, storage)
    except NotFound:
        pass  # a backup without a roles dump: nothing to check
    except IntegrityError as exc:
        return CopyCheck(storage.name, False, exc.message)
    except BackupbotError as exc:  # unreadable right now
        return CopyCheck(storage.name, False, exc.message, unreachable=True)
    return CopyCheck(storage.name, True, toc_entries=entries, toc=b"".join(out).decode("utf-8", "replace"),
                     head=bytes(sink.head))


def verify_backup(backup: Backup, storages: Sequence[Storage], catalog: Catalog, *,
                  identity_file: Path | None, bindir: Path | None = None) -> list[CopyCheck]:
    """Verify every recorded copy and record the results; the backup is verified when all
    stored copies check out."""
    by_name = {s.name: s for s in storages}
    results: list[CopyCheck] = []
    if backup.encryption_key_id:
        try:
            load_identities(identity_file)
        except BackupbotError as exc:  # a missing or empty key file is ours to fix
            return [CopyCheck(c.destination, False, exc.message, key_problem=True)
                    for c in backup.copies if c.status not in ("failed", "deleted")]
    for copy in backup.copies:
        if copy.status in ("failed", "deleted"):
            continue
        storage = by_name.get(copy.destination)
        if storage is None:
            results.append(CopyCheck(copy.destination, False, f"destination {copy.destination} is not configured now",
                                     unreachable=True))
            continue
        results.append(verify_copy(backup, storage, identity_file=identity_file, bindir=bindir))
    # A copy our key could not open, though its bytes match their checksum, or one that could not
    # be read at all right now (network, permissions, an unmounted disk), says nothing about the
    # backup: it is not recorded, and when no copy failed on its own the backup's state stays.
    # (Recorded as corrupt or missing, it would stop counting for retention.)
    judged = [r for r in results if not (r.key_problem or r.moved or r.unreachable)]
    if len(judged) < len(results) and all(r.ok for r in judged):
        return results
    ok = bool(results) and all(r.ok for r in results)
    catalog.set_verify(
        backup.id, ok, "; ".join(r.error for r in results if r.error) or None,
        {r.destination: ("stored" if r.ok else r.kind, r.error)
         for r in judged if r.destination in {c.destination for c in backup.copies}},
    )
    return results


# -- the post-restore report ------------------------------------------------------------------

@dataclass
class Check:
    ok: bool | None  # None: informational (e.g. an estimated row count)
    label: str
    detail: str = ""

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "•"}[self.ok]
        return f"{mark} {self.label}" + (f" — {self.detail}" if self.detail else "")


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things a person must do by hand

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks] + [f"! {n}" for n in self.notes]

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks], "notes": self.notes}


def compare(manifest: dict[str, Any], restored: dict[str, Any], *, only_table: str | None = None,
            check_sequences: bool = True) -> Report:
    """Row counts per table, RLS flags, policy counts, sequences and roles: manifest vs restored."""
    report = Report()
    src = {f"{t['schema']}.{t['name']}": t for t in manifest.get("tables", [])}
    dst = {f"{t['schema']}.{t['name']}": t for t in restored.get("tables", [])}
    if only_table:
        src = {k: v for k, v in src.items() if k == only_table}
    for name, t in sorted(src.items()):
        got = dst.get(name)
        if got is None:
            report.checks.append(Check(False, f"table {name}", "missing after restore"))
            continue
        if t.get("rows") is None:
            report.checks.append(Check(None, f"rows {name}", f"{got['rows']} (the source could not count it)"))
        elif t.get("exact"):
            same = got["rows"] == t["rows"]
            report.checks.append(Check(same, f"rows {name}", f"{got['rows']} restored, {t['rows']} in backup"))
        else:
            report.checks.append(Check(None, f"rows {name}", f"{got['rows']} restored, ~{t['rows']} estimated in backup"))
    src_rls = {k for k, v in src.items() if v.get("rls")}
    dst_rls = {k for k in src if dst.get(k, {}).get("rls")}
    report.checks.append(Check(
        src_rls == dst_rls, "row level security enabled on the same tables",
        f"{len(dst_rls)} of {len(src_rls)}" + (f"; differs on {', '.join(sorted(src_rls ^ dst_rls))}" if src_rls != dst_rls else ""),
    ))
    bad_pol = [k for k in src if k in dst and src[k].get("policies", 0) != dst[k].get("policies", 0)]
    report.checks.append(Check(
        not bad_pol, "policy counts per table",
        f"{sum(v.get('policies', 0) for v in src.values())} policies" + (f"; differs on {', '.join(bad_pol)}" if bad_pol else ""),
    ))
    if check_sequences and not only_table and manifest.get("sequences"):
        dseq = restored.get("sequences", {})
        bad_seq = [k for k, v in manifest["sequences"].items() if dseq.get(k) != v]
        report.checks.append(Check(not bad_seq, "sequence values", f"{len(manifest['sequences'])} sequences"
                                   + (f"; differs on {', '.join(bad_seq[:5])}" if bad_seq else "")))
    missing_roles = sorted(set(manifest.get("roles", [])) - set(restored.get("roles", [])))
    report.checks.append(Check(not missing_roles, "roles from the backup present",
                               f"missing: {', '.join(missing_roles)}" if missing_roles else f"{len(manifest.get('roles', []))} roles"))
    report.checks.extend(grant_checks(manifest, restored, only_table=only_table))
    return report


# -- grants, default privileges and triggers (manifests from before these facts have none) ----

GRANT_KINDS = ("materialized view", "foreign table", "table", "view", "sequence", "function")
TABLE_GRANTS = "table grants per role identical"
FUNCTION_GRANTS = "function grants per role identical"
DEFAULT_PRIVILEGES = "default privileges identical"
TRIGGERS = "triggers present"


def _split_grant_key(key: str) -> tuple[str, str]:
    """'table public.deals' -> ('table', 'public.deals')."""
    kind = next((k for k in GRANT_KINDS if key.startswith(k + " ")), key.split(" ", 1)[0])
    return kind, key[len(kind) + 1:]


def _acl_diff(want: dict[str, str], got: dict[str, str]) -> list[str]:
    out = []
    for grantee in sorted(set(want) | set(got)):
        if want.get(grantee) != got.get(grantee):
            out.append(f"{grantee} has {got.get(grantee) or 'nothing'} (backup: {want.get(grantee) or 'nothing'})")
    return out


def grant_checks(manifest: dict[str, Any], restored: dict[str, Any], *, only_table: str | None = None) -> list[Check]:
    """Grants per object and role, default privileges and triggers: backup vs restored.

    Schemas the platform manages (a Supabase project's auth and storage) and the platform's own
    roles are left out: a new project brings its own grants and default privileges there."""
    profile = manifest.get("profile") or {}
    managed = set(profile.get("managed_schemas") or {})
    platform = set(profile.get("platform_roles") or [])
    checks: list[Check] = []
    if "grants" in manifest and "grants" in restored:
        src, dst = manifest["grants"], restored["grants"]
        for label, functions in ((TABLE_GRANTS, False), (FUNCTION_GRANTS, True)):
            diffs: list[str] = []
            count = 0
            for key, want in sorted(src.items()):
                kind, obj = _split_grant_key(key)
                if (kind == "function") != functions or obj.split(".", 1)[0] in managed:
                    continue
                if only_table and obj != only_table:
                    continue
                count += 1
                got = dst.get(key)
                if got is None:
                    diffs.append(f"{key} missing")
                else:
                    diffs += [f"{key}: {d}" for d in _acl_diff(want, got)]
            if count or diffs:
                checks.append(Check(not diffs, label, f"{count} objects" + (f"; {'; '.join(diffs[:6])}" if diffs else "")
                                    + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")))
    if not only_table and "default_acl" in manifest and "default_acl" in restored:
        def mine(rows: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
            return {k: v for k, v in rows.items() if k.split(" ")[0] not in platform and k.split(" ")[1] not in managed}

        src_d, dst_d = mine(manifest["default_acl"]), mine(restored["default_acl"])
        diffs = [f"{key}: {d}" for key in sorted(set(src_d) | set(dst_d))
                 for d in _acl_diff(src_d.get(key, {}), dst_d.get(key, {}))]
        checks.append(Check(not diffs, DEFAULT_PRIVILEGES, f"{len(src_d)} rows" + (f"; {'; '.join(diffs[:6])}" if diffs else "")))
    if "triggers" in manifest and "triggers" in restored:
        wanted = [t for t in manifest["triggers"] if not only_table or t.split(" ", 1)[0] == only_table]
        missing = sorted(set(wanted) - set(restored["triggers"]))
        if wanted:
            checks.append(Check(not missing, TRIGGERS, f"missing: {', '.join(missing)}" if missing else f"{len(wanted)} triggers"))
    return checks

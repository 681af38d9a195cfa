"""Verification: a stored copy re-read and checked (SHA-256, decryption, zstd, the archive's
table of contents), and the report comparing a restored database with the backup's manifest."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.core.catalog import Backup, Catalog
from bot.core.codec import HashingReader, ProcessSink, decode
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


def verify_copy(backup: Backup, storage: Storage, *, identity_file: Path | None,
                bindir: Path | None = None) -> CopyCheck:
    """Stream one stored copy through sha256 → decrypt → zstd → `pg_restore --list`."""
    what = f"the {storage.name} copy of {backup.id}"
    try:
        raw = storage.open_reader(backup.object_key)
    except NotFound:
        return CopyCheck(storage.name, False, f"{what} is missing ({storage.describe()})")
    except BackupbotError as exc:
        return CopyCheck(storage.name, False, exc.message)
    reader = HashingReader(raw, backup.sha256, what)
    lister = Command("pg_restore", bindir).popen(["--list"], None, stdin=subprocess.PIPE)
    sink = ProcessSink(lister.proc.stdin)  # type: ignore[arg-type]
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
        return CopyCheck(storage.name, False, exc.message)
    finally:
        close = getattr(raw, "close", None)
        if close:
            close()
    if reader.size != backup.size_bytes:
        return CopyCheck(storage.name, False, f"{what} has {reader.size} bytes, the catalog recorded {backup.size_bytes}")
    if code != 0:
        return CopyCheck(storage.name, False, f"{what} is not a readable pg_dump archive: {lister.stderr_tail[-300:]}")
    entries = sum(1 for line in b"".join(out).decode("utf-8", "replace").splitlines()
                  if line and not line.startswith(";"))
    if entries == 0:
        return CopyCheck(storage.name, False, f"{what} has an empty table of contents")
    return CopyCheck(storage.name, True, toc_entries=entries, toc=b"".join(out).decode("utf-8", "replace"))


def verify_backup(backup: Backup, storages: Sequence[Storage], catalog: Catalog, *,
                  identity_file: Path | None, bindir: Path | None = None) -> list[CopyCheck]:
    """Verify every recorded copy and record the results; the backup is verified when all
    stored copies check out."""
    by_name = {s.name: s for s in storages}
    results: list[CopyCheck] = []
    for copy in backup.copies:
        if copy.status in ("failed", "deleted"):
            continue
        storage = by_name.get(copy.destination)
        if storage is None:
            results.append(CopyCheck(copy.destination, False, f"destination {copy.destination} is not configured now"))
            continue
        results.append(verify_copy(backup, storage, identity_file=identity_file, bindir=bindir))
    ok = bool(results) and all(r.ok for r in results)
    catalog.set_verify(
        backup.id, ok, "; ".join(r.error for r in results if r.error) or None,
        {r.destination: ("stored" if r.ok else ("missing" if "missing" in (r.error or "") else "corrupt"), r.error)
         for r in results if r.destination in {c.destination for c in backup.copies}},
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
    return report

"""The weekly integrity check: re-verify every stored copy of every backup (checksum, then the
archive's table of contents through ``services.verify``), and compare the copies of each backup
with each other. Findings per target become one ``integrity`` alert; a clean run resolves it.

Local and S3 "disagree" when a backup's copies have different statuses (one stored, the other
failed, missing or corrupt) or recorded sizes: a restore would then depend on which copy is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.core.catalog import Backup
from bot.core.monitoring import Alarms
from bot.errors import BackupbotError, NotFound
from bot.render.common import human_bytes
from bot.services import Services

log = logging.getLogger(__name__)
ALERT_REPEAT = timedelta(days=6)  # a weekly check: repeat an unresolved finding each run


@dataclass
class Finding:
    target: str
    backup_id: str
    kind: str  # "missing" | "corrupt" | "disagree" | "key" (our age key cannot open an intact copy) | "unreadable" (not readable right now)
    # | "moved" (recorded where the destination's settings no longer point)
    text: str


@dataclass
class IntegrityReport:
    checked_backups: int = 0
    checked_copies: int = 0
    findings: list[Finding] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def by_target(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {t: [] for t in self.targets}
        for f in self.findings:
            out.setdefault(f.target, []).append(f)
        return out

    def summary(self) -> str:
        if self.ok:
            return (f"🔍 Integrity check: {self.checked_copies} copies of {self.checked_backups} backups "
                    "verified, all intact ✓")
        return (f"⚠ Integrity check: {len(self.findings)} problem(s) in {self.checked_copies} copies of "
                f"{self.checked_backups} backups")

    def as_json(self) -> dict[str, Any]:
        return {"checked_backups": self.checked_backups, "checked_copies": self.checked_copies,
                "findings": [f.__dict__ for f in self.findings]}


def disagreements(backup: Backup) -> list[str]:
    """Differences between a backup's copies as the catalog records them (after verification)."""
    copies = [c for c in backup.copies if c.status != "deleted"]
    if len(copies) < 2:
        return []
    out = []
    statuses = {c.destination: c.status for c in copies}
    if len(set(statuses.values())) > 1:
        out.append("copies disagree: " + ", ".join(f"{d} {s}" for d, s in sorted(statuses.items())))
    sizes = {c.destination: c.size_bytes for c in copies if c.status == "stored" and c.size_bytes is not None}
    if len(set(sizes.values())) > 1:
        out.append("stored sizes differ: " + ", ".join(f"{d} {human_bytes(s)} ({s} B)" for d, s in sorted(sizes.items())))
    return out


def check_integrity(services: Services, *, actor: str = "backupbot", source: str = "schedule",
                    target: str | None = None) -> IntegrityReport:
    """Verify every copy of every backup (of one target, or all); record the run; never raises
    for a single bad backup."""
    names = [services.settings.target(target).name] if target else list(services.settings.targets)
    report = IntegrityReport(targets=names)
    run_id = services.catalog.start_run("integrity", target, actor, source, {"targets": names})
    for name in names:
        for backup in services.catalog.list(target=name):
            # Retention may delete a backup while this runs (a scheduled backup's prune): its
            # copies vanishing then is the policy at work, not a fault to alarm anybody about.
            try:
                results = services.verify(backup.id, actor=actor, source=source, notify=False)
            except NotFound:  # deleted before its turn
                continue
            except BackupbotError as exc:
                report.checked_backups += 1
                report.findings.append(Finding(name, backup.id, "corrupt", exc.message))
                continue
            try:
                refreshed = services.catalog.get(backup.id)  # verify recorded each copy's status
            except NotFound:  # deleted while it was read
                continue
            report.checked_backups += 1
            report.checked_copies += len(results)
            if not results:
                report.findings.append(Finding(name, backup.id, "missing", "no stored copy to verify"))
            report.findings += [Finding(name, backup.id, r.kind, f"{r.destination}: {r.error}")
                                for r in results if not r.ok]
            report.findings += [Finding(name, backup.id, "disagree", text) for text in disagreements(refreshed)]
    services.catalog.finish_run(run_id, "ok" if report.ok else "failed", details=report.as_json(),
                                error=None if report.ok else f"{len(report.findings)} problem(s)")
    return report


def alert_on(report: IntegrityReport, alarms: Alarms, *, now: datetime) -> None:
    """One alert per target with findings; targets now clean are resolved."""
    for name, findings in report.by_target().items():
        if not findings:
            alarms.clear("integrity", name, now=now)
            continue
        backups = sorted({f.backup_id for f in findings})
        detail = "\n".join(f"{f.backup_id}: {f.text}" for f in findings[:20])
        if len(findings) > 20:
            detail += f"\n… and {len(findings) - 20} more"
        alarms.fire("integrity", name, f"integrity check of {name}: {len(findings)} problem(s) in "
                                       f"{len(backups)} backup(s)",
                    now=now, every=ALERT_REPEAT, detail=detail,
                    hint=_hint(findings))


def _hint(findings: list[Finding]) -> str:
    """What to do, for the worst kind of finding: the copies' own faults first."""
    kinds = {f.kind for f in findings}
    if kinds - {"key", "moved", "unreadable"}:
        return ("A missing or corrupt copy cannot be restored from: take a fresh backup "
                "(`/backup now`) and look after the storage behind the failing copy.")
    if "unreadable" in kinds:
        return ("Some copies could not be read at all right now (network, credentials, an unmounted "
                "disk; details below): nothing was recorded against them. Fix the access; the next "
                "check reads them again.")
    if kinds == {"key"}:
        return ("The copies are intact, but the configured age key cannot open them: check "
                "AGE_IDENTITY_FILE (the secret key matching ENCRYPTION_RECIPIENTS).")
    return ("Copies sit where they were stored, not where the settings now look: move them "
            "there or restore the old BACKUP_DIR / S3 settings (details below).")

"""Evidence for the checklist: what the bot can tell by itself about each item, in one short line
(a checkbox description holds 75 characters), with ⚠ where a person should look closer.

Gathered once when a checklist is posted and stored with it, so the message shows what was true
at 09:00 and every later update shows the same facts. A failing probe gives "unavailable", never
an exception: the checklist must go out even when the database is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from bot.core.alerts import Alerts
from bot.core.catalog import iso, parse_iso
from bot.core.drill import last_drill
from bot.core.monitoring import Monitor, disk_usage
from bot.core.schedule_settings import ScheduleSettings
from bot.render.common import human_bytes, human_duration, local_time
from bot.services import Services

log = logging.getLogger(__name__)
AUDIT_WINDOW = timedelta(days=30)


class Evidence:
    def __init__(self, services: Services, sched: ScheduleSettings, now: datetime,
                 supabase_summary: Callable[[], str] | None = None) -> None:
        self.services = services
        self.sched = sched
        self.now = now
        self.tz = sched.tz
        self.monitor = Monitor(services, sched)
        self.supabase_summary = supabase_summary

    def gather(self, kinds: set[str | None]) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind in sorted(k for k in kinds if k):
            probe = getattr(self, f"_{kind}", None)
            if probe is None:
                continue
            try:
                out[kind] = probe()
            except Exception as exc:  # evidence is a courtesy; the checklist must still be posted
                log.warning("checklist evidence %s failed: %s", kind, exc)
                out[kind] = "evidence unavailable (see the bot's log)"
        return out

    def _when(self, dt: datetime) -> str:
        """09:14 today, 'Mon 09:14' this week, else a date."""
        local, today = dt.astimezone(self.tz), self.now.astimezone(self.tz)
        if local.date() == today.date():
            return f"{local:%H:%M}"
        if today - local < timedelta(days=6):
            return f"{local:%a %H:%M}"
        return f"{local:%Y-%m-%d}"

    # -- one probe per evidence kind ---------------------------------------------------------
    def _backup(self) -> str:
        parts = []
        for name in self.services.settings.targets:
            latest = self.services.catalog.latest_good(name)
            prefix = f"{name}: " if len(self.services.settings.targets) > 1 else ""
            if latest is None:
                parts.append(f"⚠ {prefix}no backup yet")
                continue
            age = self.now - latest.created_at
            if age > self.sched.max_backup_age:
                parts.append(f"⚠ {prefix}no backup for {int(age.total_seconds() // 3600)} h")
                continue
            verified = {"ok": "verified ✓", "failed": "verify FAILED"}.get(latest.verify_status, "not verified")
            parts.append(f"{prefix}last backup {self._when(latest.created_at)}, {human_bytes(latest.size_bytes)}, {verified}")
        return "; ".join(parts)

    def _logs(self) -> str:
        since = iso(self.now - timedelta(hours=24)) or ""
        runs = [r for r in self.services.catalog.runs(limit=500) if (r["started_at"] or "") >= since]
        failed = [r for r in runs if r["status"] == "failed"]
        ok_backups = sum(1 for r in runs if r["kind"] == "backup" and r["status"] == "ok")
        open_alerts = len(Alerts(self.services.catalog).open_alerts())
        text = f"24 h: {ok_backups} backup(s) ok, {len(failed)} failed run(s)"
        if open_alerts:
            text += f", {open_alerts} open alert(s)"
        return ("⚠ " if failed or open_alerts else "") + text

    def _growth(self) -> str:
        parts = []
        for name in self.services.settings.targets:
            latest, pct = self.monitor.trend(name)
            prefix = f"{name} " if len(self.services.settings.targets) > 1 else ""
            if latest is None:
                parts.append(f"{prefix}no size recorded yet")
                continue
            warn = "⚠ " if pct is not None and pct > self.sched.growth_alert_percent else ""
            trend = f", {pct:+.1f}% day over day" if pct is not None else ""
            parts.append(f"{warn}{prefix}{human_bytes(latest.database_size)}{trend}")
        return "; ".join(parts)

    def _retention(self) -> str:
        r = self.services.settings.retention
        count = len(self.services.catalog.list())
        hourly = f"each hour of the last {r.hourly}h / " if r.hourly else ""
        return f"keeps {hourly}{r.daily} daily / {r.weekly} weekly / {r.monthly} monthly; {count} stored now"

    def _storage(self) -> str:
        free, total = disk_usage(Path(self.services.settings.backup_dir))
        warn = "⚠ " if self.sched.disk_free_min.breached(free, total) else ""
        text = f"{warn}local {human_bytes(free)} free ({free * 100 / total if total else 0:.0f}%)"
        for name, usage in self.services.storage_usage().items():
            if name.startswith("s3://"):
                text += f"; S3 {human_bytes(usage['used'])} used"
        return text

    def _integrity(self) -> str:
        runs = [r for r in self.services.catalog.runs(kind="integrity", limit=5) if r["status"] in ("ok", "failed")]
        if not runs:
            return "no integrity check yet" + (f" (runs {self.sched.integrity_schedule})"
                                               if self.sched.integrity_schedule else "")
        run = runs[0]
        when = parse_iso(run["started_at"])
        assert when is not None
        if run["status"] == "ok":
            return f"last check {self._when(when)}: all copies intact ✓"
        return f"⚠ last check {self._when(when)}: {run['error'] or 'problems found'}"

    def _drill(self) -> str:
        last = last_drill(self.services)
        if last is None:
            return "⚠ no restore drill yet: `/backup drill` runs one"
        if not last.ok:
            return f"⚠ last drill {local_time(last.at, self.tz, '%Y-%m-%d')} failed"
        return f"last drill {local_time(last.at, self.tz, '%Y-%m-%d')}: RTO {human_duration(last.rto_s)} ✓"

    def _audit(self) -> str:
        since = iso(self.now - AUDIT_WINDOW)
        rows = list(self.services.catalog.db.query(
            "SELECT actor, action FROM audit WHERE at >= ?", [since]))
        people = {r["actor"] for r in rows if r["actor"] not in ("backupbot",)}
        refused = sum(1 for r in rows if r["action"] == "slack.refused")
        restores = sum(1 for r in rows if r["action"] == "restore.start")
        text = f"30 d: {len(rows)} actions by {len(people)} people, {restores} restore(s)"
        if refused:
            text = f"⚠ {text}, {refused} refused"
        return text

    def _supabase(self) -> str:
        if self.supabase_summary is None:
            return "Supabase platform backups not configured"
        return self.supabase_summary()

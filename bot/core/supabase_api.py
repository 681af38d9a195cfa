"""Supabase platform backups, read from the Management API.

``GET {SUPABASE_API_URL}/v1/projects/{ref}/database/backups`` with ``Authorization: Bearer
SUPABASE_ACCESS_TOKEN`` answers ``{"pitr_enabled": bool, "walg_enabled": bool, "backups":
[{"status": "COMPLETED", "inserted_at": "...", "is_physical_backup": bool}, ...]}``.

The platform's own daily backup is a second line of defence: we show PITR on/off and the latest
completed platform backup in ``/backup status`` and on the checklist, and alert when none
completed in the last 26 hours. An unreachable or refusing API is reported ("unavailable"),
never raised into the scheduler or a Slack handler. The token is a registered secret and is
never logged.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.core.catalog import iso, parse_iso
from bot.core.monitoring import Alarms
from bot.core.redact import redact, register_secret
from bot.core.schedule_settings import SupabaseApi
from bot.render.common import human_duration, local_time

log = logging.getLogger(__name__)
MAX_AGE = timedelta(hours=26)  # the platform backs up daily; a day plus slack
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PlatformBackup:
    status: str
    inserted_at: datetime | None
    physical: bool | None = None


@dataclass
class PlatformStatus:
    """What the API said, or why it could not say anything (``error`` set: unavailable)."""

    project_ref: str
    checked_at: datetime
    pitr_enabled: bool | None = None
    walg_enabled: bool | None = None
    backups: list[PlatformBackup] = field(default_factory=list)
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None

    @property
    def latest_completed(self) -> PlatformBackup | None:
        done = [b for b in self.backups if b.status.upper() == "COMPLETED" and b.inserted_at]
        return max(done, key=lambda b: b.inserted_at or self.checked_at) if done else None

    def fresh(self, max_age: timedelta = MAX_AGE) -> bool:
        latest = self.latest_completed
        return bool(latest and latest.inserted_at and self.checked_at - latest.inserted_at <= max_age)

    def summary(self, tz: Any) -> str:
        """One line for status and the checklist."""
        if not self.available:
            return f"Supabase Management API unavailable: {self.error}"
        pitr = "PITR on" if self.pitr_enabled else "PITR off"
        latest = self.latest_completed
        if latest is None or latest.inserted_at is None:
            failed = sum(1 for b in self.backups if b.status.upper() == "FAILED")
            extra = f" ({failed} failed)" if failed else ""
            return f"⚠ {pitr}; no completed platform backup{extra}"
        age = self.checked_at - latest.inserted_at
        mark = "✓" if self.fresh() else f"⚠ {human_duration(age)} ago"
        return f"{pitr}; last platform backup {local_time(latest.inserted_at, tz, '%a %H:%M')} {mark}"


class SupabaseClient:
    def __init__(self, api: SupabaseApi, timeout: float = TIMEOUT_S) -> None:
        self.api = api
        self.timeout = timeout
        register_secret(api.access_token)

    @property
    def url(self) -> str:
        return f"{self.api.api_url}/v1/projects/{self.api.project_ref}/database/backups"

    def fetch(self, now: datetime) -> PlatformStatus:
        status = PlatformStatus(self.api.project_ref, now)
        request = urllib.request.Request(self.url, headers={
            "Authorization": f"Bearer {self.api.access_token}", "Accept": "application/json",
            "User-Agent": "backupbot"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 (http(s) checked at config)
                body = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            hint = {401: " (check SUPABASE_ACCESS_TOKEN)", 403: " (the token cannot read this project)",
                    404: " (check SUPABASE_PROJECT_REF)", 429: " (rate limited)"}.get(exc.code, "")
            status.error = f"HTTP {exc.code}{hint}"
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            status.error = redact(f"cannot reach {self.api.api_url}: {reason}")
        except (ValueError, UnicodeDecodeError):
            status.error = "the API answered with something that is not JSON"
        else:
            try:
                parse_into(status, body)
            except (TypeError, KeyError, ValueError, AttributeError):
                status.error = "the API's answer has an unexpected shape"
        if status.error:
            log.warning("Supabase platform backups of %s: %s", self.api.project_ref, status.error)
        return status


def parse_into(status: PlatformStatus, body: Any) -> None:
    if not isinstance(body, dict):
        raise ValueError("not an object")
    status.pitr_enabled = bool(body.get("pitr_enabled"))
    status.walg_enabled = body.get("walg_enabled")
    status.backups = [
        PlatformBackup(str(b.get("status") or "UNKNOWN"), parse_iso(b.get("inserted_at")), b.get("is_physical_backup"))
        for b in body.get("backups") or []
    ]


def check_platform_backups(client: SupabaseClient, alarms: Alarms, *, now: datetime,
                           repeat: timedelta) -> PlatformStatus:
    """Fetch and decide: alert when no platform backup COMPLETED within 26 h, or when the API
    stays unreachable (its own alert, so the two clear independently). Never raises."""
    ref = client.api.project_ref
    try:
        status = client.fetch(now)
    except Exception as exc:  # belt and braces: this runs inside the scheduler
        log.exception("Supabase check crashed")
        status = PlatformStatus(ref, now, error=redact(f"{type(exc).__name__}: {exc}"))
    if not status.available:
        alarms.fire("supabase", f"{ref} (API)", f"cannot read Supabase platform backups of {ref}: {status.error}",
                    now=now, every=repeat, hint="Check SUPABASE_ACCESS_TOKEN / SUPABASE_PROJECT_REF and "
                                                "https://status.supabase.com")
        return status
    alarms.clear("supabase", f"{ref} (API)", now=now)
    if status.fresh():
        alarms.clear("supabase", ref, now=now)
        return status
    latest = status.latest_completed
    failed = [b for b in status.backups if b.status.upper() == "FAILED"]
    message = (f"no Supabase platform backup of {ref} completed in the last {human_duration(MAX_AGE)}"
               + (f"; the newest completed one is from {iso(latest.inserted_at)}" if latest else ""))
    detail = "; ".join(f"{b.status} at {iso(b.inserted_at)}" for b in status.backups[:5]) or "no backups listed"
    alarms.fire("supabase", ref, message, now=now, every=repeat,
                detail=detail + (f" ({len(failed)} failed)" if failed else ""),
                hint="See Database → Backups in the Supabase dashboard; our own backups are unaffected.")
    return status


STATUS_TIMEOUT_S = 5.0  # /backup status waits for this at most


def status_section(source: Any, now: datetime) -> Any:
    """bot.core.status STATUS_SECTIONS entry: PITR and the latest platform backup (or why not)."""
    from bot.core.schedule_settings import ScheduleSettings
    from bot.core.status import StatusSection

    sched = ScheduleSettings.from_settings(source.settings)
    if sched.supabase is None:
        return None
    status = SupabaseClient(sched.supabase, timeout=STATUS_TIMEOUT_S).fetch(now)
    data = {"available": status.available, "pitr_enabled": status.pitr_enabled, "error": status.error,
            "latest_completed": iso(status.latest_completed.inserted_at) if status.latest_completed else None}
    return StatusSection(f"Supabase platform backups ({sched.supabase.project_ref})", [status.summary(sched.tz)],
                         ok=status.available and status.fresh(), data=data)


def _register_status_section() -> None:
    from bot.core import status

    if status_section not in status.STATUS_SECTIONS:
        status.STATUS_SECTIONS.append(status_section)


_register_status_section()

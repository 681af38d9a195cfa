"""Open alerts: one row per (kind, target) problem from when it is first seen until it is
resolved, so alerts are not repeated on every check and recoveries can be announced."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from bot.core.catalog import Catalog, iso, parse_iso, register_migrations, utcnow
from bot.core.redact import redact

# Kinds used across the bot; free text is allowed, these are the ones the renderers know.
KINDS = ("backup", "upload", "verify", "retention", "stale", "disk", "growth", "integrity",
         "supabase", "restore", "drill", "slack")


def _m1(db: sqlite_utils.Database) -> None:
    db.table("alerts").create({
        "id": int, "kind": str, "target": str, "message": str, "detail": str, "hint": str,
        "opened_at": str, "last_notified_at": str, "resolved_at": str, "slack_ts": str, "count": int,
    }, pk="id")
    db.table("alerts").create_index(["kind", "target", "resolved_at"])


register_migrations("alerts", [_m1])


@dataclass
class Alert:
    id: int
    kind: str
    target: str | None
    message: str
    detail: str
    hint: str
    opened_at: datetime
    last_notified_at: datetime | None
    resolved_at: datetime | None
    slack_ts: str | None
    count: int

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Alert:
        opened = parse_iso(r["opened_at"])
        assert opened is not None
        return cls(r["id"], r["kind"], r["target"] or None, r["message"], r["detail"] or "", r["hint"] or "",
                   opened, parse_iso(r["last_notified_at"]), parse_iso(r["resolved_at"]), r["slack_ts"],
                   r["count"] or 1)


class Alerts:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.migrate()  # applies this module's migrations if the catalog was opened before import

    def _open_row(self, kind: str, target: str | None) -> dict[str, Any] | None:
        rows = list(self.catalog.db.query(
            "SELECT * FROM alerts WHERE kind = ? AND coalesce(target, '') = ? AND resolved_at IS NULL "
            "ORDER BY id DESC LIMIT 1", [kind, target or ""]))
        return rows[0] if rows else None

    def raise_(self, kind: str, target: str | None, message: str, *, detail: str = "", hint: str = "",
               now: datetime | None = None) -> tuple[Alert, bool]:
        """Open an alert, or bump the open one. Returns (alert, newly_opened)."""
        now = now or utcnow()
        with self.catalog.tx() as db:
            row = self._open_row(kind, target)
            if row:
                # A repeat may come without the advice the first report had: keep what we know.
                db.table("alerts").update(row["id"], {"message": redact(message),
                                                "detail": redact(detail)[-3000:] or row["detail"],
                                                "hint": hint or row["hint"], "count": (row["count"] or 1) + 1})
                alert_id, new = row["id"], False
            else:
                table = db.table("alerts")  # last_pk lives on this Table object, not on a new db.table("alerts")
                table.insert({"kind": kind, "target": target, "message": redact(message),
                                     "detail": redact(detail)[-3000:], "hint": hint, "opened_at": iso(now),
                                     "count": 1})
                alert_id, new = int(table.last_pk), True  # type: ignore[arg-type]
        return self.get(alert_id), new

    def resolve(self, kind: str, target: str | None, now: datetime | None = None, *,
                alert_id: int | None = None, about: str | None = None) -> Alert | None:
        """Close the open alert of this kind and target; returns it if there was one. With
        ``alert_id`` / ``about``: only if the open one is that alert / its message names that,
        checked in the same transaction."""
        with self.catalog.tx() as db:
            row = self._open_row(kind, target)
            if not row or (alert_id is not None and row["id"] != alert_id) \
                    or (about is not None and about not in (row["message"] or "").split()):
                return None
            db.table("alerts").update(row["id"], {"resolved_at": iso(now or utcnow())})
        return self.get(row["id"])

    def notified(self, alert_id: int, slack_ts: str | None = None, now: datetime | None = None) -> None:
        updates: dict[str, Any] = {"last_notified_at": iso(now or utcnow())}
        if slack_ts:
            updates["slack_ts"] = slack_ts
        with self.catalog.tx() as db:
            db.table("alerts").update(alert_id, updates)

    def due(self, alert: Alert, every: timedelta, now: datetime | None = None) -> bool:
        """Should an open alert be repeated now (never notified, or last notified ≥ every ago)?"""
        now = now or utcnow()
        return alert.last_notified_at is None or now - alert.last_notified_at >= every

    def get(self, alert_id: int) -> Alert:
        return Alert.from_row(next(self.catalog.db.query("SELECT * FROM alerts WHERE id = ?", [alert_id])))

    def open_alerts(self, target: str | None = None) -> list[Alert]:
        sql = "SELECT * FROM alerts WHERE resolved_at IS NULL"
        params: list[Any] = []
        if target is not None:
            sql += " AND target = ?"
            params.append(target)
        return [Alert.from_row(r) for r in self.catalog.db.query(sql + " ORDER BY id", params)]

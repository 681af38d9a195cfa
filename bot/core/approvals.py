"""Restore requests and their approval state machine, kept in the catalog.

Every transition is a compare-and-set inside one ``catalog.tx()`` (BEGIN IMMEDIATE): the UPDATE
names the status it expects (and, for decisions, that the request has not expired), so double
clicks, two approvers at once, a click after expiry or after a rejection change nothing and get
a reason back instead. All state lives here, so pending requests survive a restart of the bot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from bot.core.catalog import Catalog, iso, parse_iso, register_migrations, utcnow
from bot.errors import NotFound

STATUSES = ("pending", "approved", "running", "succeeded", "failed", "rejected", "cancelled", "expired")
FINAL = frozenset({"succeeded", "failed", "rejected", "cancelled", "expired"})

# action -> (status it needs, status it sets, must the request still be unexpired?)
TRANSITIONS: dict[str, tuple[str, str, bool]] = {
    "approve": ("pending", "approved", True),
    "reject": ("pending", "rejected", True),
    "cancel": ("pending", "cancelled", True),
    "expire": ("pending", "expired", False),
    "start": ("approved", "running", False),
}

# Refusal reasons returned to callers (the renderer turns them into sentences).
NOT_FOUND = "not_found"
EXPIRED = "expired"
SELF_APPROVAL = "self_approval"
NOT_REQUESTER = "not_requester"
NOT_PENDING = "not_pending"


def _m1(db: sqlite_utils.Database) -> None:
    db.table("restore_requests").create({
        "id": int, "backup_id": str, "target": str, "mode": str, "into": str, "table": str,
        "requester": str, "status": str, "created_at": str, "expires_at": str,
        "decided_by": str, "decided_at": str,
        # channel + message_ts: the request in the channel (also the thread's parent);
        # controls_ts: the reply in its thread that carries the buttons.
        "channel": str, "message_ts": str, "controls_ts": str,
        "confirm_text": str,  # what the approver must type (the target name) for --in-place
        "destination": str,  # host:port/dbname, never a password
        "details": str,  # JSON: facts about the backup shown in the messages
        "started_at": str, "finished_at": str,
        "result": str,  # JSON: report lines, post-restore result, error, target state
        "safety_backup_id": str, "rto_s": float,
    }, pk="id", not_null={"backup_id", "target", "mode", "requester", "status", "created_at", "expires_at"})
    db.table("restore_requests").create_index(["status", "expires_at"])


register_migrations("approvals", [_m1])


@dataclass
class ApprovalRequest:
    id: int
    backup_id: str
    target: str
    mode: str  # into | in-place
    into: str | None
    table: str | None
    requester: str
    status: str
    created_at: datetime
    expires_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    channel: str | None = None
    message_ts: str | None = None
    controls_ts: str | None = None
    confirm_text: str | None = None
    destination: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] = field(default_factory=dict)
    safety_backup_id: str | None = None
    rto_s: float | None = None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> ApprovalRequest:
        created, expires = parse_iso(r["created_at"]), parse_iso(r["expires_at"])
        assert created is not None and expires is not None
        return cls(
            id=int(r["id"]), backup_id=r["backup_id"], target=r["target"], mode=r["mode"], into=r["into"],
            table=r["table"], requester=r["requester"], status=r["status"], created_at=created,
            expires_at=expires, decided_by=r["decided_by"], decided_at=parse_iso(r["decided_at"]),
            channel=r["channel"], message_ts=r["message_ts"], controls_ts=r["controls_ts"],
            confirm_text=r["confirm_text"], destination=r["destination"] or "",
            details=json.loads(r["details"] or "{}"), started_at=parse_iso(r["started_at"]),
            finished_at=parse_iso(r["finished_at"]), result=json.loads(r["result"] or "{}"),
            safety_backup_id=r["safety_backup_id"], rto_s=r["rto_s"],
        )

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at <= now

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "backup_id": self.backup_id, "target": self.target, "mode": self.mode,
            "into": self.into, "table": self.table, "requester": self.requester, "status": self.status,
            "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
            "decided_by": self.decided_by, "decided_at": iso(self.decided_at), "destination": self.destination,
            "safety_backup_id": self.safety_backup_id, "rto_s": self.rto_s, "result": self.result,
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of one attempted transition: ``ok``, or the reason nothing changed."""

    ok: bool
    request: ApprovalRequest | None
    reason: str = ""


def refusal(request: ApprovalRequest | None, action: str, actor: str, now: datetime) -> str | None:
    """Why ``actor`` may not perform ``action`` on ``request`` now (None: allowed). Pure."""
    if request is None:
        return NOT_FOUND
    needs, _sets, unexpired = TRANSITIONS[action]
    if request.status != needs:
        return NOT_PENDING if needs == "pending" else request.status
    if unexpired and request.expired_at(now):
        return EXPIRED
    if action == "approve" and actor == request.requester:
        return SELF_APPROVAL
    if action == "cancel" and actor != request.requester:
        return NOT_REQUESTER
    return None


class ApprovalStore:
    """Restore requests in the catalog; every method that changes state is a compare-and-set."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.migrate()  # applies this module's migration when the catalog was opened before import

    # -- creating and reading -------------------------------------------------------------------
    def create(self, *, backup_id: str, target: str, mode: str, requester: str, ttl: timedelta,
               into: str | None = None, table: str | None = None, channel: str | None = None,
               confirm_text: str | None = None, destination: str = "",
               details: dict[str, Any] | None = None, now: datetime | None = None) -> ApprovalRequest:
        now = now or utcnow()
        with self.catalog.tx() as db:
            table_ = db.table("restore_requests")  # last_pk lives on this Table object
            table_.insert({
                "backup_id": backup_id, "target": target, "mode": mode, "into": into, "table": table,
                "requester": requester, "status": "pending", "created_at": iso(now),
                "expires_at": iso(now + ttl), "channel": channel, "confirm_text": confirm_text,
                "destination": destination, "details": json.dumps(details or {}, default=str),
            })
            request_id = int(table_.last_pk)  # type: ignore[arg-type]  # sqlite-utils types it loosely
        return self.get(request_id)

    def attach_messages(self, request_id: int, *, channel: str, message_ts: str | None,
                        controls_ts: str | None) -> ApprovalRequest:
        with self.catalog.tx() as db:
            db.table("restore_requests").update(request_id, {"channel": channel, "message_ts": message_ts,
                                                       "controls_ts": controls_ts})
        return self.get(request_id)

    def get(self, request_id: int) -> ApprovalRequest:
        found = self.find(request_id)
        if found is None:
            raise NotFound(f"no restore request #{request_id}")
        return found

    def find(self, request_id: int) -> ApprovalRequest | None:
        rows = list(self.catalog.db.query("SELECT * FROM restore_requests WHERE id = ?", [request_id]))
        return ApprovalRequest.from_row(rows[0]) if rows else None

    def recent(self, *, status: str | None = None, limit: int = 50) -> list[ApprovalRequest]:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self.catalog.db.query(f"SELECT * FROM restore_requests {where} ORDER BY id DESC LIMIT ?",
                                     [*params, limit])
        return [ApprovalRequest.from_row(r) for r in rows]

    # -- decisions ------------------------------------------------------------------------------
    def approve(self, request_id: int, approver: str, now: datetime | None = None) -> Decision:
        return self._transition(request_id, "approve", approver, now)

    def reject(self, request_id: int, approver: str, now: datetime | None = None) -> Decision:
        return self._transition(request_id, "reject", approver, now)

    def cancel(self, request_id: int, actor: str, now: datetime | None = None) -> Decision:
        return self._transition(request_id, "cancel", actor, now)

    def start(self, request_id: int, now: datetime | None = None) -> Decision:
        """approved → running: only one executor ever runs a request."""
        return self._transition(request_id, "start", "backupbot", now)

    def _transition(self, request_id: int, action: str, actor: str, now: datetime | None) -> Decision:
        now = now or utcnow()
        needs, sets, unexpired = TRANSITIONS[action]
        with self.catalog.tx() as db:
            request = self.find(request_id)
            reason = refusal(request, action, actor, now)
            if reason == EXPIRED and request is not None:
                # A click after the deadline settles the request the sweep would have settled.
                db.execute("UPDATE restore_requests SET status = 'expired' WHERE id = ? AND status = 'pending'",
                           [request_id])
            if reason is not None:
                return Decision(False, self.find(request_id), reason)
            updates: dict[str, str | None] = {"status": sets}
            if action in ("approve", "reject", "cancel"):
                updates |= {"decided_by": actor, "decided_at": iso(now)}
            elif action == "start":
                updates["started_at"] = iso(now)
            assignments = ", ".join(f"{k} = ?" for k in updates)
            sql = f"UPDATE restore_requests SET {assignments} WHERE id = ? AND status = ?"
            params: list[Any] = [*updates.values(), request_id, needs]
            if unexpired:
                sql += " AND expires_at > ?"
                params.append(iso(now))
            changed = db.execute(sql, params).rowcount
        request = self.find(request_id)
        if changed != 1:  # cannot happen under the transaction; kept as the CAS's own guard
            return Decision(False, request, NOT_PENDING)
        return Decision(True, request)

    def finish(self, request_id: int, *, ok: bool, result: dict[str, Any], safety_backup_id: str | None = None,
               rto_s: float | None = None, now: datetime | None = None) -> ApprovalRequest:
        """running (or approved, when it failed before starting) → succeeded | failed."""
        now = now or utcnow()
        with self.catalog.tx() as db:
            db.execute(
                "UPDATE restore_requests SET status = ?, finished_at = ?, result = ?, safety_backup_id = "
                "coalesce(?, safety_backup_id), rto_s = coalesce(?, rto_s) "
                "WHERE id = ? AND status IN ('approved', 'running')",
                ["succeeded" if ok else "failed", iso(now), json.dumps(result, default=str), safety_backup_id,
                 rto_s, request_id])
        return self.get(request_id)

    def set_safety_backup(self, request_id: int, backup_id: str) -> None:
        with self.catalog.tx() as db:
            db.table("restore_requests").update(request_id, {"safety_backup_id": backup_id})

    # -- sweeps ---------------------------------------------------------------------------------
    def expire_due(self, now: datetime | None = None) -> list[ApprovalRequest]:
        """Mark every pending request past its deadline expired; returns the ones this call marked."""
        now = now or utcnow()
        with self.catalog.tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM restore_requests WHERE status = 'pending' AND expires_at <= ?", [iso(now)])]
            for request_id in ids:
                db.execute("UPDATE restore_requests SET status = 'expired' WHERE id = ? AND status = 'pending'",
                           [request_id])
        return [self.get(i) for i in ids]

    def abandon_unfinished(self, now: datetime | None = None) -> list[ApprovalRequest]:
        """At start-up: requests left approved/running by a stopped bot are failures, said so."""
        now = now or utcnow()
        error = "interrupted: backupbot stopped while this restore ran"
        with self.catalog.tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM restore_requests WHERE status IN ('approved', 'running')")]
            for request_id in ids:
                db.execute("UPDATE restore_requests SET status = 'failed', finished_at = ?, result = ? "
                           "WHERE id = ? AND status IN ('approved', 'running')",
                           [iso(now), json.dumps({"ok": False, "error": error, "step": "interrupted"}), request_id])
        return [self.get(i) for i in ids]

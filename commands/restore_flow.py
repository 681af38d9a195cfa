"""The life of a restore request on Slack: the checks before it is posted, the run after it is
approved (reported step by step in the request's thread), and the upkeep of its messages as it
is decided, expires or is interrupted. The state itself lives in bot.core.approvals."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from bot.app import AppContext
from bot.core.approvals import EXPIRED, ApprovalRequest, ApprovalStore, Decision
from bot.core.catalog import Backup, iso
from bot.core.pgtools import ConnInfo
from bot.core.postrestore import run_post_restore
from bot.core.redact import redact
from bot.core.restore import PG_RESTORE_STARTED, RestoreRequest
from bot.errors import BackupbotError
from bot.render import restore as render
from bot.render.common import human_bytes, human_duration, mention

log = logging.getLogger(__name__)
SWEEP_INTERVAL_S = 60.0
# Services.restore reports this once pg_restore's single transaction has committed: from then
# on a failure no longer leaves an in-place target unchanged.
RESTORE_COMMITTED = "pg_restore finished"
DECIDED = {"approve": "restore_request.approved", "reject": "restore_request.rejected",
           "cancel": "restore_request.cancelled"}


class RestoreFlow:
    """Restore requests for one app context (the catalog holds all state; this holds none)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.store = ApprovalStore(ctx.core.catalog)

    def now(self) -> datetime:
        return self.ctx.core.clock()

    def audit(self, event: str, user: str, request: ApprovalRequest | None = None, **details: Any) -> None:
        """One audit event with the Slack user id (``attempt`` in details: what was tried)."""
        if request is not None:
            details = {"request_id": request.id, "mode": request.mode, **details}
            self.ctx.audit(event, user, target=request.target, backup_id=request.backup_id, **details)
        else:
            self.ctx.audit(event, user, **details)

    # -- who may do what ------------------------------------------------------------------------
    def may_request(self, user: str) -> bool:
        requesters = self.ctx.settings.slack.restore_requesters
        return self.ctx.is_operator(user) if requesters is None else self.ctx.matches(user, requesters)

    def may_approve(self, user: str) -> bool:
        approvers = self.ctx.settings.slack.restore_approvers
        return bool(approvers) and self.ctx.matches(user, approvers)

    def request_problem(self, user: str) -> str | None:
        """Why ``user`` cannot ask for a restore now (None: they can)."""
        s = self.ctx.settings.slack
        if not self.may_request(user):
            who = "RESTORE_REQUESTERS" if s.restore_requesters is not None else "BACKUP_OPERATORS (RESTORE_REQUESTERS is not set)"
            note = self.ctx.lookup_note(s.restore_requesters if s.restore_requesters is not None else s.operators)
            return f"You may not request restores: ask an admin to add you to {who}." + note
        if not s.restore_approvers:
            return ("Restores need a second person's approval, and no approvers are configured: set "
                    "RESTORE_APPROVERS to comma-separated Slack user ids (U…) and/or user-group ids (S…), "
                    "then restart backupbot.")
        others: set[str] = set()
        for entry in s.restore_approvers:
            others |= set(self.ctx.group_members(entry)) if entry.startswith("S") else {entry}
        if not others - {user}:
            note = self.ctx.lookup_note(s.restore_approvers)
            if note:
                return "Cannot tell who may approve this restore right now." + note
            return ("Nobody but you can approve this restore (RESTORE_APPROVERS resolves to no one else; user "
                    "groups are read with the usergroups:read scope). Ask an admin to add another approver.")
        return None

    # -- step 1: checks, then the request and its controls -------------------------------------
    def request(self, user: str, channel: str, req: RestoreRequest, respond: Callable[..., Any]) -> ApprovalRequest | None:
        """Check the backup (re-reading it), the target and the destination; then post. Problems
        are answered ephemerally with what to do, audited, and nothing is created."""
        core = self.ctx.core

        def refuse(reason: str, **details: Any) -> None:
            self.audit("restore_request.refused", user, attempt="request", reason=redact(reason),
                       backup_id=req.backup_id, then=lambda: respond(text=f":x: {reason}", response_type="ephemeral"),
                       **details)

        try:
            backup = core.get_backup(req.backup_id)
            dest_url, target = core.restore_destination(req, backup)
        except BackupbotError as exc:
            refuse(exc.message)
            return None
        assert target is not None  # Slack never offers --to (it would put a URL in the channel)
        checks = core.verify(backup.id, actor=user, source="slack")
        if not checks or not all(c.ok for c in checks):
            problems = "; ".join(c.error or c.destination for c in checks if not c.ok) or "no stored copy to check"
            refuse(f"Backup `{backup.id}` failed verification, so it will not be restored: {problems}. "
                   "Pick another backup (`/backup list`) or run `backupbot verify` for details.")
            return None
        info = ConnInfo.parse(dest_url)
        ttl = timedelta(minutes=self.ctx.settings.slack.restore_approval_ttl_minutes)
        request = self.store.create(
            backup_id=backup.id, target=target.name, mode=req.mode, requester=user, ttl=ttl,
            into=info.dbname if req.mode == "into" else None, table=req.table, channel=channel,
            confirm_text=target.name if req.mode == "in-place" else None, destination=info.describe(),
            details=_backup_facts(backup), now=self.now())
        msg = render.request_message(request, self.ctx.settings.tz, self.now())
        message_ts = self.ctx.notifier.post(msg["text"], msg["blocks"], channel=channel)
        controls_ts = None
        if message_ts:
            ctl = render.controls_message(request, self.ctx.settings.slack.restore_approvers, self.ctx.settings.tz)
            controls_ts = self.ctx.notifier.post(ctl["text"], ctl["blocks"], channel=channel, thread_ts=message_ts)
        request = self.store.attach_messages(request.id, channel=channel, message_ts=message_ts, controls_ts=controls_ts)
        if not message_ts or not controls_ts:
            # Without its buttons nobody could approve it: withdraw it rather than leave it dangling.
            self.store.cancel(request.id, user, self.now())
            self.refresh(self.store.get(request.id))
            refuse(f"Could not post the request to Slack ({self.ctx.notifier.last_error}); nothing was requested.")
            return None
        self.audit("restore_request.created", user, request, destination=request.destination,
                   expires_at=iso(request.expires_at), table=req.table)
        link = self.ctx.notifier.permalink(message_ts, channel=channel)
        respond(text=f"Restore request #{request.id} posted{f': {link}' if link else ''}. Approvers were asked "
                     "in its thread; you can cancel it there.", response_type="ephemeral")
        return request

    # -- decisions ------------------------------------------------------------------------------
    def decided(self, decision: Decision, action: str, user: str) -> None:
        """Audit and show a decision; on approval, start the run in the background."""
        request = decision.request
        if not decision.ok:
            if decision.reason == EXPIRED and request is not None:
                self.expired(request, by_click=user)
            self.audit("restore_request.refused", user, request, attempt=action, reason=decision.reason)
            return
        assert request is not None
        self.audit(DECIDED[action], user, request, requester=request.requester)
        self.refresh(request)
        if action == "approve":
            self.ctx.submit(self.execute, request.id)

    def expired(self, request: ApprovalRequest, by_click: str | None = None) -> None:
        self.audit("restore_request.expired", request.requester, request,
                   expires_at=iso(request.expires_at), noticed_by=by_click or "expiry sweep")
        self.refresh(request)

    def expire_due(self, now: datetime | None = None) -> list[ApprovalRequest]:
        """Mark requests past their deadline expired and update their messages (the sweep's job)."""
        expired = self.store.expire_due(now or self.now())
        for request in expired:
            self.expired(request)
        return expired

    def abandon_unfinished(self) -> list[ApprovalRequest]:
        """At start-up: say in each thread that a run was interrupted by a stop of the bot."""
        abandoned = self.store.abandon_unfinished(self.now())
        for request in abandoned:
            self.audit("restore_request.failed", request.decided_by or request.requester, request,
                       step="interrupted", error=request.result.get("error"))
            error = str(request.result.get("error"))
            state = render.target_state(request, "interrupted", request.safety_backup_id)
            self._post_in_thread(request, render.failure_message(request, "interrupted", error, state))
            self.ctx.core.emit("restore.failed", target=request.target, backup_id=request.backup_id, error=error,
                               safety_backup=request.safety_backup_id)
            self.refresh(request)
        return abandoned

    def refresh(self, request: ApprovalRequest) -> None:
        """Re-render the request and its controls for the current state (buttons go when not pending)."""
        if not request.channel:
            return
        tz = self.ctx.settings.tz
        if request.message_ts:
            msg = render.request_message(request, tz, self.now())
            self.ctx.notifier.update(request.message_ts, msg["text"], msg["blocks"], channel=request.channel)
        if request.controls_ts:
            ctl = render.controls_message(request, self.ctx.settings.slack.restore_approvers, tz)
            self.ctx.notifier.update(request.controls_ts, ctl["text"], ctl["blocks"], channel=request.channel)

    def _post_in_thread(self, request: ApprovalRequest, msg: dict[str, Any]) -> str | None:
        if not request.channel or not request.message_ts:
            return None
        return self.ctx.notifier.post(msg["text"], msg["blocks"], channel=request.channel, thread_ts=request.message_ts)

    # -- step 4: the run ------------------------------------------------------------------------
    def execute(self, request_id: int) -> ApprovalRequest:
        started = self.store.start(request_id, self.now())
        if not started.ok:  # another worker (or instance) already runs it
            assert started.request is not None
            return started.request
        request = started.request
        assert request is not None
        approver = request.decided_by or "?"
        self.audit("restore_request.started", approver, request, requester=request.requester)
        self.refresh(request)
        run = _Run(self, request)
        t0 = time.monotonic()
        core = self.ctx.core
        req = RestoreRequest(request.backup_id, mode=request.mode, into=request.into, target=request.target,
                             table=request.table)
        try:
            backup = core.get_backup(request.backup_id)
            core.restore_destination(req, backup)
        except BackupbotError as exc:  # e.g. deleted by retention since the request
            return run.fail("preparation", exc.message, emit=True)
        run.step(f":arrow_forward: Restore of `{backup.id}` approved by {mention(approver)}, starting.")
        run.phase = "restore"
        try:
            outcome, safety = core.restore(req, actor=request.requester, source="slack", progress=run.progress,
                                           safety_backup=True, on_safety_backup=run.safety_taken)
        except BackupbotError as exc:  # Services.restore audited it and raised the alert itself
            return run.fail(run.phase, exc.message, emit=False)
        except Exception as exc:
            log.exception("restore #%s crashed", request.id)
            return run.fail(run.phase, f"unexpected {type(exc).__name__}: {redact(exc)}", emit=True)
        report = outcome.report
        run.step(("✓" if report.ok else "✗") + f" restored into {outcome.destination} and verified "
                 f"({len(report.checks) - len(report.failures)} of {len(report.checks)} checks passed)")
        post: dict[str, Any] | None = None
        command = self.ctx.settings.post_restore_command
        if command and report.ok:
            run.step(f":gear: running the post-restore command `{redact(command)}`")
            result = run_post_restore(command, outcome.dest_url, timeout_s=self.ctx.settings.post_restore_timeout_s)
            post = {**result.as_json(), "summary": result.summary()}
            run.step(("✓ " if result.ok else "✗ ") + result.summary())
        elif command:
            post = {"ok": False, "summary": f"`{redact(command)}` skipped: verification failed"}
        total = round(time.monotonic() - t0, 3)
        msg = render.report_message(request, report.lines(), report_ok=report.ok, post_restore=post,
                                    rto_s=outcome.duration_s, total_s=total, destination=outcome.destination)
        self._post_in_thread(request, msg)
        safety_id = safety.id if safety else None
        if not report.ok:
            error = "verification found differences: " + "; ".join(c.line() for c in report.failures)
            return run.fail("verification", error, emit=True, rto_s=outcome.duration_s, report=report.lines())
        if post is not None and not post.get("ok"):
            return run.fail("post-restore command", str(post["summary"]), emit=True, rto_s=outcome.duration_s,
                            report=report.lines(), post_restore=post)
        summary = f"✓ verified ({len(report.checks)} checks)" + (", post-restore command passed" if post else "")
        done = self.store.finish(request.id, ok=True, safety_backup_id=safety_id, rto_s=outcome.duration_s, now=self.now(),
                                 result={"ok": True, "summary": summary, "destination": outcome.destination,
                                         "report": report.lines(), "post_restore": post, "total_s": total})
        run.step(f":white_check_mark: done — RTO {human_duration(outcome.duration_s)}", done=True)
        self.audit("restore_request.succeeded", approver, done, destination=outcome.destination,
                   rto_s=outcome.duration_s, safety_backup=safety_id, run_id=outcome.run_id)
        self.refresh(done)
        return done


class _Run:
    """One run's progress message in the thread, its current phase and its failure path."""

    def __init__(self, flow: RestoreFlow, request: ApprovalRequest) -> None:
        self.flow = flow
        self.request = request
        self.phase = "preparation"
        self.safety_id: str | None = None
        self.lines: list[str] = []
        self.ts: str | None = None
        self._lock = threading.Lock()

    def step(self, line: str, *, done: bool = False) -> None:
        with self._lock:
            self.lines.append(line)
            msg = render.progress_message(self.request, self.lines, done=done)
            notifier = self.flow.ctx.notifier
            if self.ts is None:
                self.ts = self.flow._post_in_thread(self.request, msg)
            else:
                notifier.update(self.ts, msg["text"], msg["blocks"], channel=self.request.channel)

    def progress(self, message: str) -> None:
        if message.startswith("taking a safety backup"):
            self.phase = "safety backup"
            self.step(f":floppy_disk: {message}")
            return
        if message == PG_RESTORE_STARTED:
            self.phase = "load"
        if message == RESTORE_COMMITTED:
            self.phase = "verification"
        self.step(f"• {message}")

    def safety_taken(self, backup: Backup) -> None:
        self.safety_id = backup.id
        self.phase = "restore"
        self.flow.store.set_safety_backup(self.request.id, backup.id)
        self.step(f"✓ safety backup `{backup.id}` taken ({human_bytes(backup.size_bytes)}, tagged pre-restore); "
                  f"{self.request.target} can be brought back to this moment from it")

    def fail(self, step: str, error: str, *, emit: bool, rto_s: float | None = None,
             **extra: Any) -> ApprovalRequest:
        flow, request = self.flow, self.request
        state = render.target_state(request, step, self.safety_id)
        self.step(f":x: failed at the {step} step", done=True)
        done = flow.store.finish(request.id, ok=False, safety_backup_id=self.safety_id, rto_s=rto_s, now=flow.now(),
                                 result={"ok": False, "step": step, "error": error, "target_state": state, **extra})
        flow._post_in_thread(request, render.failure_message(request, step, error, state))
        if emit:  # failures inside Services.restore were alerted there already
            flow.ctx.core.emit("restore.failed", target=request.target, backup_id=request.backup_id, error=error,
                               safety_backup=self.safety_id)
        flow.audit("restore_request.failed", request.decided_by or request.requester, done, step=step,
                   error=error, target_state=state, safety_backup=self.safety_id)
        flow.refresh(done)
        return done


def _backup_facts(backup: Backup) -> dict[str, Any]:
    """What the messages say about the backup, kept with the request (retention may delete it)."""
    return {"backup_created_at": iso(backup.created_at), "size_bytes": backup.size_bytes,
            "source_target": backup.target, "database": backup.database, "verified_at": iso(backup.verified_at)}


def start_expiry_sweep(ctx: AppContext, interval_s: float = SWEEP_INTERVAL_S) -> Callable[[], None]:
    """Start hook: settle runs a stop interrupted, then expire overdue requests every minute."""
    flow = RestoreFlow(ctx)
    flow.abandon_unfinished()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                flow.expire_due()
            except Exception:  # keep sweeping: one bad row or a Slack outage must not end the thread
                log.exception("restore expiry sweep failed")

    thread = threading.Thread(target=loop, name="restore-expiry", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=5)

    return stopper

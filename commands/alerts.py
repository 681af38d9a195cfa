"""Failure alerts and recoveries in SLACK_CHANNEL, driven by the core's events.

Subscribes to ``services.listeners``. Every failure (``*.failed``) and every generic alert
(``<kind>.alert`` with target=, message=, detail=, hint=, kind=) opens or bumps an Alert and is
posted: what failed, for which target, the error's tail, ALERT_MENTIONS, RUNBOOK_URL, and a
Retry button where retrying makes sense. ``backup.done`` resolves backup/upload alerts (or opens
an upload alert when a copy failed); ``<kind>.resolved`` resolves any kind. A recovery is posted
in the alert's thread and the alert itself loses its Retry button.

Other features reuse the posting with ``services.emit(...)`` or ``post_alert``/``post_recovery``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from bot.core.alerts import Alert, Alerts
from bot.core.catalog import Backup
from bot.errors import BackupbotError, NotFound
from bot.render.backup import (
    RETRY_ACTION,
    alert_message,
    recovery_message,
    resolved_alert_message,
    retry_value,
)
from commands.backup_now import runner_for

log = logging.getLogger(__name__)

# Core events and the alert kind each one opens.
FAILURE_KINDS = {"backup.failed": "backup", "verify.failed": "verify", "prune.failed": "retention",
                 "restore.failed": "restore"}
# Kinds whose Retry is one safe click; a restore is never retried from an alert (it needs approval).
RETRY_BACKUP_KINDS = {"backup", "upload", "stale"}
RETRY_KINDS = RETRY_BACKUP_KINDS | {"verify", "retention"}


class AlertPoster:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.alerts = Alerts(ctx.core.catalog)

    # -- events -------------------------------------------------------------------------------
    def on_event(self, event: str, data: dict[str, Any]) -> None:
        prefix, _, suffix = event.rpartition(".")
        target = data.get("target")
        if event == "backup.done":
            self._backup_done(target, data.get("backup"), data.get("failed_copies") or {})
        elif event in FAILURE_KINDS:
            kind = FAILURE_KINDS[event]
            self.post_alert(kind, target, _failure_text(event, data), detail=data.get("detail") or "",
                            hint=_failure_hint(event, data), backup_id=data.get("backup_id"))
        elif suffix == "failed":
            self.post_alert(str(data.get("alert_kind") or prefix), target,
                            str(data.get("message") or data.get("error") or event),
                            detail=data.get("detail") or "", hint=data.get("hint") or "")
        elif suffix == "alert":
            # The emitter (core monitoring's Alarms.fire) already decided this alert is new or due
            # for a repeat (STALE_ALERT_REPEAT…); throttling again here would swallow its repeats.
            self.post_alert(str(data.get("kind") or prefix), target, str(data.get("message") or event),
                            detail=data.get("detail") or "", hint=data.get("hint") or "")
        elif suffix == "resolved":
            self.post_recovery(str(data.get("kind") or prefix), target, note=str(data.get("message") or ""))

    def _backup_done(self, target: str | None, backup: Backup | None, failed_copies: dict[str, str]) -> None:
        self.post_recovery("backup", target, backup=backup)
        if failed_copies:
            stored = ", ".join(c.destination for c in backup.copies if c.status == "stored") if backup else "?"
            self.post_alert("upload", target,
                            f"backup {backup.id if backup else '?'} is stored in {stored or 'no destination'}, "
                            f"but the copy to {', '.join(sorted(failed_copies))} failed",
                            detail="\n".join(f"{d}: {e}" for d, e in sorted(failed_copies.items())),
                            backup_id=backup.id if backup else None)
        else:
            self.post_recovery("upload", target, backup=backup)

    # -- posting (usable by other features) ---------------------------------------------------
    def post_alert(self, kind: str, target: str | None, message: str, *, detail: str = "", hint: str = "",
                   backup_id: str | None = None) -> Alert:
        """Open (or bump) the alert and tell the channel. A repeat of an open alert goes into the
        alert's thread: every failed attempt, and each repeat a periodic check decided is due."""
        alert, new = self.alerts.raise_(kind, target, message, detail=detail, hint=hint)
        s = self.ctx.settings
        retry = retry_value(alert, backup_id) if kind in RETRY_KINDS and (kind != "verify" or backup_id) else None
        payload = alert_message(alert, mentions=s.slack.alert_mentions, runbook_url=s.slack.runbook_url,
                                tz=s.tz, retry=retry, repeat=not new)
        notifier = self.ctx.notifier
        if new or not alert.slack_ts:
            ts = notifier.post(**payload)
        else:
            ts = None
            notifier.post(thread_ts=alert.slack_ts, **payload)
            notifier.update(alert.slack_ts, **payload)  # the parent shows the count and a fresh button
        if ts is None and (new or not alert.slack_ts):
            log.warning("alert #%s (%s, %s) is open but could not be posted: %s", alert.id, kind, target,
                        notifier.last_error)
        self.alerts.notified(alert.id, ts)
        return alert

    def post_recovery(self, kind: str, target: str | None, *, backup: Backup | None = None,
                      note: str = "", alert_id: int | None = None, about: str | None = None) -> Alert | None:
        """Resolve the open alert of this kind and target, if any (``alert_id``/``about``: only that
        alert, while its message names that), and say so."""
        alert = self.alerts.resolve(kind, target, alert_id=alert_id, about=about)
        if alert is None:
            return None
        tz = self.ctx.settings.tz
        notifier = self.ctx.notifier
        payload = recovery_message(alert, tz=tz, backup=backup, note=note)
        if alert.slack_ts:
            notifier.post(thread_ts=alert.slack_ts, **payload)
            notifier.update(alert.slack_ts, **resolved_alert_message(alert, tz=tz))
        else:
            notifier.post(**payload)
        return alert

    # -- the Retry button -----------------------------------------------------------------------
    def retry(self, value: dict[str, Any], user: str, thread_ts: str | None, respond: Any) -> None:
        kind, target = value.get("kind"), value.get("target")

        def reply(payload: dict[str, Any]) -> None:
            respond(response_type="ephemeral", replace_original=False, **payload)

        if kind in RETRY_BACKUP_KINDS:
            try:
                started = runner_for(self.ctx).start(target, actor=user, reply=reply)
            except BackupbotError as exc:  # e.g. the target was removed from the configuration
                reply({"text": f":x: {exc.message}"})
                return
            if started and thread_ts:
                self.ctx.notifier.post(f"<@{user}> pressed Retry: a new backup of {target} is running.",
                                       thread_ts=thread_ts)
        elif kind == "verify" and value.get("backup_id"):
            backup_id = str(value["backup_id"])
            try:
                self.ctx.core.get_backup(backup_id)
            except NotFound as exc:  # deleted since (retention), or not in this catalog
                # Resolved only when retention deleted it and this very alert is still about it:
                # an older button must not settle a newer failure of another backup.
                settled = self.ctx.core.catalog.was_deleted(backup_id) and self.post_recovery(
                    "verify", target, note=f"backup {backup_id} was deleted by retention",
                    alert_id=value.get("alert"), about=backup_id)
                reply({"text": f"{exc.message}: nothing to verify." + (" Its alert is resolved." if settled else "")})
                return
            reply({"text": f"Verifying {backup_id} again…"})
            self.ctx.submit(self._retry_verify, backup_id, user, reply)
        elif kind == "retention":
            reply({"text": f"Applying the retention policy to {target} again…"})
            self.ctx.submit(self._retry_prune, target, user)
        else:
            reply({"text": f"A {kind} alert cannot be retried from here."})

    def _retry_verify(self, backup_id: str, user: str, reply: Any) -> None:
        try:
            results = self.ctx.core.verify(backup_id, actor=user, source="slack")  # a failure emits verify.failed
        except BackupbotError as exc:  # e.g. pruned between the click and now: the presser is told
            reply({"text": f":x: {exc.message}"})
            return
        if results and all(r.ok for r in results):
            backup = self.ctx.core.get_backup(backup_id)
            self.post_recovery("verify", backup.target, note=f"backup {backup_id} verified on retry")

    def _retry_prune(self, target: str | None, user: str) -> None:
        results = self.ctx.core.prune(dry_run=False, actor=user, source="slack", target=target)
        if all(not r.errors for r in results):
            self.post_recovery("retention", target, note="retention applied on retry")


def _failure_text(event: str, data: dict[str, Any]) -> str:
    error = str(data.get("error") or "unknown error")
    if event == "verify.failed":
        return f"backup {data.get('backup_id')} failed verification: {error}"
    if event == "prune.failed":
        return f"old backups could not be deleted: {error}"
    if event == "restore.failed":
        return f"restore of backup {data.get('backup_id')} failed: {error}"
    return error


def _failure_hint(event: str, data: dict[str, Any]) -> str:
    if event == "restore.failed" and data.get("safety_backup"):
        return f"a safety backup was taken first: {data['safety_backup']}"
    if event == "backup.failed":
        return "nothing was recorded as a backup; the previous good backup is still there"
    return ""


def poster_for(ctx: Any) -> AlertPoster:
    """The app's AlertPoster (other features call post_alert / post_recovery on it)."""
    return ctx.shared("alert_poster", AlertPoster)  # type: ignore[no-any-return]


def register(app: Any, ctx: Any) -> None:
    poster = poster_for(ctx)
    ctx.core.listeners.append(poster.on_event)

    @app.action(RETRY_ACTION)
    def retry(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        ack()
        user = body["user"]["id"]
        if not ctx.first_time(f"action:{body.get('trigger_id')}"):
            return  # Slack re-sent the same click
        if not ctx.is_operator(user):
            ctx.audit("slack.refused", user, action=RETRY_ACTION, reason="not an operator",
                      then=lambda: respond(response_type="ephemeral", replace_original=False,
                                           text="Only backup operators may press Retry (BACKUP_OPERATORS)."
                                                + ctx.lookup_note(ctx.settings.slack.operators)))
            return
        try:
            value = json.loads(action.get("value") or "{}")
        except ValueError:
            value = {}
        msg = body.get("message") or {}
        thread_ts = msg.get("thread_ts") or msg.get("ts")
        ctx.audit("slack.alert_retry", user, target=value.get("target"), alert=value.get("alert"),
                  kind=value.get("kind"))
        poster.retry(value, user, thread_ts, respond)

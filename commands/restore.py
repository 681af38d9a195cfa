"""`/backup restore` and the buttons of a restore request: Approve (with a confirm dialog, and a
typed confirmation of the target for --in-place), Reject and Cancel. Listeners only: the
checks, the state machine and the run live in commands.restore_flow and bot.core.approvals."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.core.approvals import EXPIRED, SELF_APPROVAL, ApprovalRequest, refusal
from bot.core.restore import RestoreRequest, parse_table
from bot.errors import RestoreError
from bot.render import restore as render
from bot.render.common import mention
from commands.restore_flow import RestoreFlow, start_expiry_sweep
from commands.router import Invocation, parse_flags

log = logging.getLogger(__name__)

USAGE = "restore <backup-id> [--into NEWDB | --in-place] [--table schema.name] [--target T]"
SUMMARY = "ask for a restore (default: into a new database); another person approves it in the thread"
FLAGS = {"--into": True, "--in-place": False, "--table": True, "--target": True}
# The names CREATE DATABASE accepts without quoting surprises (as bot.core.restore checks).
DBNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")


def parse_request(args: list[str]) -> RestoreRequest:
    """`<id> [--into NEWDB | --in-place] [--table schema.name] [--target T]` → a RestoreRequest.
    Raises ValueError with a sentence for the user. Pure."""
    positionals, opts = parse_flags(args, FLAGS)
    if len(positionals) != 1:
        raise ValueError("give exactly one backup id (`/backup list` shows them)" if not positionals
                         else f"one backup id at a time, got {len(positionals)}: {' '.join(positionals)}")
    if "--into" in opts and "--in-place" in opts:
        raise ValueError("--into and --in-place exclude each other: a new database, or over the target")
    into = str(opts["--into"]) if "--into" in opts else None
    if into is not None and not DBNAME.fullmatch(into):
        raise ValueError(f"{into!r} is not a usable database name (letters, digits, _; at most 63)")
    table = str(opts["--table"]) if "--table" in opts else None
    if table is not None:
        try:
            schema, name = parse_table(table)
        except RestoreError as exc:
            raise ValueError(exc.message) from None
        table = f"{schema}.{name}"
    target = str(opts["--target"]) if "--target" in opts else None
    return RestoreRequest(positionals[0], mode="in-place" if opts.get("--in-place") else "into", into=into,
                          target=target, table=table)


@dataclass(frozen=True)
class Click:
    user: str
    channel: str
    request_id: int
    trigger_id: str
    thread_ts: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Click:
        action = (body.get("actions") or [{}])[0]
        container = body.get("container") or {}
        try:
            request_id = int(action.get("value") or 0)
        except ValueError:
            request_id = 0
        return cls(user=(body.get("user") or {}).get("id", ""), channel=(body.get("channel") or {}).get("id", ""),
                   request_id=request_id, trigger_id=body.get("trigger_id", ""),
                   thread_ts=container.get("thread_ts") or container.get("message_ts"))


def register(app: Any, ctx: Any) -> None:
    flow = RestoreFlow(ctx)
    tz = ctx.settings.tz

    def tell(user: str, text: str, request: ApprovalRequest | None, click: Click | None = None) -> None:
        channel = (request.channel if request else None) or (click.channel if click else None)
        thread = (request.message_ts if request else None) or (click.thread_ts if click else None)
        ctx.notifier.ephemeral(user, text, channel=channel, thread_ts=thread)

    def refuse(click: Click, request: ApprovalRequest | None, action: str, reason: str, text: str) -> None:
        flow.audit("restore_request.refused", click.user, request, attempt=action, reason=reason,
                   then=lambda: tell(click.user, text, request, click),
                   **({} if request else {"request_id": click.request_id}))

    def not_approver(click: Click, request: ApprovalRequest | None, action: str) -> None:
        who = ", ".join(mention(a) for a in ctx.settings.slack.restore_approvers) or "nobody (RESTORE_APPROVERS is empty)"
        refuse(click, request, action, "not_approver",
               f"Only restore approvers can {action} restore requests (RESTORE_APPROVERS: {who})."
               + ctx.lookup_note(ctx.settings.slack.restore_approvers))

    def handle(inv: Invocation, respond: Any) -> None:
        try:
            req = parse_request(inv.args)
        except ValueError as exc:
            usage = f":x: {exc}\nUsage: `/backup {USAGE}`"
            flow.audit("restore_request.refused", inv.user_id, attempt="request", reason=str(exc), command=inv.text,
                       then=lambda: respond(text=usage, response_type="ephemeral"))
            return
        problem = flow.request_problem(inv.user_id)
        if problem:
            flow.audit("restore_request.refused", inv.user_id, attempt="request", reason=problem,
                       backup_id=req.backup_id, then=lambda: respond(text=f":x: {problem}", response_type="ephemeral"))
            return
        respond(text=f":mag: Checking backup `{req.backup_id}`: re-reading its stored copies and their checksums "
                     "before asking for approval…", response_type="ephemeral")
        ctx.submit(flow.request, inv.user_id, inv.channel_id, req, respond)

    ctx.router.add("restore", USAGE, SUMMARY, handle)

    @app.action(render.APPROVE)
    def on_approve(ack: Any, body: dict[str, Any], client: Any) -> None:
        ack()
        click = Click.from_body(body)
        request = flow.store.find(click.request_id)
        if request is None:
            refuse(click, None, "approve", "not_found", render.refusal_text("not_found", None, tz,
                                                                          request_id=click.request_id))
            return
        if click.user == request.requester:  # the store refuses too; this says it before anything else
            refuse(click, request, "approve", SELF_APPROVAL, render.refusal_text(SELF_APPROVAL, request, tz))
            return
        if not flow.may_approve(click.user):
            not_approver(click, request, "approve")
            return
        if request.mode != "in-place":
            decide(click, "approve", flow.store.approve(request.id, click.user, flow.now()))
            return
        # In place: check now (no modal for a request that cannot be approved), decide on submission.
        reason = refusal(request, "approve", click.user, flow.now())
        if reason is not None:
            if reason == EXPIRED:
                flow.expire_due()
            refuse(click, flow.store.find(request.id), "approve", reason,
                   render.refusal_text(reason, flow.store.find(request.id), tz))
            return
        try:
            client.views_open(trigger_id=click.trigger_id, view=render.confirm_modal(request))
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else "unknown"
            refuse(click, request, "approve", "modal_failed",
                   f"Could not open the confirmation dialog ({error}); click Approve again.")

    @app.action(render.REJECT)
    def on_reject(ack: Any, body: dict[str, Any]) -> None:
        ack()
        click = Click.from_body(body)
        request = flow.store.find(click.request_id)
        if request is not None and not flow.may_approve(click.user):
            not_approver(click, request, "reject")
            return
        decide(click, "reject", flow.store.reject(click.request_id, click.user, flow.now()))

    @app.action(render.CANCEL)
    def on_cancel(ack: Any, body: dict[str, Any]) -> None:
        ack()
        click = Click.from_body(body)
        decide(click, "cancel", flow.store.cancel(click.request_id, click.user, flow.now()))

    def decide(click: Click, action: str, decision: Any) -> None:
        try:  # audits first; a refusal is told even when that fails
            flow.decided(decision, action, click.user)
        finally:
            if not decision.ok:
                text = render.refusal_text(decision.reason, decision.request, tz, request_id=click.request_id)
                tell(click.user, text, decision.request, click)

    @app.view(render.CONFIRM_CALLBACK)
    def on_confirm(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = (body.get("user") or {}).get("id", "")
        try:
            request_id = int(json.loads(view.get("private_metadata") or "{}").get("request_id", 0))
        except (ValueError, AttributeError):
            request_id = 0
        state = ((view.get("state") or {}).get("values") or {}).get(render.CONFIRM_BLOCK) or {}
        typed = str((state.get(render.CONFIRM_INPUT) or {}).get("value") or "").strip()
        request = flow.store.find(request_id)
        click = Click(user, "", request_id, "", None)
        if request is None:
            ack()
            refuse(click, None, "approve", "not_found", render.refusal_text("not_found", None, tz, request_id=request_id))
            return
        if user == request.requester:
            ack()
            refuse(click, request, "approve", SELF_APPROVAL, render.refusal_text(SELF_APPROVAL, request, tz))
            return
        # The typed name is checked before the ack: only the ack can keep the dialog open with an error.
        if typed != (request.confirm_text or request.target):
            errors = {render.CONFIRM_BLOCK: f"That is not {request.confirm_text}. Type the target name exactly to confirm."}
            flow.audit("restore_request.refused", user, request, attempt="approve", reason="confirmation_mismatch",
                       typed=typed[:100], then=lambda: ack(response_action="errors", errors=errors))
            return
        # Permission after the ack (which closes the dialog): resolving the approvers' user groups is
        # a Web API call that a rate limit can stretch past Slack's 3-second bound.
        ack()
        if not flow.may_approve(user):
            not_approver(click, request, "approve")
            return
        decide(click, "approve", flow.store.approve(request.id, user, flow.now()))


def _install_start_hook() -> None:
    """The expiry sweep runs with the bot (`backupbot run`), not in every app a test builds."""
    from bot.runner import START_HOOKS

    if start_expiry_sweep not in START_HOOKS:
        START_HOOKS.append(start_expiry_sweep)


_install_start_hook()

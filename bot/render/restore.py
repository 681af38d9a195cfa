"""Block Kit builders for restore requests (pure): the request in the channel, the approval
controls in its thread, progress, the verification report, failures and the in-place
confirmation modal. Nothing here shows a password: destinations are host:port/database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.approvals import (
    EXPIRED,
    NOT_FOUND,
    NOT_PENDING,
    NOT_REQUESTER,
    SELF_APPROVAL,
    ApprovalRequest,
)
from bot.core.catalog import parse_iso
from bot.render.common import (
    Block,
    actions,
    button,
    clip,
    confirm_dialog,
    context,
    escape,
    header,
    human_bytes,
    human_duration,
    local_time,
    mention,
    message,
    section,
)

APPROVE, REJECT, CANCEL = "restore_approve", "restore_reject", "restore_cancel"
CONFIRM_CALLBACK = "restore_confirm_in_place"
CONFIRM_BLOCK, CONFIRM_INPUT = "confirm_target", "typed_target"

STATUS_LABEL = {
    "pending": "awaiting approval",
    "approved": "approved, starting",
    "running": "restoring…",
    "succeeded": "restored ✓",
    "failed": "failed ✗",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "expired": "expired",
}
STATUS_EMOJI = {"succeeded": ":white_check_mark:", "failed": ":x:", "rejected": ":no_entry_sign:",
                "cancelled": ":heavy_multiplication_x:", "expired": ":hourglass:"}


def _t(dt: datetime | None, tz: ZoneInfo) -> str:
    return local_time(dt, tz, "%Y-%m-%d %H:%M %Z")


def mode_text(req: ApprovalRequest) -> str:
    if req.mode == "in-place":
        what = f"*in place*: overwrites *{req.target}* in one transaction, after a safety backup of it"
    else:
        what = f"into a new database `{req.into}` on {req.target}'s server (nothing existing is touched)"
    return what + (f"; only table `{req.table}`" if req.table else "")


def backup_text(req: ApprovalRequest, tz: ZoneInfo, now: datetime) -> str:
    d = req.details
    taken = parse_iso(d.get("backup_created_at"))
    age = f" ({human_duration(now - taken)} ago)" if taken else ""
    source = d.get("source_target") or "?"
    db = f", database {d['database']}" if d.get("database") else ""
    return (f"`{req.backup_id}` — taken {_t(taken, tz)}{age}, {human_bytes(d.get('size_bytes'))}, "
            f"from target {source}{db}; checksum verified at request time")


def request_message(req: ApprovalRequest, tz: ZoneInfo, now: datetime) -> dict[str, Any]:
    """The request in the channel; re-rendered with the outcome as the request moves on."""
    label = STATUS_LABEL.get(req.status, req.status)
    lines = [
        f"{mention(req.requester)} {'asks' if req.status == 'pending' else 'asked'} to restore a backup.",
        f"*Backup*: {backup_text(req, tz, now)}",
        f"*Destination*: target *{req.target}* — {escape(req.destination)}",
        f"*Mode*: {mode_text(req)}",
    ]
    if req.status == "pending":
        left = human_duration(max(req.expires_at - now, timedelta(0)))
        lines.append(f"*Expires*: {_t(req.expires_at, tz)} (in {left}) unless approved in the thread")
    lines += outcome_lines(req, tz)
    blocks: list[Block] = [header(f"Restore request #{req.id} — {label}"), section("\n".join(lines))]
    blocks.append(context(f"Status: *{req.status}* · approve or reject in this message's thread"
                          if req.status == "pending" else f"Status: *{req.status}*"))
    text = f"Restore request #{req.id} by {mention(req.requester)}: {req.backup_id} → {req.target} ({req.mode}) — {label}"
    return message(text, blocks)


def outcome_lines(req: ApprovalRequest, tz: ZoneInfo) -> list[str]:
    """Who decided, when it ran, and how it ended: the lines added once the request moved on."""
    lines: list[str] = []
    who = mention(req.decided_by) if req.decided_by else "?"
    if req.status in ("approved", "running", "succeeded", "failed") and req.decided_by:
        lines.append(f"*Approved by*: {who} at {_t(req.decided_at, tz)}")
    elif req.status == "rejected":
        lines.append(f"*Rejected by*: {who} at {_t(req.decided_at, tz)} — nothing was restored")
    elif req.status == "cancelled":
        lines.append(f"*Cancelled by*: {who} at {_t(req.decided_at, tz)} — nothing was restored")
    elif req.status == "expired":
        lines.append(f"*Expired*: {_t(req.expires_at, tz)} without approval — nothing was restored")
    if req.safety_backup_id:
        lines.append(f"*Safety backup*: `{req.safety_backup_id}` (tagged pre-restore)")
    if req.status in ("succeeded", "failed") and req.finished_at:
        verb = "Restored at" if req.status == "succeeded" else "Failed at"
        lines.append(f"*{verb}*: {_t(req.finished_at, tz)}" + (f" · RTO {human_duration(req.rto_s)}" if req.rto_s else ""))
        summary = req.result.get("summary") or req.result.get("error")
        if summary:
            lines.append(f"*Result*: {clip(str(summary), 600)}")
        if req.result.get("target_state"):
            lines.append(f"*Target state*: {clip(str(req.result['target_state']), 600)}")
    return lines


def controls_message(req: ApprovalRequest, approvers: tuple[str, ...], tz: ZoneInfo) -> dict[str, Any]:
    """The thread reply with Approve / Reject / Cancel while pending; the decision afterwards."""
    if req.status != "pending":
        line = decision_line(req, tz)
        return message(line, [section(line)])
    who = " ".join(mention(a) for a in approvers) or "approvers"
    confirm_text = (f"This overwrites {req.target} ({req.destination}) with backup {req.backup_id}. A safety "
                    "backup is taken first; you will type the target name next."
                    if req.mode == "in-place" else
                    f"Backup {req.backup_id} will be restored into the new database {req.into} on {req.target}'s server.")
    body = (f"{who}: approval needed for restore request #{req.id}: {mode_text(req)}. "
            f"Requested by {mention(req.requester)}, who cannot approve it. Expires {_t(req.expires_at, tz)}.")
    value = str(req.id)
    buttons = actions(
        button("Approve", APPROVE, value, style="primary",
               confirm=confirm_dialog(f"Approve restore #{req.id}?", confirm_text, "Approve", "Not yet")),
        button("Reject", REJECT, value, style="danger"),
        button("Cancel request", CANCEL, value),
        block_id=f"restore_{req.id}_pending",
    )
    text = f"Approval needed for restore request #{req.id} by {mention(req.requester)}"
    return message(text, [section(body), buttons,
                          context("Only the requester can cancel; approvers are set by RESTORE_APPROVERS.")])


def decision_line(req: ApprovalRequest, tz: ZoneInfo) -> str:
    who = mention(req.decided_by) if req.decided_by else "?"
    when = _t(req.decided_at, tz)
    return {
        "approved": f":white_check_mark: Approved by {who} at {when}; starting the restore.",
        "running": f":white_check_mark: Approved by {who} at {when}; restoring.",
        "succeeded": f":white_check_mark: Approved by {who} at {when}; restored.",
        "failed": f":white_check_mark: Approved by {who} at {when}; the restore failed (see below).",
        "rejected": f":no_entry_sign: Rejected by {who} at {when}. Nothing was restored.",
        "cancelled": f":heavy_multiplication_x: Cancelled by {who} at {when}. Nothing was restored.",
        "expired": f":hourglass: Expired at {_t(req.expires_at, tz)} without approval. Nothing was restored.",
    }.get(req.status, f"Restore request #{req.id}: {req.status}")


def progress_message(req: ApprovalRequest, steps: list[str], *, done: bool = False) -> dict[str, Any]:
    """One thread message, updated as each step completes (fewer posts, no rate limits)."""
    title = f"Restore #{req.id} progress" + ("" if done else " (running)")
    body = "\n".join(steps[-40:]) or "starting…"
    return message(f"{title}: {steps[-1] if steps else 'starting'}", [section(f"*{title}*\n{body}")])


def report_message(req: ApprovalRequest, report_lines: list[str], *, report_ok: bool,
                   post_restore: dict[str, Any] | None, rto_s: float | None, total_s: float | None,
                   destination: str) -> dict[str, Any]:
    """The verification report with ✓/✗ lines, the post-restore command's result and the RTO."""
    ok = report_ok and (post_restore is None or bool(post_restore.get("ok")))
    head = (f"{':white_check_mark:' if ok else ':x:'} Restore #{req.id} into {escape(destination)}: "
            + ("verified" if report_ok else "verification found differences"))
    blocks: list[Block] = [section(f"*{head}*"), section("*Verification report*\n" + _lines(report_lines))]
    if post_restore is not None:
        mark = "✓" if post_restore.get("ok") else "✗"
        text = f"*Post-restore command*\n{mark} {post_restore.get('summary', '')}"
        if post_restore.get("output_tail"):
            text += "\n```\n" + clip(str(post_restore["output_tail"]), 1800).replace("```", "'''") + "\n```"
        blocks.append(section(text))
    timing = f"RTO (restore + verification): {human_duration(rto_s)}"
    if total_s is not None and rto_s is not None and total_s > rto_s + 0.5:
        timing += f" · {human_duration(total_s)} including the safety backup and post-restore command"
    blocks.append(context(timing))
    return message(head, blocks)


def _lines(lines: list[str]) -> str:
    """Report lines, clipped to fit one section without cutting a line in half."""
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        line = escape(line)
        if used + len(line) + 1 > 2800:
            out.append(f"… and {len(lines) - i} more lines (`backupbot` logs and the catalog have all of them)")
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out) or "(no checks)"


def target_state(req: ApprovalRequest, step: str, safety_backup_id: str | None) -> str:
    """What state the destination is in after a failure at ``step`` (pure, for the thread)."""
    safety = (f" It can also be restored from the safety backup `{safety_backup_id}` "
              f"(`/backup restore {safety_backup_id} --in-place`)." if safety_backup_id else "")
    if req.mode != "in-place":
        if step in ("verification", "post-restore command"):
            return (f"The new database `{req.into}` was restored and is left for inspection; nothing existing "
                    "was touched. Drop it when done.")
        return f"Nothing existing was touched; the new database `{req.into}` was removed (or never created)."
    if step == "safety backup":
        return f"{req.target} is unchanged: the restore did not start because the safety backup failed."
    if step in ("verification", "post-restore command"):
        back = (f" To go back to the state just before, restore the safety backup `{safety_backup_id}` "
                f"(`/backup restore {safety_backup_id} --in-place`)." if safety_backup_id else "")
        return f"{req.target} now holds the restored data, but the {step} failed.{back}"
    if step == "interrupted":
        return (f"{req.target} is unchanged if pg_restore had not finished (it runs in one transaction)." + safety)
    if step == "load":
        return (f"{req.target} is unchanged thanks to the transaction: pg_restore ran in a single transaction, "
                "which was rolled back." + safety)
    return f"{req.target} is unchanged: the restore stopped before pg_restore started." + safety


def failure_message(req: ApprovalRequest, step: str, error: str, state: str) -> dict[str, Any]:
    text = f":x: Restore #{req.id} failed at the {step} step: {error}"
    return message(text, [section(f":x: *Restore #{req.id} failed at the {step} step*\n{escape(clip(error, 1500))}"),
                          section(f"*Target state*: {state}")])


def confirm_modal(req: ApprovalRequest) -> dict[str, Any]:
    """The explicit step for --in-place: the approver types the target's name."""
    return {
        "type": "modal",
        "callback_id": CONFIRM_CALLBACK,
        "private_metadata": json.dumps({"request_id": req.id}),
        "title": {"type": "plain_text", "text": "Confirm in-place restore"[:24]},
        "submit": {"type": "plain_text", "text": "Restore"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            section(f":warning: Restore request #{req.id} overwrites *{req.target}* ({escape(req.destination)}) "
                    f"with backup `{req.backup_id}`, in one transaction, after a safety backup.\n"
                    f"Requested by {mention(req.requester)}."),
            {"type": "input", "block_id": CONFIRM_BLOCK,
             "label": {"type": "plain_text", "text": f"Type the target name ({req.target}) to confirm"},
             "element": {"type": "plain_text_input", "action_id": CONFIRM_INPUT,
                         "placeholder": {"type": "plain_text", "text": req.target[:150]}}},
        ],
    }


def refusal_text(reason: str, req: ApprovalRequest | None, tz: ZoneInfo, *, request_id: int | str = "?") -> str:
    """The ephemeral sentence for a click that changed nothing."""
    if reason == NOT_FOUND or req is None:
        return f"There is no restore request #{request_id}."
    who = mention(req.decided_by) if req.decided_by else "someone"
    if reason == SELF_APPROVAL:
        return (f"You requested restore #{req.id}, so you cannot approve it: another approver must. "
                "You can cancel it with *Cancel request*.")
    if reason == NOT_REQUESTER:
        return f"Only {mention(req.requester)}, who requested restore #{req.id}, can cancel it."
    if reason == EXPIRED or req.status == "expired":
        return (f"Restore request #{req.id} expired at {_t(req.expires_at, tz)} without approval; nothing was "
                f"restored. Request it again with `/backup restore {req.backup_id}`.")
    if reason == NOT_PENDING or reason in STATUS_LABEL:
        return {
            "rejected": f"Restore request #{req.id} was rejected by {who}; nothing will be restored.",
            "cancelled": f"Restore request #{req.id} was cancelled by {who}; nothing will be restored.",
        }.get(req.status, f"Restore request #{req.id} was already approved by {who} "
                          f"({STATUS_LABEL.get(req.status, req.status)}); nothing more to do.")
    return f"Restore request #{req.id} cannot be changed now ({reason})."

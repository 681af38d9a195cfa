"""Block Kit for backups: progress, result, failure, list, status, alerts and recoveries.

Pure builders: data in, ``{"text": ..., "blocks": [...]}`` out, always within Slack's limits
(shared/slack/LIMITS.md). Every string that came from a database, a tool or a user is escaped, and
the Notifier redacts secrets on the way out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.alerts import Alert
from bot.core.catalog import Backup, parse_iso
from bot.core.rescan import RescanResult
from bot.core.status import StatusReport, TargetStatus
from bot.render.common import (
    Block,
    actions,
    button,
    clip,
    context,
    escape,
    fields,
    header,
    holder_phrase,
    human_bytes,
    human_duration,
    local_time,
    mention,
    message,
    section,
)

LIST_MAX = 40  # backups shown at most: one block each, plus header and footer, under 50 blocks
STATUS_MAX_TARGETS = 20  # targets shown in one status message (2 blocks each)
DETAIL_TAIL = 1500  # characters of a tool's stderr worth showing; the log has the rest
RETRY_ACTION = "alert_retry"

KIND_TITLES = {
    "backup": "Backup failed",
    "upload": "A backup copy failed to upload",
    "verify": "Backup verification failed",
    "retention": "Retention (pruning old backups) failed",
    "restore": "Restore failed",
    "stale": "No recent backup",
    "disk": "Backup storage is running out of space",
    "growth": "Database size changed sharply",
    "integrity": "A stored backup failed its integrity check",
    "drill": "Restore drill failed",
    "slack": "Slack delivery problem",
    "supabase": "Supabase platform backup missing or failed",
    "schedule": "A scheduled job failed or was missed",
}
VERIFY_LABELS = {"ok": ":white_check_mark: verified", "failed": ":x: verification failed",
                 "unverified": "not verified yet"}
COPY_MARKS = {"stored": "✓", "verified": "✓ verified", "failed": "✗ failed", "deleted": "deleted"}


def _code(text: str) -> str:
    """A mrkdwn code block that cannot be closed early by the text inside it."""
    return "```" + escape(text).replace("```", "'''") + "```"


def _tail(text: str, limit: int = DETAIL_TAIL) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _copies(backup: Backup) -> str:
    return ", ".join(f"{c.destination} {COPY_MARKS.get(c.status, c.status)}" for c in backup.copies) or "none"


def started_message(target: str) -> dict[str, Any]:
    text = f"Started a backup of {target}; progress and the result are posted in the channel."
    return message(text, [section(f":hourglass_flowing_sand: Started a backup of `{escape(target)}`. "
                                  "Progress and the result are posted in the channel.")])


def busy_message(target: str, *, link: str | None, run: dict[str, Any] | None, tz: ZoneInfo) -> dict[str, Any]:
    since = ""
    if run:
        since = f" (started {_stamp(run.get('started_at'), tz)} by {_who(run.get('actor'))} " \
                f"via {escape(str(run.get('source') or '?'))})"
    where = f" <{link}|See its progress.>" if link else ""
    what = holder_phrase(run).capitalize()
    text = f"{what} {target} is already running{since}; not starting another backup."
    return message(text, [section(f":hourglass: {what} `{escape(target)}` is already running{since}; "
                                  f"not starting another backup.{where}")])


def _stamp(value: object, tz: ZoneInfo) -> str:
    """A catalog timestamp (UTC ISO text) in the configured zone; anything else shown as it is."""
    try:
        when = parse_iso(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    return local_time(when, tz) if when else escape(str(value or "?"))


def _who(actor: object) -> str:
    a = str(actor or "?")
    return mention(a) if a[:1] in ("U", "W") and a.isalnum() else escape(a)


def progress_message(target: str, *, actor: str, written: int, elapsed_s: float) -> dict[str, Any]:
    so_far = f"{human_bytes(written)} written" if written else "starting"
    text = f"Backing up {target}: {so_far}, {human_duration(elapsed_s)} elapsed"
    return message(text, [
        section(f":hourglass_flowing_sand: *Backing up `{escape(target)}`* — {so_far}, "
                f"{human_duration(elapsed_s)} elapsed"),
        context(f"Started by {_who(actor)} with `/backup now` · this message updates as it runs"),
    ])


def result_message(backup: Backup, *, failed_copies: dict[str, str], tz: ZoneInfo, actor: str) -> dict[str, Any]:
    failed = dict(failed_copies)
    icon, title = (":warning:", "complete, but a copy failed") if failed else (":white_check_mark:", "complete")
    db_size = backup.manifest.get("database_size_bytes")
    text = (f"Backup of {backup.target} {title}: {backup.id}, {human_bytes(backup.size_bytes)} in "
            f"{human_duration(backup.duration_s)}, sha256 {backup.sha256[:12]}…, copies: {_copies(backup)}")
    copy_lines = []
    for c in backup.copies:
        line = f"• *{escape(c.destination)}*: {COPY_MARKS.get(c.status, escape(c.status))}"
        if c.location:
            line += f" `{escape(c.location)}`"
        if c.error or c.destination in failed:
            line += f" — {escape(clip(c.error or failed[c.destination], 400))}"
        copy_lines.append(line)
    blocks: list[Block] = [
        section(f"{icon} *Backup of `{escape(backup.target)}` {title}*"),
        fields([
            ("Backup id", f"`{backup.id}`"),
            ("Size", human_bytes(backup.size_bytes)),
            ("Duration", human_duration(backup.duration_s)),
            ("SHA-256", f"`{backup.sha256[:12]}…`"),
            ("Database", f"{escape(backup.database or '?')} ({human_bytes(db_size) if isinstance(db_size, int) else '?'})"),
            ("Taken", local_time(backup.created_at, tz)),
        ]),
        section("*Copies*\n" + ("\n".join(copy_lines) or "none")),
        context(f"Started by {_who(actor)} · `/backup list` or `backupbot list` shows it"),
    ]
    return message(text, blocks)


def failure_message(target: str, *, error: str, detail: str = "", elapsed_s: float | None,
                    actor: str) -> dict[str, Any]:
    after = f" after {human_duration(elapsed_s)}" if elapsed_s is not None else ""
    text = f"Backup of {target} failed{after}: {error}"
    blocks: list[Block] = [section(f":x: *Backup of `{escape(target)}` failed{after}*\n{escape(error)}")]
    if detail.strip():
        blocks.append(section(_code(_tail(detail))))
    blocks.append(context(f"Started by {_who(actor)} · nothing was recorded as a backup · "
                          "run `/backup now` to try again"))
    return message(text, blocks)


def list_message(backups: Sequence[Backup], *, tz: ZoneInfo, target: str | None) -> dict[str, Any]:
    scope = f"`{escape(target)}`" if target else "any target"
    if not backups:
        hint = ("Make the first one with `/backup now` here, or `backupbot backup` on the server.")
        return message(f"No backups of {target or 'any target'} yet. {hint}",
                       [section(f":open_file_folder: No backups of {scope} yet. {hint}")])
    shown = list(backups)[:LIST_MAX]
    blocks: list[Block] = [header(f"Recent backups ({target})" if target else "Recent backups")]
    lines = []
    for b in shown:
        verified = VERIFY_LABELS.get(b.verify_status, escape(b.verify_status))
        row = (f"{local_time(b.created_at, tz)} · {human_bytes(b.size_bytes)} · {verified} · "
               f"copies: {escape(_copies(b))}")
        blocks.append(section(f"*`{b.id}`*" + ("" if target else f" ({escape(b.target)})") + f"\n{row}"))
        lines.append(f"{b.id} {local_time(b.created_at, tz)} {human_bytes(b.size_bytes)} {b.verify_status}")
    blocks.append(context(f"{len(shown)} newest · times in {tz.key} · `/backup list [target] [N]` for more"))
    return message(f"Recent backups of {target or 'every target'}:\n" + "\n".join(lines), blocks)


# -- status ---------------------------------------------------------------------------------

def _age(t: TargetStatus) -> str:
    if t.age_s is None:
        return ":warning: no backup yet"
    mark = " :warning: stale" if t.stale else ""
    return f"{human_duration(t.age_s)} ago{mark}"


def _trend(t: TargetStatus, now: datetime) -> str:
    change = t.size_change(now)
    if change is None:
        return "not enough backups yet"
    delta, pct, over = change
    sign = "+" if delta >= 0 else "−"
    pct_text = f" ({sign}{abs(pct):.1f}%)" if pct is not None else ""
    return f"{sign}{human_bytes(abs(delta))}{pct_text} over {human_duration(over)} ({len(t.trend)} backups)"


def status_facts(report: StatusReport, tz: ZoneInfo) -> list[tuple[str, list[tuple[str, str]]]]:
    """The report as titled groups of (label, value), shared by Slack's blocks and the CLI's text."""
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    for t in report.targets:
        last = f"`{t.last_good_id}` ({local_time(t.last_good_at, tz)})" if t.last_good_id else "none"
        db_now = human_bytes(t.database_size_bytes) if t.database_size_bytes is not None \
            else f":warning: unavailable: {escape(t.database_size_error or '?')}"
        pairs = [("Last good backup", last), ("Age", _age(t)),
                 ("Backup size", human_bytes(t.last_good_size) if t.last_good_size is not None else "—"),
                 ("Verified", VERIFY_LABELS.get(t.last_good_verified or "", "—")),
                 ("Database size now", db_now), ("Size trend", _trend(t, report.generated_at))]
        if t.running:
            pairs.append(("Running now", f"since {_stamp(t.running.get('started_at'), tz)} "
                                         f"by {_who(t.running.get('actor'))}"))
        groups.append((f"Target {t.name}", pairs))
    nxt = parse_iso(report.next_run) if report.next_run else None
    r = report.retention
    storage = "\n".join(f"{escape(dest)}: {human_bytes(u.get('used'))} used"
                        + (f", {human_bytes(u.get('free'))} free" if u.get("free") is not None else "")
                        for dest, u in report.storage.items()) or "no destination configured"
    groups.append(("Schedule and storage", [
        ("Next scheduled run", local_time(nxt, tz) if nxt else "unknown (schedules run inside `backupbot run`)"),
        ("Retention", (f"each hour of the last {r['hourly']}h · " if r.get("hourly") else "")
                      + f"{r['daily']} daily · {r['weekly']} weekly · {r['monthly']} monthly · "
                      f"never below {r['min_verified']} verified"),
        ("Storage used", storage),
    ]))
    return groups


def _alert_line(a: Alert, tz: ZoneInfo) -> str:
    times = f", ×{a.count}" if a.count > 1 else ""
    return (f"• :rotating_light: {KIND_TITLES.get(a.kind, escape(a.kind))} · `{escape(a.target or 'all')}` — "
            f"{escape(clip(a.message, 200))} (since {local_time(a.opened_at, tz)}{times})")


def status_message(report: StatusReport, tz: ZoneInfo) -> dict[str, Any]:
    blocks: list[Block] = [header("backupbot status")]
    groups = status_facts(report, tz)
    # Two blocks per group; keep header, alerts and footer inside Slack's 50 (schedule group last).
    for title, pairs in (groups[:-1][:STATUS_MAX_TARGETS] + groups[-1:]):
        blocks.append(section(f"*{escape(title)}*"))
        blocks.append(fields(pairs))
    alerts = "\n".join(_alert_line(a, tz) for a in report.alerts) or ":white_check_mark: No open alerts."
    blocks.append(section("*Open alerts*\n" + alerts))
    for extra in report.sections[: max(0, 50 - len(blocks) - 1)]:
        icon = "" if extra.ok else ":warning: "
        blocks.append(section(f"*{icon}{escape(extra.title)}*\n" + "\n".join(escape(x) for x in extra.lines)))
    blocks.append(context(f"{'All good' if report.ok else 'Needs attention'} · generated "
                          f"{local_time(report.generated_at, tz, '%Y-%m-%d %H:%M:%S %Z')} · "
                          "`backupbot status --json` has the same data"))
    return message(status_text(report, tz), blocks)


def status_text(report: StatusReport, tz: ZoneInfo) -> str:
    """Plain text for the CLI and for Slack's notification fallback."""
    out = [f"backupbot status: {'ok' if report.ok else 'needs attention'}"]
    for title, pairs in status_facts(report, tz):
        out.append(f"{title}:")
        out += [f"  {k}: {_plain(v)}" for k, v in pairs]
    out.append("Open alerts:" if report.alerts else "Open alerts: none")
    out += [f"  {_plain(_alert_line(a, tz))[2:]}" for a in report.alerts]
    for extra in report.sections:
        out.append(f"{extra.title}:")
        out += [f"  {x}" for x in extra.lines]
    return "\n".join(out)


def _plain(mrkdwn: str) -> str:
    for emoji, word in ((":warning: ", "! "), (":white_check_mark: ", ""), (":x: ", ""), (":rotating_light: ", "")):
        mrkdwn = mrkdwn.replace(emoji, word)
    return mrkdwn.replace("`", "").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# -- alerts ---------------------------------------------------------------------------------

def retry_value(alert: Alert, backup_id: str | None = None) -> str:
    """What the Retry button carries: enough to redo the failed thing without the alert row."""
    return json.dumps({"alert": alert.id, "kind": alert.kind, "target": alert.target, "backup_id": backup_id})


def alert_message(alert: Alert, *, mentions: Sequence[str], runbook_url: str | None, tz: ZoneInfo,
                  retry: str | None, repeat: bool = False) -> dict[str, Any]:
    title = KIND_TITLES.get(alert.kind, f"{alert.kind} alert")
    target = alert.target or "all targets"
    who = " ".join(mention(m) for m in mentions)
    again = f" (again, {alert.count} times)" if alert.count > 1 else ""
    text = f"{who + ' ' if who else ''}{title}{again} for {target}: {alert.message}"
    lines = [f"*What failed:* {escape(alert.message)}", f"*Target:* `{escape(target)}`"]
    if alert.hint:
        lines.append(f"*Hint:* {escape(alert.hint)}")
    if runbook_url:
        lines.append(f"*Runbook:* <{runbook_url}|what to do>")
    blocks: list[Block] = [header(f":rotating_light: {title}{again}"), section("\n".join(lines))]
    if alert.detail.strip():
        blocks.append(section("*Error output (tail)*\n" + _code(_tail(alert.detail))))
    footer = [f"Alert #{alert.id} · opened {local_time(alert.opened_at, tz)}"]
    if who and not repeat:
        footer.insert(0, f"cc {who}")
    blocks.append(context(*footer))
    if retry:
        # A new block_id per repeat: Slack may otherwise keep a stale button state on update.
        blocks.append(actions(button("Retry", RETRY_ACTION, value=retry, style="primary"),
                              block_id=f"alert-{alert.id}-{alert.count}-actions"))
    return message(text, blocks)


def resolved_alert_message(alert: Alert, *, tz: ZoneInfo) -> dict[str, Any]:
    """What the original alert turns into once resolved (its Retry button goes away)."""
    title = KIND_TITLES.get(alert.kind, f"{alert.kind} alert")
    target = alert.target or "all targets"
    text = f"Resolved: {title} for {target}"
    return message(text, [
        section(f":white_check_mark: ~{escape(title)}~ — *resolved*\n*Target:* `{escape(target)}`\n"
                f"*Was:* {escape(clip(alert.message, 500))}"),
        context(f"Alert #{alert.id} · opened {local_time(alert.opened_at, tz)} · "
                f"resolved {local_time(alert.resolved_at, tz)}"),
    ])


def recovery_message(alert: Alert, *, tz: ZoneInfo, backup: Backup | None = None, note: str = "") -> dict[str, Any]:
    title = KIND_TITLES.get(alert.kind, f"{alert.kind} alert")
    target = alert.target or "all targets"
    down = human_duration((alert.resolved_at - alert.opened_at) if alert.resolved_at else None)
    what = note or (f"backup `{backup.id}` ({human_bytes(backup.size_bytes)}) succeeded" if backup else "the problem cleared")
    text = f"Recovered: {target} — {what}"
    return message(_plain(text), [
        section(f":white_check_mark: *Recovered:* `{escape(target)}` — {escape(what) if note else what}"),
        context(f"Was: {escape(title)} (alert #{alert.id}, open for {down})"),
    ])


def rescan_lines(result: RescanResult, tz: ZoneInfo) -> list[str]:
    """What `backupbot rescan` found, a line each; times in the configured zone."""
    verb = "would adopt" if result.dry_run else "adopted"
    lines = [f"{verb} {a.backup_id} (target {a.target}, {local_time(parse_iso(a.created_at), tz)}, "
             f"{human_bytes(a.size_bytes)}) from {', '.join(a.destinations)}" for a in result.adopted]
    lines += [f"{'would record' if result.dry_run else 'recorded'} the {d} copy of {i}" for i, d in result.copies_added]
    lines += [f"left alone: {k} in {d} has no manifest (an interrupted backup, or a lost manifest)"
              for d, k in result.incomplete]
    lines += [f"problem: {d}: {p}" for d, p in result.problems]
    if result.other_targets:
        lines.append(f"left alone: backups of targets not configured here ({', '.join(sorted(result.other_targets))})")
    if result.adopted or result.copies_added:
        lines.append("adopted backups are unverified until `backupbot verify ID` has read them back; "
                     "until then retention keeps them")
    elif not result.incomplete and not result.problems:
        lines.append("the catalog already knows every backup the destinations hold")
    return lines

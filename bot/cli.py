"""Front end 1: `backupbot <verb>`. Parses arguments, calls the services, prints results.
Library errors become one clean line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bot import cli_schedules
from bot.config import Settings, load_settings
from bot.core.redact import install_log_redaction, redact
from bot.errors import BackupbotError, ConfigError, Terminated
from bot.render.common import human_bytes, local_time

log = logging.getLogger("backupbot")


class ProgressPrinter:
    """A one-line progress bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self._last_plain = 0.0
        self._shown = False

    def bytes(self, written: int, elapsed: float) -> None:
        text = f"{self.label}: {human_bytes(written)} written, {elapsed:.0f}s"
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self._shown = True
        elif time.monotonic() - self._last_plain >= 5:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, message: str) -> None:
        self.done()
        self.stream.write(f"{message}\n")
        self.stream.flush()

    def done(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self._shown = False


def _services(settings: Settings) -> Any:
    from bot.services import build_services

    return build_services(settings)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    bar = ProgressPrinter(sys.stderr, f"backing up {settings.target(args.target).name}")
    outcome = services.backup(args.target, actor=args.actor, source="cli", progress=bar.bytes)
    bar.done()
    b = outcome.backup
    print(f"backup {b.id} complete: {human_bytes(b.size_bytes)} in {b.duration_s:.1f}s, sha256 {b.sha256[:12]}…")
    for c in b.copies:
        print(f"  {c.destination}: {c.status} {c.location or ''} {('— ' + c.error) if c.error else ''}".rstrip())
    for dest, err in outcome.failed_copies.items():
        print(f"warning: the {dest} copy failed: {err}", file=sys.stderr)
    print(b.id)
    return 3 if outcome.failed_copies else 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    backups = services.list_backups(args.target, args.limit)
    if args.json:
        print(json.dumps([b.as_json() for b in backups], indent=2))
        return 0
    if not backups:
        print("no backups yet: run `backupbot backup` to make the first one")
        return 0
    tz = settings.tz
    # The zone's abbreviation on every line: in the hour repeated when clocks go back, 02:30 CEST
    # and 02:30 CET are different backups.
    print(f"{'ID':<34} {'CREATED (' + settings.timezone + ')':<26} {'SIZE':>10}  {'VERIFIED':<10} COPIES")
    for b in backups:
        copies = ",".join(f"{c.destination}:{c.status}" for c in b.copies)
        created = local_time(b.created_at, tz, "%Y-%m-%d %H:%M:%S %Z")
        print(f"{b.id:<34} {created:<26} {human_bytes(b.size_bytes):>10}  "
              f"{b.verify_status:<10} {copies}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    results = services.verify(args.id, actor=args.actor, source="cli")
    ok = bool(results) and all(r.ok for r in results)
    for r in results:
        print(f"{'✓' if r.ok else '✗'} {r.destination}: " + (f"ok, {r.toc_entries} archive entries" if r.ok else str(r.error)))
    if not ok:
        print(f"error: backup {args.id} failed verification", file=sys.stderr)
    return 0 if ok else 1


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core.restore import RestoreRequest

    if args.in_place and not args.yes:
        print("error: --in-place overwrites the target database: add --yes to confirm", file=sys.stderr)
        return 2
    if args.to and not args.yes:
        print("error: --to writes into an existing database: add --yes to confirm", file=sys.stderr)
        return 2
    mode = "in-place" if args.in_place else ("to" if args.to else "into")
    req = RestoreRequest(backup_id=args.id, mode=mode, into=args.into, target=args.target, to_url=args.to,
                         table=args.table, with_roles=args.with_roles or bool(args.to))
    services = _services(settings)
    bar = ProgressPrinter(sys.stderr, "restoring")
    def safety_taken(safety: Any) -> None:  # printed at once: a restore failing later must not hide it
        print(f"safety backup taken first: {safety.id} (to go back: backupbot restore {safety.id} --in-place --yes)",
              flush=True)

    outcome, _safety = services.restore(req, actor=args.actor, source="cli", progress=bar.step,
                                        safety_backup=not args.no_safety_backup, on_safety_backup=safety_taken)
    bar.done()
    print(f"restored {outcome.backup.id} into {outcome.destination} in {outcome.duration_s:.1f}s")
    print("verification report:")
    for line in outcome.report.lines():
        print(f"  {line}")
    if not outcome.report.ok:
        print(f"error: restored, but verification found {len(outcome.report.failures)} difference(s)", file=sys.stderr)
        return 1
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    code = 0
    for r in services.prune(dry_run=args.dry_run, actor=args.actor, source="cli", target=args.target):
        verb = "would delete" if r.dry_run else "deleted"
        # A dry run's refusals (r.errors) are what the real prune would not delete: not listed as going.
        gone = [i for i in r.decision.delete if i not in r.errors] if r.dry_run else r.deleted
        print(f"{r.target}: keeping {len(r.decision.keep)}, {verb} {len(gone)}")
        for backup_id in gone:
            print(f"  {verb} {backup_id}")
        for backup_id, reasons in r.decision.keep.items():
            print(f"  keep {backup_id} ({', '.join(reasons)})")
        for backup_id, err in r.errors.items():
            verb = "would not delete" if r.dry_run else "could not delete"
            print(f"error: {verb} {backup_id}: {err}", file=sys.stderr)
            code = 1
    return code


def cmd_rescan(args: argparse.Namespace, settings: Settings) -> int:
    from bot.render.backup import rescan_lines

    result = _services(settings).rescan(dry_run=args.dry_run, actor=args.actor, source="cli")
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        for line in rescan_lines(result, settings.tz):
            print(line)
    if result.problems:
        print(f"error: {len(result.problems)} problem(s) found while rescanning", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core.schedule_settings import ScheduleSettings
    from bot.core.scheduler import next_backup_from_config
    from bot.core.status import gather_status
    from bot.render.backup import status_text

    # Status reports the schedules and the checks they feed: a setting `backupbot run` would
    # refuse is one clear line here too (exit 2), not a report with sections missing.
    sched = ScheduleSettings.from_settings(settings)
    report = gather_status(_services(settings), target=args.target,
                           next_run=lambda: next_backup_from_config(settings, sched=sched))
    print(json.dumps(report.as_json(), indent=2) if args.json else status_text(report, settings.tz))
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core.catalog import Catalog
    from bot.render.audit import MAX_N, audit_line

    # The catalog alone: reading the log must not settle runs a live bot is doing.
    events = Catalog(settings.catalog_path).audit_events(max(1, min(args.n, MAX_N)))
    if args.json:
        print(json.dumps([{**e, "details": json.loads(e["details"] or "{}")} for e in events], indent=2))
        return 0
    for e in events:
        print(audit_line(e, settings.tz))
    if not events:
        print("the audit log is empty")
    return 0


def cmd_restore_requests(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core.approvals import ApprovalStore
    from bot.core.catalog import Catalog

    requests = ApprovalStore(Catalog(settings.catalog_path)).recent(status=None if args.all else "pending")
    if args.json:
        print(json.dumps([r.as_json() for r in requests], indent=2))
        return 0
    if not requests:
        print("no pending restore requests" if not args.all else "no restore requests")
    for r in requests:
        print(f"#{r.id} {r.status:<9} {r.backup_id} -> {r.target} ({r.mode}{', ' + r.table if r.table else ''}) "
              f"by {r.requester}, expires {r.expires_at.astimezone(settings.tz):%Y-%m-%d %H:%M %Z}"
              + (f", decided by {r.decided_by}" if r.decided_by else ""))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import run_bot

    return run_bot(settings, http=args.http, port=args.port, host=args.host)


def cmd_demo(args: argparse.Namespace, settings: Settings | None) -> int:
    from bot.demo import run_demo

    return run_demo(keep=args.keep)


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "backup": cmd_backup, "list": cmd_list, "verify": cmd_verify, "restore": cmd_restore,
    "prune": cmd_prune, "rescan": cmd_rescan, "demo": cmd_demo, "run": cmd_run, "status": cmd_status,
}
COMMANDS.update({"audit": cmd_audit, "restore-requests": cmd_restore_requests})
COMMANDS.update(cli_schedules.COMMANDS)  # checklist, drill, schedule
NEEDS_NO_SETTINGS = {"demo"}


def _terminated(_signum: int, _frame: Any) -> None:
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backupbot", description="Back up, verify and restore PostgreSQL.")
    p.add_argument("--env-file", default=None,
                   help="settings file (default: ./.env, when it exists; a file named here must exist)")
    p.add_argument("--actor", default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("backup", help="take a backup now; prints the new backup's id on the last line")
    b.add_argument("--target", help="named target (default: the default target)")

    ls = sub.add_parser("list", help="list backups")
    ls.add_argument("--target")
    ls.add_argument("--limit", type=int)
    ls.add_argument("--json", action="store_true", help="a JSON array")

    v = sub.add_parser("verify", help="re-read a backup's copies and check them")
    v.add_argument("id")

    r = sub.add_parser("restore", help="restore a backup (default: into a new database)")
    r.add_argument("id")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--into", metavar="NEWDB", help="new database name on the target's server")
    where.add_argument("--in-place", action="store_true", help="over the target itself, in one transaction")
    where.add_argument("--to", metavar="URL", help="into the database at URL or of a configured target (e.g. a fresh project)")
    r.add_argument("--yes", action="store_true", help="confirm --in-place / --to")
    r.add_argument("--table", metavar="SCHEMA.NAME", help="restore one table")
    r.add_argument("--target", help="named target whose server receives the restore")
    r.add_argument("--with-roles", action="store_true", help="create the backup's roles first (skips existing)")
    r.add_argument("--no-safety-backup", action="store_true", help="skip the backup taken before --in-place")

    pr = sub.add_parser("prune", help="apply the retention policy")
    pr.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    pr.add_argument("--target")

    rs = sub.add_parser("rescan", help="record backups the destinations hold but the catalog does not "
                                       "(a lost or older catalog, a crash before recording)")
    rs.add_argument("--dry-run", action="store_true", help="show what would be recorded")
    rs.add_argument("--json", action="store_true", help="a JSON object")

    st = sub.add_parser("status", help="last good backup, next run, retention, storage, database size, alerts")
    st.add_argument("--target", help="only this target")
    st.add_argument("--json", action="store_true", help="a JSON object (the same data /backup status shows)")

    au = sub.add_parser("audit", help="show the most recent audit events")
    au.add_argument("n", nargs="?", type=int, default=20, help="how many (default 20, at most 100)")
    au.add_argument("--json", action="store_true", help="a JSON array")

    rr = sub.add_parser("restore-requests", help="list pending restore requests (approved in Slack)")
    rr.add_argument("--all", action="store_true", help="every request, not only pending ones")
    rr.add_argument("--json", action="store_true", help="a JSON array")

    cli_schedules.add_parsers(sub)

    run = sub.add_parser("run", help="run the Slack bot (Socket Mode, or --http) with its schedules")
    run.add_argument("--http", action="store_true", help="serve Slack at POST /slack/events instead of Socket Mode")
    run.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000)")
    run.add_argument("--host", default="0.0.0.0", help="HTTP bind address (default 0.0.0.0)")

    d = sub.add_parser("demo", help="start a throwaway PostgreSQL, back it up, restore it, verify")
    d.add_argument("--keep", action="store_true", help="keep the demo's files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    if args.actor is None:
        import getpass

        try:
            args.actor = getpass.getuser()
        except Exception:
            args.actor = "unknown"
    handler = COMMANDS[args.command]
    signal.signal(signal.SIGTERM, _terminated)  # `run` installs its own (a clean shutdown)
    settings: Settings | None = None
    try:
        if args.env_file is not None and not Path(args.env_file).is_file():
            # A mistyped name must not quietly run on whatever the environment holds.
            raise ConfigError(f"--env-file {args.env_file} is not a file", "--env-file")
        settings = None if args.command in NEEDS_NO_SETTINGS else load_settings(env_file=args.env_file or ".env")
        return handler(args, settings)
    except BackupbotError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if args.verbose and exc.detail:
            print(exc.detail, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # the work in progress cleaned up on the way here
        print("error: terminated (SIGTERM)" if isinstance(exc, Terminated) else "error: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except sqlite3.Error as exc:  # the catalog failed mid-way (disk full, I/O error, locked too long)
        log.debug("catalog error", exc_info=True)
        where = settings.catalog_path if settings is not None else "BACKUPBOT_DB"
        print(f"error: the catalog {where} failed: {redact(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the details in the log
        log.exception("unexpected error")
        print(f"error: unexpected {type(exc).__name__}: {redact(exc)}", file=sys.stderr)
        return 1

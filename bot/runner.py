"""`backupbot run`: build the services and the Slack app, start the background parts (scheduler,
sweeps) registered as start hooks, and serve Slack in Socket Mode or HTTP mode until stopped."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.app import AppContext, check_slack, create_app, make_client, validate_slack_settings
from bot.config import Settings, parse_duration
from bot.core.catalog import iso, utcnow
from bot.errors import BackupbotError
from bot.services import build_services

log = logging.getLogger(__name__)

# Feature modules append callables run once the app is built: f(ctx) -> optional stop function.
START_HOOKS: list[Callable[[AppContext], Callable[[], None] | None]] = []


def health(ctx: AppContext) -> dict[str, Any]:
    """GET /healthz: ok, the last good backup per target, the next scheduled run."""
    now = utcnow()
    targets: dict[str, Any] = {}
    ok = True
    max_age = parse_duration(ctx.settings.extra.get("MAX_BACKUP_AGE") or "26h", "MAX_BACKUP_AGE")
    for name in ctx.settings.targets:
        last = ctx.core.catalog.latest_good(name, now)
        age = max(0.0, (now - last.created_at).total_seconds()) if last else None  # within the skew tolerated
        stale = last is None or age is None or age > max_age.total_seconds()
        ok = ok and not stale
        targets[name] = {"last_good_backup": {"id": last.id, "created_at": iso(last.created_at), "age_s": int(age or 0)}
                         if last else None, "stale": stale}
    next_run = getattr(ctx, "next_run", None)
    first: dict[str, Any] = next(iter(targets.values()), {})
    return {
        "ok": ok,
        "last_good_backup": first.get("last_good_backup"),
        "next_scheduled_run": next_run() if callable(next_run) else None,
        "targets": targets,
    }


def start_hooks(ctx: AppContext) -> list[Callable[[], None]]:
    stops: list[Callable[[], None]] = []
    for hook in START_HOOKS:
        stop = hook(ctx)
        if stop:
            stops.append(stop)
    return stops


def _hold_run_lock(settings: Settings) -> int:
    """One `backupbot run` per catalog: a second one would settle the first one's running
    restores as abandoned (freeing their backups for retention) and post and schedule everything
    twice. The lock is an flock on <catalog>.run.lock, released when the process ends."""
    # Resolved: a symlinked or differently spelled BACKUPBOT_DB is still the same catalog.
    path = Path(f"{Path(settings.catalog_path).resolve()}.run.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # the catalog's directory is not ours to write: neither is the catalog
        raise BackupbotError(f"cannot create {path} beside the catalog: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise BackupbotError(f"another `backupbot run` (pid {holder}) is already using the catalog "
                             f"{settings.catalog_path}: stop it first, or give this one its own BACKUPBOT_DB") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def run_bot(settings: Settings, *, http: bool, port: int, host: str = "0.0.0.0") -> int:
    use_http = http or not settings.slack.app_token
    validate_slack_settings(settings, http=use_http)
    client = make_client(settings)
    check_slack(client)  # before anything is settled or started
    # Held until the process ends, not until this returns: jobs still running (a restore, a
    # drill) finish in their threads after the shutdown, and must stay protected meanwhile.
    _hold_run_lock(settings)
    return _run_locked(settings, client, http=use_http, port=port, host=host)


def _run_locked(settings: Settings, client: Any, *, http: bool, port: int, host: str) -> int:
    services = build_services(settings)
    # Restores, drills and checks the bot itself started cannot still be running now that it
    # starts again; ones the CLI started (source "cli") may be, so they are left alone.
    for source in ("slack", "schedule"):
        for kind in ("restore", "drill", "verify", "integrity", "prune"):
            services.catalog.mark_abandoned_runs(kind=kind, source=source)
    app, ctx = create_app(settings, services, client=client)
    server = None
    if http:  # bound before anything starts: a port in use is one line, with nothing to undo
        from bot.server import make_server

        try:
            server = make_server(app, lambda: health(ctx), host, port)
        except OSError as exc:
            ctx.jobs.shutdown(wait=False, cancel_futures=True)
            raise BackupbotError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another process "
                                 "using that port? Choose another with --port") from None
    stops = start_hooks(ctx)
    stopped = threading.Event()

    def shutdown(*_a: Any) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        if server is not None:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            print(f"backupbot: HTTP mode on {host}:{server.server_address[1]} (POST /slack/events, GET /healthz)",
                  flush=True)
            stopped.wait()
            server.shutdown()
        else:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            handler = SocketModeHandler(app, settings.slack.app_token)
            handler.connect()
            if handler.client.is_connected():
                print("backupbot: connected in Socket Mode", flush=True)
            else:
                # slack_sdk has logged why, and its monitor keeps reconnecting in the background.
                print("backupbot: Socket Mode connection failed; retrying in the background", flush=True)
            stopped.wait()
            handler.close()
    finally:
        for stop in stops:
            stop()
        ctx.jobs.shutdown(wait=False, cancel_futures=True)
    return 0

"""`/backup now [target]`: start a backup off the ack path and show it as ONE channel message that
is updated in place (bytes so far, elapsed) and ends with the result or the failure.

At most one backup per target: a second request while one runs is answered with a link to the
running one's message. The same runner serves the alerts' Retry button.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bot.core.catalog import iso, utcnow
from bot.errors import BackupbotError
from bot.render.backup import (
    busy_message,
    failure_message,
    progress_message,
    result_message,
    started_message,
)
from bot.services import BackupBusy
from commands.help_command import usage_message
from commands.router import Invocation

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 3.0  # Slack allows ~1 chat.update per second per channel; leave room for others

Reply = Callable[[dict[str, Any]], None]


class Throttle:
    """True at most once per ``every`` seconds (the first call always passes)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


@dataclass
class ActiveRun:
    target: str
    actor: str
    source: str
    reply: Reply
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: iso(utcnow()) or "")
    ts: str | None = None  # the channel message, once posted
    written: int = 0
    updating: bool = False
    throttle: Throttle = field(default_factory=lambda: Throttle(PROGRESS_EVERY_S))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class BackupRunner:
    """Starts backups for Slack and keeps each running one's progress message (target -> ts)."""

    def __init__(self, ctx: Any, progress_every: float = PROGRESS_EVERY_S) -> None:
        self.ctx = ctx
        self.progress_every = progress_every
        self._active: dict[str, ActiveRun] = {}
        self._lock = threading.Lock()
        # One thread for every message update: progress and final updates stay in order, and a
        # slow or rate-limited Slack never stalls the dump (the progress callback only enqueues).
        self._updates = ThreadPoolExecutor(1, thread_name_prefix="slack-progress")

    def start(self, target: str | None, *, actor: str, reply: Reply, source: str = "slack") -> Future[Any] | None:
        """Start a backup of ``target`` (None: the default) unless one is running; tells the
        requester either way through ``reply``. Raises NotFound for an unknown target."""
        name = self.ctx.settings.target(target).name
        run: ActiveRun | None = None
        with self._lock:  # check-and-reserve atomically: a double request starts one backup
            active = self._active.get(name)
            holder = None if active else self._lock_holder(name)
            if active is None and holder is None:
                run = self._active[name] = ActiveRun(name, actor, source, reply,
                                                     throttle=Throttle(self.progress_every))
        if run is None:
            link = self.ctx.notifier.permalink(active.ts) if active and active.ts else None
            busy = ({"started_at": active.started_at, "actor": active.actor, "source": active.source}
                    if active else holder)
            _safe(reply, busy_message(name, link=link, run=busy or None, tz=self.ctx.settings.tz))
            return None
        job = self.ctx.submit(self._run, run)  # first: a failing reply must not strand the reservation
        _safe(reply, started_message(name))
        return job

    def _lock_holder(self, name: str) -> dict[str, Any] | None:
        """None when the target's lock is free; else the catalog's running row describing who
        holds it ({} when there is none yet). The lock decides, not the row: a CLI backup killed
        by Ctrl-C leaves its row 'running', and that must not refuse every later backup. Should
        someone take the lock right after this look, the job's own BackupBusy says so."""
        try:
            with self.ctx.core.target_lock(name):
                return None
        except BackupBusy as exc:
            return exc.run or {}

    # -- the job ------------------------------------------------------------------------------
    def _run(self, run: ActiveRun) -> None:
        notifier = self.ctx.notifier
        run.ts = notifier.post(**progress_message(run.target, actor=run.actor, written=0, elapsed_s=0))
        try:
            outcome = self.ctx.core.backup(run.target, actor=run.actor, source=run.source, kind="manual",
                                           progress=lambda written, _elapsed: self._progress(run, written))
            final = result_message(outcome.backup, failed_copies=outcome.failed_copies,
                                   tz=self.ctx.settings.tz, actor=run.actor)
        except BackupBusy as exc:  # another process (CLI, a scheduler elsewhere) got there first
            final = busy_message(run.target, link=None, run=exc.run, tz=self.ctx.settings.tz)
        except BackupbotError as exc:
            final = failure_message(run.target, error=exc.message, detail=exc.detail, elapsed_s=run.elapsed,
                                    actor=run.actor)
        except Exception as exc:
            error_id = uuid.uuid4().hex[:8]
            log.exception("backup of %s crashed (error id %s)", run.target, error_id)
            final = failure_message(run.target, error=f"unexpected {type(exc).__name__} (error id {error_id}; "
                                                       "the bot's log has the details)", elapsed_s=run.elapsed,
                                    actor=run.actor)
        finally:
            with self._lock:
                self._active.pop(run.target, None)
        # Queued behind any pending progress update, so the result is always the last version.
        self._updates.submit(self._finish, run, final).result()

    def _progress(self, run: ActiveRun, written: int) -> None:
        run.written = written
        if run.ts is None or run.updating or not run.throttle.ready():
            return
        run.updating = True
        self._updates.submit(self._push_progress, run)

    def _push_progress(self, run: ActiveRun) -> None:
        try:
            if run.ts:
                self.ctx.notifier.update(run.ts, **progress_message(run.target, actor=run.actor,
                                                                    written=run.written, elapsed_s=run.elapsed))
        finally:
            run.updating = False

    def _finish(self, run: ActiveRun, final: dict[str, Any]) -> None:
        notifier = self.ctx.notifier
        if run.ts and notifier.update(run.ts, **final):
            return
        if notifier.post(**final):  # the progress message was never posted, or is gone
            return
        # The channel is unreachable (e.g. channel_not_found): the result is in the catalog and
        # the log; tell the requester privately so the outcome is not lost on them either.
        log.warning("could not show the result of the %s backup in Slack: %s", run.target, notifier.last_error)
        _safe(run.reply, {**final, "text": final["text"] + f" (could not post to the channel: {notifier.last_error})"})


def _safe(reply: Reply, payload: dict[str, Any]) -> None:
    """Answer the requester; a dead response_url is logged, never allowed to break the backup."""
    try:
        reply(payload)
    except Exception:
        log.warning("could not answer the requester through Slack's response_url", exc_info=True)


def runner_for(ctx: Any) -> BackupRunner:
    """The app's one runner, shared by /backup now and the Retry button (made at registration,
    before any request can arrive, so no lock is needed)."""
    return ctx.shared("backup_runner", BackupRunner)  # type: ignore[no-any-return]


def register(app: Any, ctx: Any) -> None:
    runner = runner_for(ctx)

    def handle(inv: Invocation, respond: Any) -> None:
        if len(inv.args) > 1:
            respond(**usage_message(ctx.router, problem="`/backup now` takes at most one target"))
            return
        runner.start(inv.args[0] if inv.args else None, actor=inv.user_id,
                     reply=lambda payload: respond(response_type="ephemeral", **payload))

    ctx.router.add("now", "now [target]", "take a backup now (operators)", handle, operators_only=True)

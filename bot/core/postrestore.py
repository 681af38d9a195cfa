"""The post-restore command (POST_RESTORE_COMMAND): e.g. the application's test suite, run against
the freshly restored database, with its exit status and a redacted tail of its output.

The command line is split with shlex and run without a shell, so nothing in it is interpreted
twice; the restored database's URL reaches it only through the environment, never argv. That
environment is a minimal one (``child_environment``): the bot's own credentials stay with the bot.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.core.redact import redact

DEFAULT_TIMEOUT_S = 600
TAIL_LINES = 20
TAIL_CHARS = 1500

# What the command inherits from the bot's environment: enough to run a program, nothing more.
INHERITED = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ"})
INHERITED_PREFIXES = ("LC_",)
# Never inherited, whatever the lists above let through: the bot's credentials and endpoints.
SECRET_PREFIXES = ("SLACK_", "AWS_", "SUPABASE_", "ENCRYPTION", "AGE_", "HEARTBEAT")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD")


@dataclass
class PostRestoreResult:
    command: str  # as configured (for messages); redacted
    exit_code: int | None  # None: it did not finish (timeout) or could not start
    output_tail: str = ""  # last lines of stdout+stderr, redacted
    duration_s: float = 0.0
    timed_out: bool = False
    error: str | None = None  # why it could not run at all
    argv: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def summary(self) -> str:
        """One line: what ran and how it ended."""
        if self.error:
            return f"`{self.command}` could not run: {self.error}"
        if self.timed_out:
            return f"`{self.command}` timed out after {self.duration_s:.0f}s and was stopped"
        return f"`{self.command}` exited with status {self.exit_code} after {self.duration_s:.1f}s"

    def as_json(self) -> dict[str, object]:
        return {"command": self.command, "exit_code": self.exit_code, "ok": self.ok, "timed_out": self.timed_out,
                "error": self.error, "duration_s": self.duration_s, "output_tail": self.output_tail}


def run_post_restore(command: str, database_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                     cwd: Path | None = None) -> PostRestoreResult:
    """Run ``command`` with DATABASE_URL / RESTORED_DATABASE_URL set to ``database_url``."""
    shown = redact(command)
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return PostRestoreResult(shown, None, error=f"cannot split the command line: {exc}")
    if not argv:
        return PostRestoreResult(shown, None, error="the command is empty")
    env = child_environment(database_url)
    t0 = time.monotonic()
    try:
        # A session of its own, so a timeout stops the command's children too (a test runner's workers).
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    except OSError as exc:
        return PostRestoreResult(shown, None, error=redact(exc.strerror or str(exc)), argv=argv)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_collect, args=(proc, tail), daemon=True)
    reader.start()
    timed_out = False
    try:
        code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        proc.wait(timeout=10)
        code = None
    reader.join(timeout=5)
    text = redact("".join(tail).rstrip())
    return PostRestoreResult(shown, code, text[-TAIL_CHARS:], round(time.monotonic() - t0, 3), timed_out, argv=argv)


def child_environment(database_url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The command's environment: PATH, HOME, LANG, LANGUAGE, LC_* and TZ from ``environ`` (the
    bot's), and DATABASE_URL / RESTORED_DATABASE_URL naming the restored database. Not the bot's
    Slack tokens, cloud keys, encryption key or the source database's URL. Pure."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items()
           if (k in INHERITED or k.startswith(INHERITED_PREFIXES)) and not _secret(k)}
    return {**env, "DATABASE_URL": database_url, "RESTORED_DATABASE_URL": database_url}


def _secret(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(SECRET_PREFIXES) or any(word in upper for word in SECRET_WORDS)


def _collect(proc: subprocess.Popen[bytes], tail: deque[str]) -> None:
    """Read the output as it comes (a full pipe would block the command) keeping only the tail."""
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        tail.append(raw.decode("utf-8", "replace")[:500])
    proc.stdout.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()

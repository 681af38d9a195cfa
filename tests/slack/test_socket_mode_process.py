"""`backupbot run` in Socket Mode as a real process: it opens a connection through
apps.connections.open, answers envelopes over the WebSocket, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.fakes.slack_api import FakeSlackAPI
from tests.fakes.socket_mode import FakeSocketMode, slash_command_envelope
from tests.fixtures.slack import BOT_TOKEN, CHANNEL

REPO = Path(__file__).resolve().parents[2]
APP_TOKEN = "xapp-1-A111-111-fake"


@pytest.fixture
def socket_mode(fake_slack: FakeSlackAPI) -> Iterator[FakeSocketMode]:
    with FakeSocketMode(app_id=fake_slack.app_id) as server:
        fake_slack.enable_socket_mode(APP_TOKEN, server.url)
        yield server


class _Lines:
    """Collects a stream's lines in a thread, so the test can wait for one with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.lines if needle in line), None)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {needle!r}; got {self.lines}")
            try:
                self.lines.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                pass

    def text(self) -> str:
        self._thread.join(timeout=5)  # the stream is at EOF once the process has exited
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)


def test_run_socket_mode_answers_envelopes_and_stops_on_sigterm(fake_slack, socket_mode, crm_db, tmp_path):
    # GIVEN the bot started as `backupbot run` with an app-level token, against the fake Slack
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod",
           "BACKUP_DIR": str(tmp_path / "backups"), "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
           "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "SLACK_CHANNEL": CHANNEL,
           "SLACK_API_URL": fake_slack.url}
    env.pop("SLACK_SIGNING_SECRET", None)
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Lines(proc.stdout), _Lines(proc.stderr)
    try:
        # WHEN it starts THEN it asks for a WebSocket URL with the app token and connects to it
        out.wait_for("connected in Socket Mode", timeout=30)
        opened = fake_slack.wait_for("apps.connections.open", timeout=5)
        assert opened[0].headers["Authorization"] == f"Bearer {APP_TOKEN}" and opened[0].ok
        assert socket_mode.wait_for_connection(timeout=5).path == "/link/?ticket=fake-ticket"

        # WHEN Slack pushes /backup help THEN the envelope is acked within 3 s
        help_envelope = slash_command_envelope("help", channel_id=CHANNEL,
                                               response_url=fake_slack.response_url("socket-help"))
        socket_mode.send_envelope(help_envelope)
        socket_mode.wait_for_ack(help_envelope["envelope_id"], timeout=3)
        # AND the usage arrives through the response_url
        shown = fake_slack.wait_for_response("socket-help", timeout=10)[0].body
        assert shown["response_type"] == "ephemeral" and "/backup now [target]" in json.dumps(shown)

        # WHEN Slack pushes an unknown subcommand THEN the ack itself carries the usage and the problem
        unknown = slash_command_envelope("frobnicate", channel_id=CHANNEL,
                                         response_url=fake_slack.response_url("socket-unknown"))
        socket_mode.send_envelope(unknown)
        ack = socket_mode.wait_for_ack(unknown["envelope_id"], timeout=3)
        assert "unknown subcommand" in json.dumps(ack.get("payload"))
    finally:
        # WHEN it gets SIGTERM THEN it exits cleanly
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stdout, stderr = out.text(), err.text()
    assert proc.returncode == 0, stderr
    assert BOT_TOKEN not in stdout + stderr and APP_TOKEN not in stdout + stderr

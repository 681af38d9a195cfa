"""`backupbot run --http` as a real process: it serves /healthz and signed Slack requests, and
stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from bot.core.cluster import free_port
from tests.fakes.slack_requests import post, slash_command_body
from tests.fixtures.slack import BOT_TOKEN, CHANNEL, SIGNING_SECRET
from tests.slack.support import until

REPO = Path(__file__).resolve().parents[2]


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, then its output; killed if it does not stop within 20 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def _healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:  # 503 while there is no good backup: still an answer
        return json.loads(err.read())
    except OSError:
        return None


def test_run_http_serves_healthz_and_signed_commands_and_stops_on_sigterm(fake_slack, crm_db, tmp_path):
    # GIVEN the bot started as `backupbot run --http --port N` against the fake Slack
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod",
           "BACKUP_DIR": str(tmp_path / "backups"), "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
           "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_CHANNEL": CHANNEL,
           "SLACK_API_URL": fake_slack.url}
    env.pop("SLACK_APP_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run", "--http", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # WHEN it answers its health check THEN the JSON has ok, the last good backup, the next run
        health = until(lambda: proc.poll() is None and _healthz(port), timeout=30, what="GET /healthz")
        assert {"ok", "last_good_backup", "next_scheduled_run"} <= health.keys()
        assert health["ok"] is False and health["last_good_backup"] is None  # nothing backed up yet
        # WHEN Slack sends a signed /backup help THEN the usage comes back through the response_url
        body = slash_command_body(text="help", user_id="U0ALICE", channel_id=CHANNEL,
                                  response_url=fake_slack.response_url("proc-help"))
        status, _, _ = post(f"http://127.0.0.1:{port}/slack/events", body, SIGNING_SECRET)
        assert status == 200
        shown = fake_slack.wait_for_response("proc-help", timeout=20)[0].body
        assert shown["response_type"] == "ephemeral" and "/backup now [target]" in json.dumps(shown)
        # AND a forged request is refused
        assert post(f"http://127.0.0.1:{port}/slack/events", body, "wrong-secret")[0] == 401
    finally:
        # WHEN it gets SIGTERM THEN it exits cleanly
        out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert f"HTTP mode on 127.0.0.1:{port}" in out
    assert BOT_TOKEN not in out + err and SIGNING_SECRET not in out + err


def test_run_says_in_one_line_when_slack_is_unreachable_or_refuses_the_token(fake_slack, crm_db, tmp_path):
    base = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod",
            "BACKUP_DIR": str(tmp_path / "backups"), "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
            "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_CHANNEL": CHANNEL}
    base.pop("SLACK_APP_TOKEN", None)

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot", "run", "--http", "--port", str(free_port())],
                              cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, timeout=60)

    # WHEN nothing answers at SLACK_API_URL THEN one line says so (no traceback), exit 1
    dead = run(SLACK_API_URL=f"http://127.0.0.1:{free_port()}/api/")
    assert dead.returncode == 1 and dead.stderr.strip().count("\n") == 0, dead.stderr
    assert dead.stderr.startswith("error: cannot reach Slack's Web API at http://127.0.0.1:")
    # WHEN Slack refuses the token THEN a configuration error naming it, exit 2
    refused = run(SLACK_API_URL=fake_slack.url, SLACK_BOT_TOKEN="xoxb-0-0-not-a-known-token")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "Slack refused the bot token at auth.test (invalid_auth)" in refused.stderr
    assert "SLACK_BOT_TOKEN" in refused.stderr and "not-a-known-token" not in refused.stderr
    # AND neither touched the catalog
    assert not (tmp_path / "catalog.db").exists()


def test_run_on_a_port_in_use_says_so_in_one_line_before_starting_anything(fake_slack, crm_db, tmp_path):
    import socket

    # GIVEN another process listening on the port
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod",
           "BACKUP_DIR": str(tmp_path / "backups"), "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
           "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_CHANNEL": CHANNEL,
           "SLACK_API_URL": fake_slack.url, "BACKUP_SCHEDULE": "* * * * *"}
    env.pop("SLACK_APP_TOKEN", None)
    try:
        # WHEN the bot is started there
        done = subprocess.run([sys.executable, "-m", "bot", "run", "--http", "--port", str(port), "--host",
                               "127.0.0.1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    # THEN one line names the port and what to do, no traceback, and no schedule ever ran
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr and "--port" in done.stderr
    assert fake_slack.calls("chat.postMessage") == []


def test_a_second_run_on_the_same_catalog_is_refused_and_leaves_the_first_ones_work_alone(fake_slack, crm_db,
                                                                                           tmp_path):
    from bot.core.catalog import Catalog

    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": crm_db, "BACKUP_TARGET": "prod",
           "BACKUP_DIR": str(tmp_path / "backups"), "BACKUPBOT_DB": str(tmp_path / "catalog.db"),
           "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_CHANNEL": CHANNEL,
           "SLACK_API_URL": fake_slack.url}
    env.pop("SLACK_APP_TOKEN", None)
    port = free_port()
    first = subprocess.Popen([sys.executable, "-m", "bot", "run", "--http", "--port", str(port), "--host", "127.0.0.1"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        until(lambda: first.poll() is None and _healthz(port), timeout=30, what="the first bot's /healthz")
        # GIVEN the first bot is running a restore (as its Slack flow records one)
        catalog = Catalog(tmp_path / "catalog.db")
        run_id = catalog.start_run("restore", "prod", "U0ALICE", "slack", {"backup_id": "prod-x"})
        # WHEN a second `backupbot run` starts on the same catalog
        second = subprocess.run([sys.executable, "-m", "bot", "run", "--http", "--port", str(free_port()),
                                 "--host", "127.0.0.1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)
        # THEN it refuses in one line naming the first one, and the first one's restore is untouched
        assert second.returncode == 1, second.stderr
        assert f"another `backupbot run` (pid {first.pid}) is already using the catalog" in second.stderr
        assert catalog.run(run_id)["status"] == "running"
        assert first.poll() is None
    finally:
        _stop(first)

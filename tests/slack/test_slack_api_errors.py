"""Slack API errors (429 with Retry-After, 500, channel_not_found) are retried or reported, never
crash the app, and never lose the backup's result: it is in the catalog and the CLI shows it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from tests.fixtures.pg import PASSWORD
from tests.fixtures.slack import BOT_TOKEN, CHANNEL
from tests.slack.support import until, wait_for_message


def _cli_list(h) -> list[dict]:
    s = h.ctx.settings
    env = {**os.environ, "DATABASE_URL": s.targets["prod"].database_url, "BACKUP_TARGET": "prod",
           "BACKUP_DIR": str(s.backup_dir), "BACKUPBOT_DB": str(s.catalog_path)}
    out = subprocess.run([sys.executable, "-m", "bot", "list", "--json"], env=env, cwd=s.backup_dir.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("method, failure", [
    ("chat.postMessage", {"status": 429, "retry_after": 0}),
    ("chat.update", {"status": 429, "retry_after": 1}),
    ("chat.postMessage", {"status": 500}),
    ("chat.update", {"status": 503}),
], ids=["429 on post", "429 on update", "500 on post", "503 on update"])
def test_rate_limits_and_server_errors_are_retried_and_the_result_shows(slack_app, method, failure):
    # GIVEN Slack answers the next call of a method with an HTTP error
    h = slack_app()
    h.fake.fail_next(method, **failure)
    # WHEN a backup runs from /backup now
    h.command("now")
    # THEN the call was retried and the channel shows the result
    final = wait_for_message(h.fake, CHANNEL, "complete")
    calls = h.fake.calls(method)
    assert calls[0].status == failure["status"] and calls[1].ok
    if failure.get("retry_after"):  # the retry waited as long as Slack asked
        assert calls[1].time - calls[0].time >= failure["retry_after"] - 0.05
    # AND the backup's result is in the catalog
    [backup] = h.services.list_backups()
    assert backup.id in final["text"]


def test_channel_not_found_is_logged_the_user_told_and_the_backup_kept(slack_app, caplog):
    caplog.set_level(logging.INFO)
    # GIVEN Slack cannot find the configured channel
    h = slack_app()
    h.fake.fail_next("chat.postMessage", error="channel_not_found", times=100)
    h.fake.fail_next("chat.update", error="channel_not_found", times=100)
    # WHEN a backup runs from /backup now
    reply = h.command("now")
    # THEN the requester still learns the result privately, with the reason
    result = until(lambda: [r.body for r in h.fake.responses(reply.response_id) if "complete" in r.body["text"]],
                   what="the result through the response_url")[0]
    assert "could not post to the channel: Slack chat_postMessage failed: channel_not_found" in result["text"]
    # AND the problem is in the log, the app keeps answering, and the backup is in the catalog and the CLI
    assert "channel_not_found" in caplog.text
    assert "Usage" in h.command("help").responses()[0]["text"]
    [backup] = h.services.list_backups()
    assert backup.id in result["text"]
    assert [b["id"] for b in _cli_list(h)] == [backup.id]
    assert PASSWORD not in caplog.text and BOT_TOKEN not in caplog.text

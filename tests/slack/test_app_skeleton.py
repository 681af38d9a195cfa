"""The Slack front end's plumbing: signatures, usage, channel checks, retries."""

from __future__ import annotations

import json
import time

from tests.fakes.slack_requests import post, slash_command_body
from tests.fixtures.slack import CHANNEL, SIGNING_SECRET


def test_help_and_unknown_subcommand_answer_with_usage_ephemerally(slack_app):
    h = slack_app()
    reply = h.command("help")
    assert reply.status == 200
    shown = reply.responses()[0]
    assert "/backup help" in json.dumps(shown) and shown.get("response_type") == "ephemeral"
    reply = h.command("frobnicate now")
    assert reply.status == 200 and "unknown subcommand `frobnicate`" in reply.body
    assert json.loads(reply.body)["response_type"] == "ephemeral"


def test_forged_signature_and_stale_timestamp_get_401_and_do_nothing(slack_app):
    h = slack_app()
    body = slash_command_body(text="help", channel_id=CHANNEL)
    status, _h, _b = post(h.url, body, "not-the-secret")
    assert status == 401
    status, _h, _b = post(h.url, body, SIGNING_SECRET, timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    assert h.services.catalog.audit_events() == []


def test_command_from_another_channel_is_refused_and_audited(slack_app):
    h = slack_app()
    reply = h.command("help", channel="C0OTHER")
    assert reply.status == 200 and f"<#{CHANNEL}>" in reply.body
    deadline = time.monotonic() + 10
    while not h.services.catalog.audit_events() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.services.catalog.audit_events()[0]["action"] == "slack.refused"

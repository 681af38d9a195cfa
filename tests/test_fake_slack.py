"""The Slack test doubles behave like Slack: strict Block Kit, real errors, retries, signatures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from slack_bolt import App
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.fakes.slack_api import FakeSlackAPI, validate_blocks
from tests.fakes.slack_requests import (
    block_actions_body,
    block_actions_payload,
    bolt_request,
    post,
    sign,
    slash_command_body,
    view_submission_body,
)

SECRET = "test-signing-secret"


@pytest.fixture
def fake() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


def section(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}, **extra}


def button(text: str, action_id: str = "approve", **extra: Any) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        **extra,
    }


def api_error(call: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as caught:
        call()
    return dict(caught.value.response.data)


# -- Block Kit validation -------------------------------------------------------


def test_post_message_with_51_blocks_is_rejected_as_invalid_blocks(fake: FakeSlackAPI) -> None:
    blocks = [section(f"line {i}") for i in range(51)]
    answer = api_error(
        lambda: fake.client().chat_postMessage(channel="C111", text="t", blocks=blocks)
    )
    assert answer["error"] == "invalid_blocks"
    assert any("[json-pointer:/blocks]" in e for e in answer["errors"])
    assert fake.messages("C111") == []


def test_button_text_of_76_characters_is_rejected_and_75_accepted(fake: FakeSlackAPI) -> None:
    client = fake.client()
    too_long = [section("Restore?", accessory=button("x" * 76))]
    answer = api_error(lambda: client.chat_postMessage(channel="C111", text="t", blocks=too_long))
    assert answer["errors"] == [
        "must be less than 76 characters [json-pointer:/blocks/0/accessory/text/text]"
    ]
    ok = client.chat_postMessage(
        channel="C111", text="t", blocks=[section("R", accessory=button("x" * 75))]
    )
    assert ok["ok"]


def test_empty_text_object_is_rejected(fake: FakeSlackAPI) -> None:
    answer = api_error(
        lambda: fake.client().chat_postEphemeral(
            channel="C111", user="U111", text="t", blocks=[section("")]
        )
    )
    assert answer["error"] == "invalid_blocks"
    assert "[json-pointer:/blocks/0/text/text]" in answer["errors"][0]


def test_duplicate_block_id_is_rejected(fake: FakeSlackAPI) -> None:
    blocks = [section("a", block_id="same"), section("b", block_id="same")]
    answer = api_error(
        lambda: fake.client().chat_postMessage(channel="C111", text="t", blocks=blocks)
    )
    assert answer["errors"] == ["duplicate block_id [json-pointer:/blocks/1/block_id]"]


def _options(n: int) -> list[dict[str, Any]]:
    return [{"text": {"type": "plain_text", "text": f"o{i}"}, "value": f"v{i}"} for i in range(n)]


@pytest.mark.parametrize(
    ("block", "pointer"),
    [
        (
            {"type": "header", "text": {"type": "plain_text", "text": "h" * 151}},
            "/blocks/0/text/text",
        ),
        ({"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}, "/blocks/0/text/type"),
        ({"type": "section"}, "/blocks/0"),
        (section("s" * 3001), "/blocks/0/text/text"),
        ({"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}, "/blocks/0/fields"),
        (
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]},
            "/blocks/0/fields/0/text",
        ),
        ({"type": "context", "elements": []}, "/blocks/0/elements"),
        (
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11},
            "/blocks/0/elements",
        ),
        (
            {"type": "actions", "elements": [button("b", f"a{i}") for i in range(26)]},
            "/blocks/0/elements",
        ),
        (
            {"type": "actions", "elements": [button("b", "x" * 256)]},
            "/blocks/0/elements/0/action_id",
        ),
        (
            {"type": "actions", "elements": [button("b", value="v" * 2001)]},
            "/blocks/0/elements/0/value",
        ),
        (
            {"type": "actions", "elements": [button("b", url="https://" + "u" * 3000)]},
            "/blocks/0/elements/0/url",
        ),
        (
            {"type": "actions", "elements": [button("b", style="blue")]},
            "/blocks/0/elements/0/style",
        ),
        (
            {"type": "actions", "elements": [button("b", "a"), button("c", "a")]},
            "/blocks/0/elements/1/action_id",
        ),
        (section("s", block_id="b" * 256), "/blocks/0/block_id"),
        (
            section(
                "s",
                accessory=button(
                    "Restore",
                    confirm={
                        "title": {"type": "plain_text", "text": "t" * 101},
                        "text": {"type": "mrkdwn", "text": "sure?"},
                        "confirm": {"type": "plain_text", "text": "Yes"},
                        "deny": {"type": "plain_text", "text": "No"},
                    },
                ),
            ),
            "/blocks/0/accessory/confirm/title/text",
        ),
        (
            section(
                "s", accessory={"type": "checkboxes", "action_id": "c", "options": _options(11)}
            ),
            "/blocks/0/accessory/options",
        ),
        (
            section(
                "s",
                accessory={
                    "type": "checkboxes",
                    "action_id": "c",
                    "options": _options(2),
                    "initial_options": [
                        {"text": {"type": "plain_text", "text": "zz"}, "value": "zz"}
                    ],
                },
            ),
            "/blocks/0/accessory/initial_options/0",
        ),
        (
            section(
                "s",
                accessory={
                    "type": "radio_buttons",
                    "action_id": "r",
                    "options": [{"text": {"type": "plain_text", "text": "o"}, "value": "v" * 151}],
                },
            ),
            "/blocks/0/accessory/options/0/value",
        ),
        (
            section("s", accessory={"type": "overflow", "action_id": "o", "options": _options(6)}),
            "/blocks/0/accessory/options",
        ),
        ({"type": "section", "text": {"type": "markdown", "text": "x"}}, "/blocks/0/text/type"),
        ({"type": "carousel"}, "/blocks/0/type"),
    ],
)
def test_validate_blocks_reports_each_documented_limit(block: dict[str, Any], pointer: str) -> None:
    errors = validate_blocks([block])
    assert any(e.endswith(f"[json-pointer:{pointer}]") for e in errors), errors


def test_validate_blocks_accepts_a_realistic_approval_message() -> None:
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "Restore requested"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Target*\nprod"}] * 2},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "by <@U111>"}]},
        {"type": "divider"},
        {
            "type": "actions",
            "block_id": "approval-1",
            "elements": [
                button("Approve", "approve", style="primary", value="r1"),
                button("Deny", "deny", style="danger"),
            ],
        },
    ]
    assert validate_blocks(blocks) == []


def test_blocks_without_top_level_text_are_accepted_with_a_warning(fake: FakeSlackAPI) -> None:
    with pytest.warns(UserWarning):  # slack_sdk warns too
        fake.client().chat_postMessage(channel="C111", blocks=[section("only blocks")])
    assert len(fake.warnings) == 1 and "without a top-level text" in fake.warnings[0]


# -- messages, updates and other methods ------------------------------------------------


def test_chat_update_of_unknown_ts_answers_message_not_found(fake: FakeSlackAPI) -> None:
    answer = api_error(lambda: fake.client().chat_update(channel="C111", ts="1.000100", text="x"))
    assert answer["error"] == "message_not_found"


def test_chat_update_refuses_ephemeral_and_human_messages(fake: FakeSlackAPI) -> None:
    client = fake.client()
    ephemeral_ts = client.chat_postEphemeral(channel="C111", user="U111", text="psst")["message_ts"]
    assert api_error(lambda: client.chat_update(channel="C111", ts=ephemeral_ts, text="x"))[
        "error"
    ] == ("message_not_found")
    human_ts = fake.add_message("C111", "hello bot")
    assert api_error(lambda: client.chat_update(channel="C111", ts=human_ts, text="x"))[
        "error"
    ] == ("cant_update_message")


def test_chat_update_changes_the_stored_message_and_keeps_history(fake: FakeSlackAPI) -> None:
    client = fake.client()
    first = client.chat_postMessage(channel="C111", text="Backup started")
    reply = client.chat_postMessage(channel="C111", text="step 1", thread_ts=first["ts"])
    client.chat_update(channel="C111", ts=first["ts"], text="Backup done", blocks=[section("done")])

    current = fake.message("C111", first["ts"])
    assert current["text"] == "Backup done" and current["blocks"][0]["text"]["text"] == "done"
    assert current["reply_count"] == 1
    assert [m["text"] for m in fake.history("C111", first["ts"])] == [
        "Backup started",
        "Backup done",
    ]
    assert [m["ts"] for m in fake.replies("C111", first["ts"])] == [reply["ts"]]
    assert float(reply["ts"]) > float(first["ts"])
    link = client.chat_getPermalink(channel="C111", message_ts=reply["ts"])["permalink"]
    assert link.endswith(f"?thread_ts={first['ts']}&cid=C111")


def test_form_and_multipart_bodies_are_parsed_like_json(fake: FakeSlackAPI) -> None:
    client = fake.client()
    blocks = json.dumps([section("from a form")])
    client.api_call("chat.postMessage", params={"channel": "C111", "text": "t", "blocks": blocks})
    # slack_sdk switches to multipart only when a file is attached.
    client.api_call(
        "chat.postMessage", data={"channel": "C111", "text": "multipart"}, files={"file": b"x"}
    )
    form, multipart = fake.calls("chat.postMessage")
    assert (form.encoding, multipart.encoding) == ("form", "multipart")
    assert form.params["blocks"][0]["text"]["text"] == "from a form"
    assert [m["text"] for m in fake.messages("C111")] == ["t", "multipart"]


def test_unknown_token_method_and_channel_are_refused(fake: FakeSlackAPI) -> None:
    assert api_error(lambda: fake.client(token="xoxb-wrong").auth_test())["error"] == "invalid_auth"
    assert api_error(lambda: fake.client(token="").auth_test())["error"] == "invalid_auth"
    assert api_error(lambda: fake.client().api_call("chat.frobnicate"))["error"] == "unknown_method"
    answer = api_error(lambda: fake.client().chat_postMessage(channel="#general", text="t"))
    assert answer["error"] == "channel_not_found"


def test_configured_channels_usergroups_and_scopes_are_enforced() -> None:
    with FakeSlackAPI(
        channels={"C999": "backups"},
        usergroups={"S1": ["U1", "U2"]},
        scopes=["commands", "chat:write", "usergroups:read"],
    ) as fake:
        client = fake.client()
        assert api_error(lambda: client.chat_postMessage(channel="C111", text="t"))["error"] == (
            "channel_not_found"
        )
        assert client.chat_postMessage(channel="C999", text="t")["ok"]
        assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]
        assert api_error(lambda: client.usergroups_users_list(usergroup="S404"))["error"] == (
            "no_such_subteam"
        )
        missing = api_error(lambda: client.users_info(user="U1"))
        assert (missing["error"], missing["needed"]) == ("missing_scope", "users:read")


def test_views_open_validates_the_modal(fake: FakeSlackAPI) -> None:
    client = fake.client()
    view = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Restore"},
        "blocks": [section("x")],
    }
    assert client.views_open(trigger_id="1.2.3", view=view)["view"]["id"].startswith("V")
    bad = {**view, "title": {"type": "plain_text", "text": "t" * 25}}
    assert (
        api_error(lambda: client.views_open(trigger_id="1.2.3", view=bad))["error"]
        == "invalid_arguments"
    )


# -- failure injection and retries -----------------------------------------------


def test_rate_limit_is_retried_by_slack_sdk_handler(fake: FakeSlackAPI) -> None:
    # GIVEN one 429 answer queued (Retry-After 0 keeps the test fast; the handler adds jitter < 1s)
    fake.fail_next("chat.postMessage", status=429, retry_after=0)
    client = fake.client(retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    # WHEN the app posts THEN the retry succeeds and the fake saw both attempts
    assert client.chat_postMessage(channel="C111", text="hi")["ok"]
    statuses = [c.status for c in fake.calls("chat.postMessage")]
    assert statuses == [429, 200]
    assert len(fake.messages("C111")) == 1


def test_server_error_is_retried_by_slack_sdk_handler(fake: FakeSlackAPI) -> None:
    fake.fail_next("chat.update", status=500)
    ts = fake.client().chat_postMessage(channel="C111", text="a")["ts"]
    client = fake.client(retry_handlers=[ServerErrorRetryHandler(max_retry_count=1)])
    assert client.chat_update(channel="C111", ts=ts, text="b")["ok"]
    assert [c.status for c in fake.calls("chat.update")] == [500, 200]


def test_injected_error_is_answered_then_cleared(fake: FakeSlackAPI) -> None:
    fake.fail_next("chat.postMessage", error="channel_not_found", times=2)
    client = fake.client()
    for _ in range(2):
        assert api_error(lambda: client.chat_postMessage(channel="C111", text="t"))["error"] == (
            "channel_not_found"
        )
    assert client.chat_postMessage(channel="C111", text="t")["ok"]


# -- waiting and response_url -------------------------------------------------------


def test_wait_for_returns_calls_made_from_another_thread(fake: FakeSlackAPI) -> None:
    worker = threading.Thread(
        target=lambda: fake.client().chat_postMessage(channel="C111", text="bg")
    )
    worker.start()
    calls = fake.wait_for(
        lambda c: c.method == "chat.postMessage" and c.params["text"] == "bg", timeout=5
    )
    worker.join(timeout=5)
    assert calls[0].ok


def test_wait_for_times_out_with_the_calls_seen(fake: FakeSlackAPI) -> None:
    fake.client().auth_test()
    with pytest.raises(AssertionError, match=r"auth\.test"):
        fake.wait_for("chat.postMessage", timeout=0.2)


def test_response_url_sink_records_respond_and_replaces_the_original(fake: FakeSlackAPI) -> None:
    ts = fake.client().chat_postMessage(channel="C111", text="Approve?")["ts"]
    url = fake.response_url("r1", channel="C111", message_ts=ts)
    WebhookClient(url).send(text="Approved by <@U222>", replace_original=True)
    [recorded] = fake.wait_for_response("r1")
    assert recorded.status == 200 and recorded.body["replace_original"] is True
    assert fake.message("C111", ts)["text"] == "Approved by <@U222>"


# -- request builders and signatures ----------------------------------------------------


def test_signature_is_accepted_by_slack_sdk_and_tampering_is_detected() -> None:
    body = slash_command_body(text="now prod")
    headers = sign(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body.replace("prod", "staging"), headers)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)


def test_slash_command_body_has_the_fields_slack_sends() -> None:
    fields = {
        k: v[0]
        for k, v in parse_qs(slash_command_body(text="list prod 5"), keep_blank_values=True).items()
    }
    assert fields["command"] == "/backup" and fields["text"] == "list prod 5"
    expected = {
        "token",
        "team_id",
        "channel_id",
        "user_id",
        "user_name",
        "response_url",
        "trigger_id",
    }
    assert expected <= fields.keys()


def test_block_actions_click_uses_the_real_message(fake: FakeSlackAPI) -> None:
    blocks = [{"type": "actions", "elements": [button("Approve", "approve", value="restore-7")]}]
    ts = fake.client().chat_postMessage(channel="C111", text="Approve?", blocks=blocks)["ts"]
    message = fake.message("C111", ts)
    payload = json.loads(
        parse_qs(block_actions_body("approve", user_id="U222", message=message))["payload"][0]
    )
    assert payload["actions"][0]["value"] == "restore-7"
    assert payload["actions"][0]["block_id"] == message["blocks"][0]["block_id"]
    assert payload["container"] == {
        "type": "message",
        "message_ts": ts,
        "channel_id": "C111",
        "is_ephemeral": False,
    }
    with pytest.raises(ValueError, match="no element"):
        block_actions_payload("deny", message=message)


def test_bolt_app_accepts_signed_requests_and_refuses_tampered_ones(fake: FakeSlackAPI) -> None:
    app = App(signing_secret=SECRET, client=fake.client())
    seen: list[str] = []

    @app.command("/backup")
    def handle(ack: Any, command: dict[str, Any]) -> None:
        seen.append(command["text"])
        ack()

    @app.view("restore_modal")
    def submitted(ack: Any) -> None:
        ack()

    body = slash_command_body(text="status")
    assert app.dispatch(bolt_request(body, secret=SECRET)).status == 200
    assert seen == ["status"]
    tampered = bolt_request(body.replace("status", "restore"), sign(SECRET, body))
    assert app.dispatch(tampered).status == 401
    submission = view_submission_body(
        "restore_modal", {"b": {"a": {"type": "plain_text_input", "value": "x"}}}
    )
    assert app.dispatch(bolt_request(submission, secret=SECRET)).status == 200


def test_post_sends_signature_and_retry_headers(fake: FakeSlackAPI) -> None:
    body = json.dumps({"text": "hello"})
    status, _, text = post(
        fake.response_url("p1"), body, SECRET, retry_num=1, content_type="application/json"
    )
    assert (status, text) == (200, "ok")
    [recorded] = fake.responses("p1")
    assert recorded.headers["X-Slack-Retry-Num"] == "1"
    assert SignatureVerifier(SECRET).is_valid_request(body, recorded.headers)

"""Build and sign requests exactly as Slack sends them to an app (slash commands, interactions)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from slack_bolt.request import BoltRequest

JsonDict = dict[str, Any]

FORM = "application/x-www-form-urlencoded"
DEFAULT_RESPONSE_URL = "https://hooks.slack.com/commands/T111/111/xxxxx"

# Distinct trigger ids / action timestamps per built request, so handlers keyed on them can tell
# two clicks apart the way they can in Slack.
_sequence = itertools.count(1)


def _next_trigger_id() -> str:
    return f"{next(_sequence)}.111.fakefakefake"


def _action_ts() -> str:
    return f"{time.time():.6f}"


def sign(secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """Slack's v0 request signature headers for `body` (timestamp defaults to now)."""
    ts = int(time.time()) if timestamp is None else timestamp
    raw = body.encode("utf-8") if isinstance(body, str) else body
    base = b"v0:" + str(ts).encode("ascii") + b":" + raw
    digest = hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def slash_command_body(
    command: str = "/backup",
    text: str = "",
    user_id: str = "U111",
    channel_id: str = "C111",
    response_url: str = DEFAULT_RESPONSE_URL,
    trigger_id: str | None = None,
    *,
    team_id: str = "T111",
    team_domain: str = "test-domain",
    channel_name: str = "backups",
    user_name: str = "primary-owner",
    api_app_id: str = "A111",
    token: str = "verification_token",
) -> str:
    """Form-encoded slash command body, fields in the order Slack sends them."""
    fields = {
        "token": token,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _next_trigger_id(),
    }
    return urlencode(fields)


def _iter_elements(blocks: list[JsonDict]) -> list[tuple[JsonDict, JsonDict]]:
    """(block, element) pairs for every interactive element a user could touch."""
    found: list[tuple[JsonDict, JsonDict]] = []
    for block in blocks:
        if isinstance(block.get("accessory"), dict):
            found.append((block, block["accessory"]))
        if isinstance(block.get("element"), dict):
            found.append((block, block["element"]))
        if block.get("type") == "actions":
            found.extend((block, el) for el in block.get("elements", []) if isinstance(el, dict))
    return found


def _find_element(
    message: JsonDict, action_id: str, block_id: str | None
) -> tuple[JsonDict, JsonDict]:
    for block, element in _iter_elements(message.get("blocks") or []):
        if element.get("action_id") == action_id and block_id in (None, block.get("block_id")):
            return block, element
    # A click on something the message does not show cannot come from Slack: a test bug.
    raise ValueError(f"message {message.get('ts')} has no element with action_id {action_id!r}")


def block_actions_payload(
    action_id: str,
    value: str | None = None,
    user_id: str = "U111",
    channel_id: str = "C111",
    message_ts: str | None = None,
    thread_ts: str | None = None,
    block_id: str | None = None,
    message: JsonDict | None = None,
    action_type: str = "button",
    selected_options: list[JsonDict] | None = None,
    *,
    response_url: str = "https://hooks.slack.com/actions/T111/111/xxxxx",
    trigger_id: str | None = None,
    is_ephemeral: bool = False,
    team_id: str = "T111",
    api_app_id: str = "A111",
    user_name: str = "primary-owner",
    state_values: JsonDict | None = None,
) -> JsonDict:
    """The decoded block_actions payload for one click.

    Pass `message` (e.g. fake.message(channel, ts)) to click a real element: block_id, text,
    value and ts then come from that message, and a missing element raises ValueError.
    """
    element: JsonDict = {}
    if message is not None:
        block, element = _find_element(message, action_id, block_id)
        block_id = block.get("block_id", block_id)
        action_type = element.get("type", action_type)
        message_ts = message_ts or message.get("ts")
        thread_ts = thread_ts or (
            message.get("thread_ts") if message.get("thread_ts") != message.get("ts") else None
        )
        if value is not None and "value" in element and element["value"] != value:
            raise ValueError(
                f"button {action_id!r} carries value {element['value']!r}, not {value!r}"
            )
        if value is None:
            value = element.get("value")
    message_ts = message_ts or f"{time.time():.6f}"
    block_id = block_id or "fakeblock"

    action: JsonDict = {
        "action_id": action_id,
        "block_id": block_id,
        "type": action_type,
        "action_ts": _action_ts(),
    }
    if action_type == "button":
        action["text"] = element.get("text") or {
            "type": "plain_text",
            "text": "Button",
            "emoji": True,
        }
        if value is not None:
            action["value"] = value
        if "style" in element:
            action["style"] = element["style"]
    elif action_type in ("checkboxes", "multi_static_select"):
        action["selected_options"] = list(selected_options or [])
    elif action_type in ("radio_buttons", "static_select", "overflow"):
        chosen: JsonDict | None = selected_options[0] if selected_options else None
        if chosen is None and value is not None:
            chosen = next((o for o in element.get("options", []) if o.get("value") == value), None)
            chosen = chosen or {"text": {"type": "plain_text", "text": value}, "value": value}
        action["selected_option"] = chosen
    elif value is not None:
        action["value"] = value

    values: JsonDict = copy_json(state_values or {})
    if action_type in ("checkboxes", "radio_buttons", "static_select", "multi_static_select"):
        state = {k: v for k, v in action.items() if k.startswith("selected_")}
        values.setdefault(block_id, {})[action_id] = {"type": action_type, **state}

    container: JsonDict = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": is_ephemeral,
    }
    if thread_ts:
        container["thread_ts"] = thread_ts
    payload: JsonDict = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": "verification_token",
        "container": container,
        "trigger_id": trigger_id or _next_trigger_id(),
        "team": {"id": team_id, "domain": "test-domain"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "backups"},
        "state": {"values": values},
        "response_url": response_url,
        "actions": [action],
    }
    # Slack omits the message for clicks in ephemeral messages (see payload sample 03).
    if not is_ephemeral:
        shown = copy_json(message) if message is not None else None
        payload["message"] = shown or {
            "type": "message",
            "user": "UBOT",
            "bot_id": "BBOT",
            "app_id": api_app_id,
            "team": team_id,
            "text": "",
            "ts": message_ts,
            "blocks": [],
            **({"thread_ts": thread_ts} if thread_ts else {}),
        }
    return payload


def block_actions_body(*args: Any, **kwargs: Any) -> str:
    """`payload=<urlencoded JSON>` for a click; takes block_actions_payload's arguments."""
    return urlencode({"payload": json.dumps(block_actions_payload(*args, **kwargs))})


def view_submission_payload(
    callback_id: str,
    values: JsonDict,
    user_id: str = "U111",
    *,
    private_metadata: str = "",
    view_id: str = "V00000001",
    blocks: list[JsonDict] | None = None,
    title: str = "backupbot",
    team_id: str = "T111",
    api_app_id: str = "A111",
    trigger_id: str | None = None,
    response_urls: list[JsonDict] | None = None,
) -> JsonDict:
    """The decoded view_submission payload; `values` is state.values: {block_id: {action_id: {...}}}."""
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": "test-domain"},
        "user": {
            "id": user_id,
            "username": "primary-owner",
            "name": "primary-owner",
            "team_id": team_id,
        },
        "api_app_id": api_app_id,
        "token": "verification_token",
        "trigger_id": trigger_id or _next_trigger_id(),
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": copy_json(blocks or []),
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": copy_json(values)},
            "hash": "1700000000.fakehash",
            "title": {"type": "plain_text", "text": title},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": {"type": "plain_text", "text": "Submit"},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": api_app_id,
            "external_id": "",
            "app_installed_team_id": team_id,
            "bot_id": "BBOT",
        },
        "response_urls": response_urls or [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def view_submission_body(*args: Any, **kwargs: Any) -> str:
    """`payload=<urlencoded JSON>` for a modal submission; takes view_submission_payload's arguments."""
    return urlencode({"payload": json.dumps(view_submission_payload(*args, **kwargs))})


def copy_json(value: Any) -> Any:
    """A deep copy that also proves the value is plain JSON, as anything Slack sends must be."""
    return json.loads(json.dumps(value))


def post(
    url: str,
    body: bytes | str,
    secret: str,
    retry_num: int | None = None,
    timestamp: int | None = None,
    content_type: str = FORM,
    *,
    retry_reason: str = "http_timeout",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], str]:
    """POST a signed request to an app's HTTP endpoint; returns (status, headers, body) for any status."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    headers = {"Content-Type": content_type, **sign(secret, raw, timestamp)}
    if retry_num is not None:
        # Slack re-sends events it thinks timed out, marked with these two headers.
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    request = urllib.request.Request(url, data=raw, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read().decode("utf-8")


def bolt_request(
    body: str,
    headers: Mapping[str, str] | None = None,
    *,
    secret: str | None = None,
    content_type: str = FORM,
) -> BoltRequest:
    """A BoltRequest for app.dispatch(); with `secret` (and no signature given) it is signed now."""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if secret is not None and not any(k.lower() == "x-slack-signature" for k in all_headers):
        all_headers.update(sign(secret, body))
    return BoltRequest(body=body, headers=dict(all_headers))

"""A fake Slack Web API on a real local HTTP port, strict about Block Kit, for end-to-end tests."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, urlsplit

from slack_sdk import WebClient

JsonDict = dict[str, Any]

# slack_sdk form-encodes these as JSON strings when it does not send a JSON body.
JSON_VALUED_PARAMS = frozenset({"blocks", "attachments", "metadata", "view", "unfurls"})

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_MESSAGE_TEXT = 40_000
# Slack lets a response_url be used this many times (within 30 minutes).
RESPONSE_URL_MAX_USES = 5

# Any one of the listed scopes is enough; methods not listed need none.
REQUIRED_SCOPES: dict[str, tuple[str, ...]] = {
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "chat.postEphemeral": ("chat:write",),
    "conversations.info": ("channels:read", "groups:read", "im:read", "mpim:read"),
    "users.info": ("users:read",),
    "usergroups.users.list": ("usergroups:read",),
}

INTERACTIVE_ELEMENTS = frozenset(
    {
        "button",
        "checkboxes",
        "radio_buttons",
        "overflow",
        "static_select",
        "multi_static_select",
        "external_select",
        "multi_external_select",
        "users_select",
        "multi_users_select",
        "conversations_select",
        "multi_conversations_select",
        "channels_select",
        "multi_channels_select",
        "datepicker",
        "timepicker",
        "datetimepicker",
        "plain_text_input",
        "email_text_input",
        "url_text_input",
        "number_input",
        "rich_text_input",
        "file_input",
        "workflow_button",
    }
)
BLOCK_TYPES = frozenset(
    {
        "section",
        "header",
        "context",
        "actions",
        "divider",
        "image",
        "input",
        "rich_text",
        "markdown",
        "file",
        "video",
    }
)


# ---------------------------------------------------------------------------
# Block Kit validation (the limits in shared/slack/LIMITS.md)
# ---------------------------------------------------------------------------


class _BlockValidator:
    """Collects errors in Slack's own shape: "<message> [json-pointer:/blocks/0/text]"."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, message: str, pointer: str) -> None:
        self.errors.append(f"{message} [json-pointer:{pointer}]")

    def string(self, value: Any, pointer: str, max_len: int, *, required: bool = True) -> None:
        if value is None:
            if required:
                self.err("is required", pointer)
            return
        if not isinstance(value, str):
            self.err("must be a string", pointer)
        elif len(value) > max_len:
            self.err(f"must be less than {max_len + 1} characters", pointer)

    def text(
        self,
        obj: Any,
        pointer: str,
        max_len: int,
        *,
        plain_only: bool = False,
        required: bool = True,
    ) -> None:
        if obj is None:
            if required:
                self.err("is required", pointer)
            return
        if not isinstance(obj, dict):
            self.err("must be a text object", pointer)
            return
        kind = obj.get("type")
        if kind not in ("plain_text", "mrkdwn"):
            self.err("must be either `plain_text` or `mrkdwn`", f"{pointer}/type")
        elif plain_only and kind != "plain_text":
            self.err("must be a `plain_text` text object", f"{pointer}/type")
        value = obj.get("text")
        if not isinstance(value, str) or value == "":
            self.err("must be more than 0 characters", f"{pointer}/text")
        elif len(value) > max_len:
            self.err(f"must be less than {max_len + 1} characters", f"{pointer}/text")

    def count(self, items: Any, pointer: str, low: int, high: int) -> list[Any]:
        if not isinstance(items, list):
            self.err("must be an array", pointer)
            return []
        if len(items) < low:
            self.err(f"must provide at least {low} items", pointer)
        if len(items) > high:
            self.err(f"must be no more than {high} items", pointer)
        return items

    def blocks(self, blocks: Any, pointer: str, max_blocks: int) -> None:
        seen_ids: set[str] = set()
        for i, block in enumerate(self.count(blocks, pointer, 0, max_blocks)):
            self.block(block, f"{pointer}/{i}", seen_ids)

    def block(self, block: Any, ptr: str, seen_ids: set[str]) -> None:
        if not isinstance(block, dict):
            self.err("must be an object", ptr)
            return
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            self.err(f"unsupported type: {kind!r}", f"{ptr}/type")
            return
        if "block_id" in block:
            block_id = block["block_id"]
            self.string(block_id, f"{ptr}/block_id", 255)
            if isinstance(block_id, str):
                if block_id in seen_ids:
                    self.err("duplicate block_id", f"{ptr}/block_id")
                seen_ids.add(block_id)
        if kind == "section":
            if "text" not in block and "fields" not in block:
                self.err("must define either `text` or `fields`", ptr)
            if "text" in block:
                self.text(block["text"], f"{ptr}/text", 3000)
            if "fields" in block:
                for i, item in enumerate(self.count(block["fields"], f"{ptr}/fields", 1, 10)):
                    self.text(item, f"{ptr}/fields/{i}", 2000)
            if "accessory" in block:
                self.element(block["accessory"], f"{ptr}/accessory", allow_image=True)
        elif kind == "header":
            self.text(block.get("text"), f"{ptr}/text", 150, plain_only=True)
        elif kind == "context":
            for i, item in enumerate(self.count(block.get("elements"), f"{ptr}/elements", 1, 10)):
                if isinstance(item, dict) and item.get("type") == "image":
                    self.image(item, f"{ptr}/elements/{i}")
                else:
                    self.text(item, f"{ptr}/elements/{i}", 3000)
        elif kind == "actions":
            action_ids: set[str] = set()
            for i, item in enumerate(self.count(block.get("elements"), f"{ptr}/elements", 1, 25)):
                self.element(item, f"{ptr}/elements/{i}", allow_image=False)
                action_id = item.get("action_id") if isinstance(item, dict) else None
                if isinstance(action_id, str):
                    # Bolt routes on action_id; a duplicate in one block is ambiguous.
                    if action_id in action_ids:
                        self.err("duplicate action_id", f"{ptr}/elements/{i}/action_id")
                    action_ids.add(action_id)
        elif kind == "image":
            self.image(block, ptr)
            self.text(block.get("title"), f"{ptr}/title", 2000, plain_only=True, required=False)
        elif kind == "input":
            self.text(block.get("label"), f"{ptr}/label", 2000, plain_only=True)
            self.text(block.get("hint"), f"{ptr}/hint", 2000, plain_only=True, required=False)
            self.element(block.get("element"), f"{ptr}/element", allow_image=False)
        elif kind == "markdown":
            value = block.get("text")
            if not isinstance(value, str) or value == "":
                self.err("must be more than 0 characters", f"{ptr}/text")
            else:
                self.string(value, f"{ptr}/text", 12_000)
        elif kind == "rich_text":
            self.count(block.get("elements"), f"{ptr}/elements", 1, 10_000)

    def image(self, item: JsonDict, ptr: str) -> None:
        if "image_url" not in item and "slack_file" not in item:
            self.err("must define either `image_url` or `slack_file`", ptr)
        self.string(item.get("image_url"), f"{ptr}/image_url", 3000, required=False)
        self.string(item.get("alt_text"), f"{ptr}/alt_text", 2000)

    def element(self, el: Any, ptr: str, *, allow_image: bool) -> None:
        if not isinstance(el, dict):
            self.err("must be an object", ptr)
            return
        kind = el.get("type")
        if kind == "image" and allow_image:
            self.image(el, ptr)
            return
        if kind not in INTERACTIVE_ELEMENTS:
            self.err(f"unsupported element type: {kind!r}", f"{ptr}/type")
            return
        self.string(el.get("action_id"), f"{ptr}/action_id", 255, required=False)
        if "confirm" in el:
            self.confirm(el["confirm"], f"{ptr}/confirm")
        if "placeholder" in el:
            self.text(el["placeholder"], f"{ptr}/placeholder", 150, plain_only=True)
        if kind == "button":
            self.text(el.get("text"), f"{ptr}/text", 75, plain_only=True)
            self.string(el.get("value"), f"{ptr}/value", 2000, required=False)
            self.string(el.get("url"), f"{ptr}/url", 3000, required=False)
            self.style(el, ptr)
            self.string(
                el.get("accessibility_label"), f"{ptr}/accessibility_label", 75, required=False
            )
        elif kind in ("checkboxes", "radio_buttons"):
            options = self.options(el.get("options"), f"{ptr}/options", 1, 10, plain_only=False)
            self.initial(el, ptr, options, multi=kind == "checkboxes")
        elif kind == "overflow":
            self.options(el.get("options"), f"{ptr}/options", 1, 5, plain_only=True)
        elif kind in ("static_select", "multi_static_select"):
            if "options" in el:
                options = self.options(el["options"], f"{ptr}/options", 1, 100, plain_only=True)
            elif "option_groups" in el:
                options = []
                groups = self.count(el["option_groups"], f"{ptr}/option_groups", 1, 100)
                for i, group in enumerate(groups):
                    gptr = f"{ptr}/option_groups/{i}"
                    group = group if isinstance(group, dict) else {}
                    self.text(group.get("label"), f"{gptr}/label", 75, plain_only=True)
                    options += self.options(
                        group.get("options"), f"{gptr}/options", 1, 100, plain_only=True
                    )
            else:
                self.err("must define either `options` or `option_groups`", ptr)
                options = []
            self.initial(el, ptr, options, multi=kind == "multi_static_select")

    def style(self, el: JsonDict, ptr: str) -> None:
        if "style" in el and el["style"] not in ("primary", "danger"):
            self.err("must be either `primary` or `danger`", f"{ptr}/style")

    def confirm(self, dialog: Any, ptr: str) -> None:
        if not isinstance(dialog, dict):
            self.err("must be an object", ptr)
            return
        self.text(dialog.get("title"), f"{ptr}/title", 100, plain_only=True)
        self.text(dialog.get("text"), f"{ptr}/text", 300)
        self.text(dialog.get("confirm"), f"{ptr}/confirm", 30, plain_only=True)
        self.text(dialog.get("deny"), f"{ptr}/deny", 30, plain_only=True)
        self.style(dialog, ptr)

    def options(
        self, options: Any, ptr: str, low: int, high: int, *, plain_only: bool
    ) -> list[Any]:
        items = self.count(options, ptr, low, high)
        for i, option in enumerate(items):
            optr = f"{ptr}/{i}"
            if not isinstance(option, dict):
                self.err("must be an object", optr)
                continue
            self.text(option.get("text"), f"{optr}/text", 75, plain_only=plain_only)
            self.string(option.get("value"), f"{optr}/value", 150)
            self.text(option.get("description"), f"{optr}/description", 75, required=False)
            self.string(option.get("url"), f"{optr}/url", 3000, required=False)
        return items

    def initial(self, el: JsonDict, ptr: str, options: list[Any], *, multi: bool) -> None:
        key = "initial_options" if multi else "initial_option"
        if key not in el:
            return
        chosen = el[key] if multi else [el[key]]
        if not isinstance(chosen, list):
            self.err("must be an array", f"{ptr}/{key}")
            return
        known = {_option_key(o) for o in options if isinstance(o, dict)}
        for i, option in enumerate(chosen):
            if not isinstance(option, dict) or _option_key(option) not in known:
                where = f"{ptr}/{key}/{i}" if multi else f"{ptr}/{key}"
                self.err("must match one of the provided options", where)


def _option_key(option: JsonDict) -> tuple[Any, Any, Any]:
    text = option.get("text")
    text = text if isinstance(text, dict) else {}
    return option.get("value"), text.get("type"), text.get("text")


def validate_blocks(
    blocks: Any, *, max_blocks: int = MAX_MESSAGE_BLOCKS, pointer: str = "/blocks"
) -> list[str]:
    """Return Slack-style error strings for `blocks`; an empty list means Slack would accept them.

    Usable without the server, e.g. from table-driven tests of the Block Kit renderers.
    """
    validator = _BlockValidator()
    validator.blocks(blocks, pointer, max_blocks)
    return validator.errors


def validate_view(view: Any) -> list[str]:
    """Return Slack-style error strings for a modal view passed to views.open."""
    validator = _BlockValidator()
    if not isinstance(view, dict):
        validator.err("must be an object", "/view")
        return validator.errors
    if view.get("type") != "modal":
        validator.err("must be `modal`", "/view/type")
    validator.text(view.get("title"), "/view/title", 24, plain_only=True)
    validator.text(view.get("submit"), "/view/submit", 24, plain_only=True, required=False)
    validator.text(view.get("close"), "/view/close", 24, plain_only=True, required=False)
    validator.string(view.get("callback_id"), "/view/callback_id", 255, required=False)
    validator.string(view.get("private_metadata"), "/view/private_metadata", 3000, required=False)
    validator.blocks(view.get("blocks"), "/view/blocks", MAX_VIEW_BLOCKS)
    has_input = any(
        isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or []
    )
    if has_input and "submit" not in view:
        validator.err("must provide `submit` when the view has input blocks", "/view/submit")
    return validator.errors


# ---------------------------------------------------------------------------
# Recorded traffic
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedCall:
    """One Web API request as the fake saw it, with the answer it gave."""

    method: str
    params: JsonDict
    headers: dict[str, str]
    time: float
    encoding: str  # "json", "form" or "multipart": how the client sent the body
    status: int
    response: JsonDict

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))


@dataclass(frozen=True)
class RecordedResponse:
    """One POST to a response_url (what Bolt's respond() sends)."""

    response_id: str
    body: JsonDict
    headers: dict[str, str]
    time: float
    status: int


@dataclass
class _Failure:
    method: str
    status: int
    error: str | None
    retry_after: int
    remaining: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSlackAPI


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # Keep pytest output readable; every request is in fake.calls() anyway.
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        # urllib sends "Content-type"; normalise so lookups and recorded calls read the same.
        headers = {
            "-".join(w.capitalize() for w in k.split("-")): v for k, v in self.headers.items()
        }
        fake = self.server.fake
        if parts.path.startswith("/api/"):
            status, extra, payload = fake._handle_api(parts.path[5:], headers, parts.query, body)
            raw = json.dumps(payload).encode()
            ctype = "application/json; charset=utf-8"
        elif parts.path.startswith("/response/"):
            status, text = fake._handle_response_url(parts.path[10:], headers, body)
            extra, raw, ctype = {}, text.encode(), "text/plain; charset=utf-8"
        else:
            status, extra, raw, ctype = 404, {}, b"not found", "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)


def _parse_params(content_type: str, body: bytes, query: str) -> tuple[JsonDict, str]:
    """Decode a request the way Slack does: query string plus a JSON, form or multipart body."""
    params: JsonDict = dict(parse_qsl(query, keep_blank_values=True))
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        data = json.loads(body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("JSON body must be an object")
        params.update(data)
        return params, "json"
    if media == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                params[name] = payload.decode("utf-8", errors="replace")
        encoding = "multipart"
    else:
        params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        encoding = "form"
    for key in JSON_VALUED_PARAMS & params.keys():
        try:
            params[key] = json.loads(params[key])
        except (TypeError, ValueError):
            pass  # left as a string; the method answers invalid_*_format like Slack
    return params, encoding


def _err(error: str, **extra: Any) -> JsonDict:
    return {"ok": False, "error": error, **extra}


# ---------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------


class FakeSlackAPI:
    """A local Slack Web API. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        *,
        token: str = "xoxb-fake-bot-token",
        extra_tokens: Iterable[str] = (),
        channels: Mapping[str, str] | Iterable[str] | None = None,
        users: Mapping[str, JsonDict] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        scopes: Iterable[str] | None = None,
        team_id: str = "T111",
        team_domain: str = "fake-workspace",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_id: str = "A111",
    ) -> None:
        """
        channels: known channel ids (a mapping gives their names); None accepts any C/G/D id.
        users: known user ids with fields to show in users.info; None accepts any U/W id.
        usergroups: group id -> member user ids, for usergroups.users.list.
        scopes: the bot token's scopes; None grants every scope.
        """
        self.token = token
        self._tokens = {token, *extra_tokens}
        if channels is None:
            self._channels: dict[str, str] | None = None
        elif isinstance(channels, Mapping):
            self._channels = dict(channels)
        else:
            self._channels = {c: c.lower() for c in channels}
        self._users = {k: dict(v) for k, v in users.items()} if users is not None else None
        self._usergroups = {k: list(v) for k, v in (usergroups or {}).items()}
        self._scopes = set(scopes) if scopes is not None else None
        self.team_id, self.team_domain = team_id, team_domain
        self.bot_user_id, self.bot_id, self.app_id = bot_user_id, bot_id, app_id

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._calls: list[RecordedCall] = []
        self._responses: list[RecordedResponse] = []
        self._response_targets: dict[str, tuple[str, str] | None] = {}
        self._failures: list[_Failure] = []
        self._warnings: list[str] = []
        self._messages: dict[str, dict[str, JsonDict]] = {}
        self._history: dict[tuple[str, str], list[JsonDict]] = {}
        self._ephemerals: list[JsonDict] = []
        self._views: list[JsonDict] = []
        self._socket_mode_url: str | None = None
        # Integer microseconds so every ts is unique and increasing, formatted like Slack's.
        self._clock_us = 1_700_000_000_000_000
        self._block_id_seq = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> FakeSlackAPI:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        # A short poll interval keeps stop() fast.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-slack",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeSlackAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeSlackAPI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        """Base URL for WebClient(base_url=...); ends with "/" as slack_sdk expects."""
        return f"{self.root}/api/"

    def client(self, **kwargs: Any) -> WebClient:
        """A WebClient pointed at this fake with its bot token."""
        return WebClient(token=kwargs.pop("token", self.token), base_url=self.url, **kwargs)

    # -- configuration and failure injection --------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: int = 1,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls of `method` ("*" for any) fail.

        With `error` only: HTTP 200 {"ok": false, "error": error}. Otherwise HTTP `status`
        (default 429, with Retry-After: retry_after); 5xx answers {"ok": false, "error": "fatal_error"}.
        """
        if status is None:
            status = 200 if error is not None else 429
        with self._lock:
            self._failures.append(_Failure(method, status, error, retry_after, times))

    def set_usergroup(self, group_id: str, user_ids: Iterable[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = list(user_ids)

    def add_channel(self, channel_id: str, name: str | None = None) -> None:
        with self._lock:
            if self._channels is None:
                self._channels = {}
            self._channels[channel_id] = name or channel_id.lower()

    def add_message(
        self, channel: str, text: str, *, user: str = "U222", thread_ts: str | None = None
    ) -> str:
        """Seed a message written by a person (the app cannot chat.update it); returns its ts."""
        with self._lock:
            message = {"type": "message", "user": user, "text": text, "team": self.team_id}
            return self._store(channel, message, thread_ts)["ts"]

    def reset(self) -> None:
        """Forget calls, messages, warnings and pending failures (configuration stays)."""
        with self._lock:
            self._calls.clear()
            self._responses.clear()
            self._response_targets.clear()
            self._failures.clear()
            self._warnings.clear()
            self._messages.clear()
            self._history.clear()
            self._ephemerals.clear()
            self._views.clear()

    def enable_socket_mode(self, app_token: str, url: str) -> None:
        """Accept `app_token` (xapp-) for apps.connections.open, which then hands out `url`."""
        with self._lock:
            self._tokens.add(app_token)
            self._socket_mode_url = url

    # -- inspection -----------------------------------------------------------

    def calls(self, method: str | None = None) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(
        self,
        what: str | Callable[[RecordedCall], bool],
        timeout: float = 10.0,
        *,
        count: int = 1,
    ) -> list[RecordedCall]:
        """Wait until at least `count` calls match a method name or predicate; return all matches.

        Raises AssertionError listing the calls seen when the deadline passes.
        """
        predicate = (lambda c: c.method == what) if isinstance(what, str) else what
        return self._wait(lambda: [c for c in self._calls if predicate(c)], count, timeout, what)

    def response_url(
        self, response_id: str, *, channel: str | None = None, message_ts: str | None = None
    ) -> str:
        """URL of a response_url sink; with channel and message_ts, replace_original edits that message."""
        with self._lock:
            self._response_targets[response_id] = (
                (channel, message_ts) if channel and message_ts else None
            )
        return f"{self.root}/response/{response_id}"

    def responses(self, response_id: str | None = None) -> list[RecordedResponse]:
        with self._lock:
            return [
                r for r in self._responses if response_id is None or r.response_id == response_id
            ]

    def wait_for_response(
        self, response_id: str, timeout: float = 10.0, *, count: int = 1
    ) -> list[RecordedResponse]:
        return self._wait(
            lambda: [r for r in self._responses if r.response_id == response_id],
            count,
            timeout,
            response_id,
        )

    @property
    def warnings(self) -> list[str]:
        """Things Slack accepts but should not happen (e.g. blocks without a fallback text)."""
        with self._lock:
            return list(self._warnings)

    def message(self, channel: str, ts: str) -> JsonDict:
        """The current state of a message (after updates), as conversations.history would show it."""
        with self._lock:
            try:
                return copy.deepcopy(self._messages[channel][ts])
            except KeyError:
                known = sorted(self._messages.get(channel, {}))
                raise AssertionError(f"no message {ts} in {channel}; known: {known}") from None

    def messages(self, channel: str) -> list[JsonDict]:
        """Top-level messages of a channel (and thread broadcasts), oldest first."""
        with self._lock:
            found = [
                m
                for m in self._messages.get(channel, {}).values()
                if m.get("thread_ts") in (None, m["ts"]) or m.get("subtype") == "thread_broadcast"
            ]
            return copy.deepcopy(sorted(found, key=lambda m: m["ts"]))

    def replies(self, channel: str, thread_ts: str) -> list[JsonDict]:
        """Replies in a thread, oldest first (the parent excluded)."""
        with self._lock:
            found = [
                m
                for m in self._messages.get(channel, {}).values()
                if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts
            ]
            return copy.deepcopy(sorted(found, key=lambda m: m["ts"]))

    def history(self, channel: str, ts: str) -> list[JsonDict]:
        """Every version of a message, first post first."""
        with self._lock:
            return copy.deepcopy(self._history.get((channel, ts), []))

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[JsonDict]:
        with self._lock:
            return copy.deepcopy(
                [
                    e
                    for e in self._ephemerals
                    if (channel is None or e["channel"] == channel)
                    and (user is None or e["user"] == user)
                ]
            )

    def views(self) -> list[JsonDict]:
        with self._lock:
            return copy.deepcopy(self._views)

    # -- internals: waiting ---------------------------------------------------

    def _wait(
        self, collect: Callable[[], list[Any]], count: int, timeout: float, what: object
    ) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = collect()
                if len(matches) >= count:
                    return matches
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(c.method, c.status, c.response.get("error")) for c in self._calls]
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {count} x {what!r}; "
                        f"got {len(matches)}; calls seen: {seen}; responses: {len(self._responses)}"
                    )
                # Woken by every recorded call, so this polls only when something changed.
                self._changed.wait(remaining)

    # -- internals: HTTP entry points -----------------------------------------

    def _handle_api(
        self, method: str, headers: dict[str, str], query: str, body: bytes
    ) -> tuple[int, dict[str, str], JsonDict]:
        try:
            params, encoding = _parse_params(headers.get("Content-Type", ""), body, query)
        except ValueError:
            params, encoding = {"_raw": body.decode("utf-8", errors="replace")}, "invalid"
        with self._lock:
            status, extra, answer = self._answer(method, headers, params, encoding)
            self._calls.append(
                RecordedCall(
                    method, params, headers, time.time(), encoding, status, copy.deepcopy(answer)
                )
            )
            # Recorded before the answer goes out, so a test that saw the reply also sees the call.
            self._changed.notify_all()
        return status, extra, answer

    def _answer(
        self, method: str, headers: dict[str, str], params: JsonDict, encoding: str
    ) -> tuple[int, dict[str, str], JsonDict]:
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None or not re.fullmatch(r"[a-zA-Z]+(\.[a-zA-Z]+)+", method):
            return 200, {}, _err("unknown_method")
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.get("token")
        if not token or token not in self._tokens:
            return 200, {}, _err("invalid_auth")
        # App-level tokens (xapp-) open Socket Mode connections and nothing else, as on Slack.
        if (method == "apps.connections.open") != token.startswith("xapp-"):
            return 200, {}, _err("not_allowed_token_type")
        if encoding == "invalid":
            return 200, {}, _err("invalid_json")
        extra: dict[str, str] = {}
        if self._scopes is not None:
            extra["X-OAuth-Scopes"] = ",".join(sorted(self._scopes))
        failure = next(
            (f for f in self._failures if f.method in (method, "*") and f.remaining > 0), None
        )
        if failure is not None:
            failure.remaining -= 1
            if failure.status == 429:
                return 429, {**extra, "Retry-After": str(failure.retry_after)}, _err("ratelimited")
            return failure.status, extra, _err(failure.error or "fatal_error")
        needed = REQUIRED_SCOPES.get(method)
        if needed and self._scopes is not None and not self._scopes.intersection(needed):
            provided = ",".join(sorted(self._scopes))
            return 200, extra, _err("missing_scope", needed=",".join(needed), provided=provided)
        return 200, extra, handler(params)

    def _handle_response_url(
        self, response_id: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str]:
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError
        except ValueError:
            payload = {"_raw": body.decode("utf-8", errors="replace")}
        with self._lock:
            if "_raw" in payload:
                status, text = 400, "invalid_payload"
            else:
                status, text = self._apply_response(response_id, payload)
            self._responses.append(
                RecordedResponse(response_id, payload, headers, time.time(), status)
            )
            self._changed.notify_all()
        return status, text

    def _apply_response(self, response_id: str, payload: JsonDict) -> tuple[int, str]:
        used = sum(1 for r in self._responses if r.response_id == response_id and r.status == 200)
        if used >= RESPONSE_URL_MAX_USES:
            return 404, "used_url"
        if "blocks" in payload and validate_blocks(payload["blocks"]):
            return 400, "invalid_blocks"
        target = self._response_targets.get(response_id)
        if target is not None and target[1] in self._messages.get(target[0], {}):
            channel, ts = target
            if payload.get("delete_original"):
                del self._messages[channel][ts]
            elif payload.get("replace_original"):
                self._edit(channel, ts, payload)
        return 200, "ok"

    # -- internals: message store ------------------------------------------------

    def _next_ts(self) -> str:
        self._clock_us += 100
        return f"{self._clock_us // 1_000_000}.{self._clock_us % 1_000_000:06d}"

    def _known_channel(self, channel: object) -> TypeGuard[str]:
        if not isinstance(channel, str):
            return False
        if self._channels is None:
            return re.fullmatch(r"[CGD][A-Z0-9]+", channel) is not None
        return channel in self._channels

    def _known_user(self, user: object) -> TypeGuard[str]:
        if not isinstance(user, str):
            return False
        if self._users is None:
            return re.fullmatch(r"[UW][A-Z0-9]+", user) is not None
        return user in self._users

    def _with_block_ids(self, blocks: list[JsonDict]) -> list[JsonDict]:
        # Slack gives every block without a block_id a generated one; so does the fake.
        result = copy.deepcopy(blocks)
        for block in result:
            if "block_id" not in block:
                self._block_id_seq += 1
                block["block_id"] = f"fake{self._block_id_seq:04d}"
        return result

    def _store(self, channel: str, message: JsonDict, thread_ts: str | None) -> JsonDict:
        message = {**message, "ts": self._next_ts()}
        if thread_ts:
            parent = self._messages[channel][thread_ts]
            parent["thread_ts"] = thread_ts
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent["latest_reply"] = message["ts"]
            message["thread_ts"] = thread_ts
            message["parent_user_id"] = parent.get("user")
        self._messages.setdefault(channel, {})[message["ts"]] = message
        self._history[(channel, message["ts"])] = [copy.deepcopy(message)]
        return message

    def _edit(self, channel: str, ts: str, params: JsonDict) -> JsonDict:
        message = self._messages[channel][ts]
        if "blocks" in params:
            self._warn_on_reused_block_ids(channel, ts, message.get("blocks", []), params["blocks"])
            message["blocks"] = self._with_block_ids(params["blocks"])
        if "text" in params:
            message["text"] = params["text"]
        if "metadata" in params:
            message["metadata"] = params["metadata"]
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        self._history[(channel, ts)].append(copy.deepcopy(message))
        return message

    def _warn_on_reused_block_ids(
        self, channel: str, ts: str, old: list[JsonDict], new: Any
    ) -> None:
        # Slack may keep a block's old interactive state when its block_id survives an update.
        old_by_id = {b.get("block_id"): b for b in old if isinstance(b, dict)}
        for block in new if isinstance(new, list) else []:
            if not isinstance(block, dict) or block.get("block_id") not in old_by_id:
                continue
            interactive = block.get("type") in ("actions", "input") or "accessory" in block
            if interactive and old_by_id[block["block_id"]] != block:
                self._warnings.append(
                    f"chat.update {channel}/{ts}: block_id {block['block_id']!r} reused for changed interactive block"
                )

    def _check_message(self, method: str, params: JsonDict) -> JsonDict | None:
        """The error Slack would give for this message's content, or None; records warnings."""
        blocks, text = params.get("blocks"), params.get("text")
        if blocks is not None:
            if not isinstance(blocks, list):
                return _err("invalid_blocks_format")
            errors = validate_blocks(blocks)
            if errors:
                return _err(
                    "invalid_blocks",
                    errors=errors,
                    response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
                )
        if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
            return _err("msg_too_long")
        if not blocks and not text and not params.get("attachments"):
            return _err("no_text")
        if blocks and not (isinstance(text, str) and text.strip()):
            # Slack accepts this, but notifications and screen readers then show nothing useful.
            self._warnings.append(
                f"{method} to {params.get('channel')}: blocks without a top-level text"
            )
        return None

    # -- Web API methods (called with the lock held) ------------------------------

    def _api_auth_test(self, params: JsonDict) -> JsonDict:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": "Fake Workspace",
            "user": "backupbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _api_chat_postMessage(self, params: JsonDict) -> JsonDict:
        channel = params.get("channel")
        if not self._known_channel(channel):
            return _err("channel_not_found")
        problem = self._check_message("chat.postMessage", params)
        if problem is not None:
            return problem
        thread_ts = params.get("thread_ts") or None
        if thread_ts is not None:
            parent = self._messages.get(channel, {}).get(thread_ts)
            if parent is None:
                return _err("invalid_thread_ts")
            if parent.get("thread_ts") not in (None, thread_ts):
                self._warnings.append(
                    f"chat.postMessage to {channel}: thread_ts {thread_ts} is a reply, not a parent"
                )
                thread_ts = parent["thread_ts"]
        message: JsonDict = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": params.get("text", ""),
        }
        if params.get("blocks") is not None:
            message["blocks"] = self._with_block_ids(params["blocks"])
        if params.get("metadata") is not None:
            message["metadata"] = params["metadata"]
        if thread_ts and str(params.get("reply_broadcast")).lower() in ("true", "1"):
            message["subtype"] = "thread_broadcast"
        stored = self._store(channel, message, thread_ts)
        return {
            "ok": True,
            "channel": channel,
            "ts": stored["ts"],
            "message": copy.deepcopy(stored),
        }

    def _api_chat_update(self, params: JsonDict) -> JsonDict:
        channel, ts = params.get("channel"), str(params.get("ts") or "")
        if not self._known_channel(channel):
            return _err("channel_not_found")
        message = self._messages.get(channel, {}).get(ts)
        if message is None:
            # Ephemeral messages are never stored here, so updating one lands here too, as on Slack.
            return _err("message_not_found")
        if message.get("user") != self.bot_user_id:
            return _err("cant_update_message")
        problem = self._check_message("chat.update", {**message, **params})
        if problem is not None:
            return problem
        edited = self._edit(channel, ts, params)
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": edited["text"],
            "message": copy.deepcopy(edited),
        }

    def _api_chat_postEphemeral(self, params: JsonDict) -> JsonDict:
        channel, user = params.get("channel"), params.get("user")
        if not self._known_channel(channel):
            return _err("channel_not_found")
        if not self._known_user(user):
            return _err("user_not_found")
        problem = self._check_message("chat.postEphemeral", params)
        if problem is not None:
            return problem
        ts = self._next_ts()
        ephemeral = {
            "channel": channel,
            "user": user,
            "ts": ts,
            "text": params.get("text", ""),
            "blocks": copy.deepcopy(params.get("blocks", [])),
            "thread_ts": params.get("thread_ts"),
        }
        self._ephemerals.append(ephemeral)
        return {"ok": True, "message_ts": ts}

    def _api_chat_getPermalink(self, params: JsonDict) -> JsonDict:
        channel, ts = params.get("channel"), str(params.get("message_ts") or "")
        if not self._known_channel(channel):
            return _err("channel_not_found")
        message = self._messages.get(channel, {}).get(ts)
        if message is None:
            return _err("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        if message.get("thread_ts") not in (None, ts):
            link += f"?thread_ts={message['thread_ts']}&cid={channel}"
        return {"ok": True, "channel": channel, "permalink": link}

    def _api_conversations_info(self, params: JsonDict) -> JsonDict:
        channel = params.get("channel")
        if not self._known_channel(channel):
            return _err("channel_not_found")
        name = (self._channels or {}).get(channel, channel.lower())
        return {
            "ok": True,
            "channel": {
                "id": channel,
                "name": name,
                "is_channel": channel.startswith("C"),
                "is_group": channel.startswith("G"),
                "is_im": channel.startswith("D"),
                "is_private": not channel.startswith("C"),
                "is_archived": False,
                "is_member": True,
            },
        }

    def _api_users_info(self, params: JsonDict) -> JsonDict:
        user = params.get("user")
        if not self._known_user(user):
            return _err("user_not_found")
        profile = {"display_name": user.lower(), "real_name": f"User {user}"}
        info: JsonDict = {
            "id": user,
            "team_id": self.team_id,
            "name": user.lower(),
            "real_name": profile["real_name"],
            "deleted": False,
            "is_bot": False,
            "tz": "UTC",
            "tz_offset": 0,
            "profile": profile,
        }
        info.update(copy.deepcopy((self._users or {}).get(user, {})))
        return {"ok": True, "user": info}

    def _api_usergroups_users_list(self, params: JsonDict) -> JsonDict:
        group = params.get("usergroup")
        if group not in self._usergroups:
            return _err("no_such_subteam")
        return {"ok": True, "users": list(self._usergroups[group])}

    def _api_views_open(self, params: JsonDict) -> JsonDict:
        if not params.get("trigger_id"):
            return _err("invalid_trigger_id")
        view = params.get("view")
        errors = validate_view(view)
        if errors or not isinstance(view, dict):
            return _err(
                "invalid_arguments",
                response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
            )
        view_id = f"V{len(self._views) + 1:08d}"
        opened = {
            **copy.deepcopy(view),
            "id": view_id,
            "team_id": self.team_id,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            "root_view_id": view_id,
            "previous_view_id": None,
            "hash": f"{int(time.time())}.fakehash{len(self._views) + 1}",
            "state": {"values": {}},
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "blocks": self._with_block_ids(view.get("blocks", [])),
        }
        self._views.append(opened)
        return {"ok": True, "view": copy.deepcopy(opened)}

    def _api_apps_connections_open(self, params: JsonDict) -> JsonDict:
        url = self._socket_mode_url
        if url is None:
            # Socket Mode is off in the app's settings.
            return _err("not_allowed_token_type")
        return {"ok": True, "url": url}

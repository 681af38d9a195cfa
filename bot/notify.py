"""Posting to Slack for the core's events: every Web API call goes through here, so a Slack
outage, a rate limit or a wrong channel is logged and reported, never a crash, and never loses a
backup's result (that lives in the catalog first)."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.core.redact import redact

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, client: WebClient, channel: str | None) -> None:
        self.client = client
        self.channel = channel
        self.last_error: str | None = None

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            resp = getattr(self.client, method)(**kwargs)
            self.last_error = None
            return dict(resp.data) if isinstance(resp.data, dict) else None
        except SlackApiError as exc:
            err = exc.response.get("error", "unknown") if exc.response is not None else "unknown"
            self.last_error = f"Slack {method} failed: {err}"
        except Exception as exc:  # network errors after the SDK's own retries
            self.last_error = f"Slack {method} failed: {type(exc).__name__}: {exc}"
        log.warning(redact(self.last_error))
        return None

    def post(self, text: str, blocks: list[dict[str, Any]] | None = None, *, channel: str | None = None,
             thread_ts: str | None = None) -> str | None:
        """Post a message; returns its ts, or None (logged) when Slack refused or was unreachable."""
        target = channel or self.channel
        if not target:
            log.info("no SLACK_CHANNEL configured; not posting: %s", redact(text[:200]))
            return None
        kwargs: dict[str, Any] = {"channel": target, "text": redact(text)}
        if blocks is not None:
            kwargs["blocks"] = redact_blocks(blocks)
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        data = self._call("chat_postMessage", **kwargs)
        return str(data["ts"]) if data and data.get("ts") else None

    def update(self, ts: str, text: str, blocks: list[dict[str, Any]] | None = None, *,
               channel: str | None = None) -> bool:
        kwargs: dict[str, Any] = {"channel": channel or self.channel, "ts": ts, "text": redact(text)}
        if blocks is not None:
            kwargs["blocks"] = redact_blocks(blocks)
        return self._call("chat_update", **kwargs) is not None

    def ephemeral(self, user: str, text: str, blocks: list[dict[str, Any]] | None = None, *,
                  channel: str | None = None, thread_ts: str | None = None) -> bool:
        kwargs: dict[str, Any] = {"channel": channel or self.channel, "user": user, "text": redact(text)}
        if blocks is not None:
            kwargs["blocks"] = redact_blocks(blocks)
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        return self._call("chat_postEphemeral", **kwargs) is not None

    def permalink(self, ts: str, channel: str | None = None) -> str | None:
        data = self._call("chat_getPermalink", channel=channel or self.channel, message_ts=ts)
        return str(data["permalink"]) if data and data.get("permalink") else None


def redact_blocks(value: Any) -> Any:
    """Redact every string inside a Block Kit structure (the one place messages pass through)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_blocks(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_blocks(v) for k, v in value.items()}
    return value

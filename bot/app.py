"""Front end 2: `create_app(settings, services)` builds the Bolt app. Listeners live in
`commands/`; each module's `register(app, ctx)` closes over this context."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.config import Settings
from bot.core.redact import redact
from bot.errors import BackupbotError, ConfigError
from bot.notify import Notifier
from bot.services import Services
from commands.router import Router

log = logging.getLogger(__name__)
GROUP_CACHE_SECONDS = 300
FAILED_LOOKUP_SECONDS = 30  # a failed lookup refuses for this long before Slack is asked again
SEEN_TTL_SECONDS = 600


class _TokenUnused(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


_TOKEN_FILTER = _TokenUnused()


def _quiet_bolt_token_warning() -> None:
    logging.getLogger("slack_bolt.App").addFilter(_TOKEN_FILTER)  # adding it again is a no-op


def make_client(settings: Settings) -> WebClient:
    """A WebClient that retries rate limits (honouring Retry-After), 5xx and connection errors."""
    return WebClient(
        token=settings.slack.bot_token,
        base_url=settings.slack.api_url if settings.slack.api_url.endswith("/") else settings.slack.api_url + "/",
        timeout=15,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def check_slack(client: WebClient) -> None:
    """Before anything starts: Slack's Web API answers and accepts the bot token. Either failure
    is one line (the supervisor restarts the bot; schedules run only while it runs)."""
    sdk_log = logging.getLogger("slack_sdk.web.base_client")
    level = sdk_log.level
    sdk_log.setLevel(logging.CRITICAL)  # its per-attempt errors would repeat ours, with a traceback
    try:
        client.auth_test()
    except SlackApiError as exc:
        raise ConfigError(f"Slack refused the bot token at auth.test ({exc.response.get('error')})",
                          "SLACK_BOT_TOKEN") from None
    except OSError as exc:  # urllib's URLError included: DNS, refused, TLS, proxy
        reason = getattr(exc, "reason", None) or exc
        raise BackupbotError(f"cannot reach Slack's Web API at {client.base_url}: {redact(reason)}; check the "
                             "network, a proxy, or SLACK_API_URL") from None
    finally:
        sdk_log.setLevel(level)


@dataclass
class AppContext:
    """What the Slack listeners share: the core services plus Slack-side helpers."""

    settings: Settings
    core: Services
    client: WebClient
    notifier: Notifier
    router: Router = field(default_factory=Router)
    jobs: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="job"))
    _groups: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)
    _group_errors: dict[str, str] = field(default_factory=dict)  # groups Slack could not be asked about
    _seen: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- who may do what ----------------------------------------------------------------------
    def group_members(self, group_id: str) -> frozenset[str]:
        """The group's members, cached for GROUP_CACHE_SECONDS. A failed lookup counts as an empty
        group (permissions are refused, never granted from an old list) for FAILED_LOOKUP_SECONDS,
        and ``lookup_note`` then tells the refused person why."""
        asked = time.monotonic()
        with self._lock:
            cached = self._groups.get(group_id)
            ttl = FAILED_LOOKUP_SECONDS if group_id in self._group_errors else GROUP_CACHE_SECONDS
            if cached and asked - cached[0] < ttl:
                return cached[1]
        try:
            users: frozenset[str] = frozenset(self.client.usergroups_users_list(usergroup=group_id).get("users", []))
        except Exception as exc:  # SlackApiError, or the network after slack_sdk's retries
            why = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
            log.warning("cannot resolve user group %s: %s", group_id, why)
            with self._lock:
                if self._answered_later(group_id, asked):  # a newer answer stands, and is the answer
                    return self._groups[group_id][1]
                self._groups[group_id] = (asked, frozenset())
                self._group_errors[group_id] = str(why)
            return frozenset()
        with self._lock:
            if self._answered_later(group_id, asked):  # an older answer never replaces a newer one
                return self._groups[group_id][1]
            self._groups[group_id] = (asked, users)
            self._group_errors.pop(group_id, None)
        return users

    def _answered_later(self, group_id: str, asked: float) -> bool:
        """Whether a lookup asked after ``asked`` has already been written (entries carry their ask time)."""
        entry = self._groups.get(group_id)
        return entry is not None and entry[0] > asked

    def lookup_note(self, entries: tuple[str, ...]) -> str:
        """For a refusal: the user groups among ``entries`` Slack could not be asked about just now."""
        with self._lock:
            failed = {e: self._group_errors[e] for e in entries if e in self._group_errors}
        if not failed:
            return ""
        return (" Slack could not be asked who is in " + ", ".join(f"<!subteam^{g}> ({why})" for g, why in failed.items())
                + ", so its members could not be recognised: try again in a moment.")

    def matches(self, user_id: str, entries: tuple[str, ...]) -> bool:
        """Is the user listed, directly or through a user group (S…)?"""
        if user_id in entries:
            return True
        return any(e.startswith("S") and user_id in self.group_members(e) for e in entries)

    def is_operator(self, user_id: str) -> bool:
        ops = self.settings.slack.operators
        return not ops or self.matches(user_id, ops)

    def channel_allowed(self, channel_id: str) -> bool:
        s = self.settings.slack
        return channel_id == s.channel or channel_id in s.allowed_channels or not s.channel

    def first_time(self, key: str) -> bool:
        """False when the same request (e.g. a trigger_id) was already handled recently."""
        now = time.monotonic()
        with self._lock:
            for k, t in list(self._seen.items()):
                if now - t > SEEN_TTL_SECONDS:
                    del self._seen[k]
            if key in self._seen:
                return False
            self._seen[key] = now
            return True

    def audit(self, event: str, user_id: str, /, *, then: Callable[[], Any] | None = None, **details: Any) -> None:
        """One audit event. ``then``: what tells the user (a refusal): run after the record, so the
        audit log holds it by the time they read the answer, and run even when the record fails."""
        try:
            self.core.catalog.audit(event, actor=user_id, source="slack",
                                    target=details.pop("target", None), backup_id=details.pop("backup_id", None),
                                    details=details)
        finally:
            if then is not None:
                then()

    def shared(self, name: str, factory: Any) -> Any:
        """The app's one instance of a helper (runner, alert poster…), made on first use at
        registration, before any request can arrive."""
        obj = getattr(self, name, None)
        if obj is None:
            obj = factory(self)
            setattr(self, name, obj)
        return obj

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run slow work off the ack path; failures are logged with an id, never swallowed."""

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except BackupbotError as exc:
                log.warning("background job failed: %s", exc.message)
                raise
            except Exception:
                log.exception("background job crashed (job id %s)", uuid.uuid4().hex[:8])
                raise

        return self.jobs.submit(run)


def validate_slack_settings(settings: Settings, *, http: bool) -> None:
    s = settings.slack
    if not s.bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is not set (the xoxb- token from OAuth & Permissions)", "SLACK_BOT_TOKEN")
    if http and not s.signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is required in HTTP mode (Basic Information > App Credentials)",
                          "SLACK_SIGNING_SECRET")
    if not http and not s.app_token:
        raise ConfigError("SLACK_APP_TOKEN (xapp-…) is required for Socket Mode, or run with --http",
                          "SLACK_APP_TOKEN")
    if not s.channel or s.channel[0] not in "CG":
        raise ConfigError("SLACK_CHANNEL must be a channel id like C0123456789 (channel details, at the bottom)",
                          "SLACK_CHANNEL")


def create_app(settings: Settings, services: Services, *, client: WebClient | None = None,
               token_verification: bool = True) -> tuple[App, AppContext]:
    """Build the Bolt app and register every listener module."""
    client = client or make_client(settings)
    # The bot token comes with the client; Bolt also reads SLACK_BOT_TOKEN from the environment
    # and then warns, on every start, that it is unused: noise an operator would chase.
    _quiet_bolt_token_warning()
    app = App(
        signing_secret=settings.slack.signing_secret or "unused-in-socket-mode",
        client=client,
        token_verification_enabled=token_verification,
        raise_error_for_unhandled_request=False,
    )
    ctx = AppContext(settings=settings, core=services, client=client,
                     notifier=Notifier(client, settings.slack.channel))

    @app.error
    def on_error(error: Exception, body: dict[str, Any], logger: logging.Logger) -> None:
        error_id = uuid.uuid4().hex[:8]
        logger.error("unhandled error %s: %s", error_id, redact(error), exc_info=error)
        user = (body.get("user") or {}).get("id") or body.get("user_id")
        channel = (body.get("channel") or {}).get("id") or body.get("channel_id")
        if user and channel:
            ctx.notifier.ephemeral(user, f":warning: Something went wrong (error id `{error_id}`); "
                                         "the bot's log has the details.", channel=channel)

    from commands import register_all

    register_all(app, ctx)
    return app, ctx

"""HEARTBEAT_URL: an outside monitor (healthchecks.io and the like) pinged after every completed
backup, so that silence — no backups, or no bot — is noticed by something that is not the bot."""

from __future__ import annotations

import logging
import re
import urllib.request
from collections.abc import Mapping

from bot.core.redact import redact, register_secret
from bot.errors import ConfigError

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 10.0


def check_http_url(url: str, where: str) -> None:
    if not re.match(r"^https?://[^\s/]+", url):
        raise ConfigError("must be an http:// or https:// URL", where)


def heartbeat_url(env: Mapping[str, str]) -> str | None:
    """HEARTBEAT_URL, checked; None when unset. It is registered as a secret: anyone holding a
    ping URL can fake the pings."""
    url = (env.get("HEARTBEAT_URL") or "").strip()
    if not url:
        return None
    check_http_url(url, "HEARTBEAT_URL")
    register_secret(url)
    return url


def ping_heartbeat(url: str, timeout: float = HEARTBEAT_TIMEOUT_S) -> bool:
    """GET the heartbeat URL. A failure is logged, never raised: the monitor outside will notice
    the missing ping, which is the point."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "backupbot"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http(s) checked at config)
            resp.read(1024)
        return True
    except Exception as exc:  # any failure (a proxy's malformed reply too): the backup is done regardless
        log.warning("heartbeat ping failed: %s", redact(getattr(exc, "reason", None) or exc))
        return False

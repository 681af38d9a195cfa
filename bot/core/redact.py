"""One place that removes secrets from any text before a human or a log sees it."""

from __future__ import annotations

import re
import threading

_lock = threading.Lock()
_known_secrets: set[str] = set()

# user:password@ inside any URL-ish string (postgresql://, postgres://, https://)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
# key=value conninfo style: password=..., also quoted
_KV_PASSWORD = re.compile(r"(?i)\b((?:ssl)?password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
# Slack tokens, AWS keys, age secret keys, bearer tokens
_TOKENS = [
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+"),
    re.compile(r"\bxapp-[A-Za-z0-9-]+"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bAGE-SECRET-KEY-1[0-9A-Z]+\b"),
    re.compile(r"\bsbp_[A-Za-z0-9]+\b"),
    re.compile(r"(?i)(authorization:\s*bearer\s+)\S+"),
    re.compile(r"(?i)(PGPASSWORD=)\S+"),
    re.compile(r"(?i)(aws_secret_access_key\s*[=:]\s*)\S+"),
]

MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret so that it is masked wherever it appears, even out of context."""
    if value and len(value) >= 4:
        with _lock:
            _known_secrets.add(value)


def redact(text: object) -> str:
    """Return ``text`` with every password, token and registered secret masked."""
    s = str(text)
    s = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", s)
    s = _KV_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", s)
    for pattern in _TOKENS:
        if pattern.groups:
            s = pattern.sub(lambda m: m.group(1) + MASK, s)
        else:
            s = pattern.sub(MASK, s)
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        s = s.replace(secret, MASK)
    return s


class RedactingFilter:
    """logging.Filter that redacts every record's rendered message and traceback."""

    def filter(self, record: object) -> bool:
        import logging

        assert isinstance(record, logging.LogRecord)
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            record.exc_info = None
        return True


def install_log_redaction() -> None:
    """Attach the redacting filter to every root handler (call once at start-up)."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())  # type: ignore[arg-type]

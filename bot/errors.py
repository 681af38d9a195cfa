"""The one exception tree: every message is safe to show a user (secrets redacted)."""

from __future__ import annotations

from bot.core.redact import redact


class BackupbotError(Exception):
    """Root of every error backupbot raises on purpose.

    ``message`` is one line a human can act on; it has passed through ``redact``.
    ``detail`` is optional extra context (e.g. a stderr tail), also redacted.
    """

    exit_code = 1

    def __init__(self, message: str, *, detail: str = "") -> None:
        self.message = redact(message)
        self.detail = redact(detail)
        super().__init__(self.message)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a supervisor, `kill`), raised by the CLI's handler: unwinds like Ctrl-C, so a
    backup removes its partial files and its run is marked failed; the CLI exits 143."""


class ConfigError(BackupbotError):
    """A setting is missing or invalid."""

    exit_code = 2

    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"invalid configuration: {what} ({where})")


class ConnectionFailed(BackupbotError):
    """The database server could not be reached or refused us."""


class VersionMismatch(BackupbotError):
    """pg_dump/pg_restore are older than the server."""


class ToolFailed(BackupbotError):
    """A pg_* tool exited with a status we did not accept."""


class DumpError(BackupbotError):
    """A backup could not be completed."""


class StorageError(BackupbotError):
    """A destination could not store or return a copy."""


class CatalogError(BackupbotError):
    """The catalog (BACKUPBOT_DB) cannot be opened or written."""


class NotFound(BackupbotError):
    """An id, target or copy does not exist."""


class IntegrityError(BackupbotError):
    """A stored copy does not match its recorded checksum or is not a valid archive."""


class RestoreError(BackupbotError):
    """A restore failed; the message says what state the destination is in."""


class Refused(BackupbotError):
    """A request was understood and deliberately refused (permissions, state, policy)."""

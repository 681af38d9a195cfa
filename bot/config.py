"""Settings from the environment, an optional .env file and an optional TOML file of targets.

Validated once at start-up into a frozen object; a bad value is reported as
``invalid configuration: <what> (<where>)``.
"""

from __future__ import annotations

import builtins
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.core.pgtools import sslpassword_problem
from bot.core.redact import register_secret
from bot.errors import ConfigError

DEFAULT_TARGET = "default"
SLACK_API_DEFAULT = "https://slack.com/api/"


@dataclass(frozen=True)
class Target:
    """One database we back up."""

    name: str
    database_url: str = field(repr=False)
    profile: str = "auto"  # auto | supabase | plain
    schedule: str = "0 2 * * *"
    exclude_schemas: tuple[str, ...] | None = None  # None: the profile's default list


@dataclass(frozen=True)
class RetentionPolicy:
    hourly: int = 24  # a window: the newest backup of each hour within the last N hours
    daily: int = 7
    weekly: int = 4
    monthly: int = 3
    min_verified: int = 3


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None  # None | AES256 | aws:kms
    kms_key_id: str | None = None
    part_size: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class EncryptionSettings:
    recipients: tuple[str, ...] = ()  # age public keys (age1...)
    identity_file: Path | None = None  # age secret key(s) used to decrypt for verify/restore

    @property
    def enabled(self) -> bool:
        return bool(self.recipients)


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str | None = field(default=None, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    app_token: str | None = field(default=None, repr=False)
    channel: str | None = None
    api_url: str = SLACK_API_DEFAULT
    alert_mentions: tuple[str, ...] = ()
    runbook_url: str | None = None
    operators: tuple[str, ...] = ()
    allowed_channels: tuple[str, ...] = ()
    restore_requesters: tuple[str, ...] | None = None  # None: same as operators
    restore_approvers: tuple[str, ...] = ()
    restore_approval_ttl_minutes: int = 30


@dataclass(frozen=True)
class Settings:
    targets: Mapping[str, Target]
    default_target: str
    backup_dir: Path
    catalog_path: Path
    s3: S3Settings | None = None
    retention: RetentionPolicy = RetentionPolicy()
    encryption: EncryptionSettings = EncryptionSettings()
    compression_level: int = 4
    compression_threads: int = 2  # zstd worker threads; 0: compress in the calling thread
    exact_count_max_rows: int = 1_000_000
    timezone: str = "UTC"
    pg_bindir: Path | None = None
    post_restore_command: str | None = None
    restore_work_mem: str = "512MB"  # maintenance_work_mem of the restore session (index builds)
    restore_jobs: int = 2  # pg_restore --jobs for restores into a new database; 1: stream, one transaction
    restore_temp_dir: Path | None = None  # where a parallel restore unpacks the archive (None: $TMPDIR)
    post_restore_timeout_s: int = 600  # POST_RESTORE_TIMEOUT, seconds
    slack: SlackSettings = SlackSettings()
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)  # raw values, for later features

    def target(self, name: str | None) -> Target:
        from bot.errors import NotFound

        key = name or self.default_target
        try:
            return self.targets[key]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise NotFound(f"unknown target {key!r} (known targets: {known})") from None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a .env file: KEY=VALUE lines, optional quotes, # comments, optional 'export '."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"line {lineno} is not KEY=VALUE", str(path))
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def parse_duration(raw: str, where: str) -> timedelta:
    """'26h', '90m', '2d', '45s' or a bare number of hours."""
    text = raw.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 3600)
        seconds = float(number) * unit
        if not math.isfinite(seconds) or abs(seconds) > 100 * 365 * 86400:
            raise ValueError(raw)
        return timedelta(seconds=seconds)
    except ValueError:
        raise ConfigError(f"{raw!r} is not a duration like 26h, 90m or 2d", where) from None


def _age_recipient_ok(rec: str) -> bool:
    import pyrage

    try:
        pyrage.x25519.Recipient.from_str(rec)
    except Exception:  # pyrage's RecipientError (invalid Bech32, wrong length…)
        return False
    return True


def _memory(raw: str) -> str:
    if not re.fullmatch(r"\d+(kB|MB|GB)", raw.strip()):
        raise ConfigError(f"must be a size like 512MB or 1GB, got {raw!r}", "RESTORE_MAINTENANCE_WORK_MEM")
    return raw.strip()


def _directory(raw: str | None, where: str) -> Path | None:
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{raw!r} is not an existing directory", where)
    return path


def _csv(raw: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (raw or "").split(",") if x.strip())


class _Reader:
    """Typed access to the merged raw values, with error messages naming the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        value = self.env.get(key)
        return value if value not in (None, "") else default

    def int(self, key: builtins.str, default: builtins.int, *, minimum: builtins.int = 0) -> builtins.int:
        raw = self.str(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{key} must be a whole number, got {raw!r}", key) from None
        if value < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, got {value}", key)
        return value

    def path(self, key: builtins.str, default: builtins.str) -> Path:
        return Path(self.str(key, default) or default).expanduser()


def _check_url(url: str, where: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:
        raise ConfigError("not a valid PostgreSQL connection URL", where) from None
    problem = sslpassword_problem(params)
    if problem:
        raise ConfigError(problem, where)


def _targets_from_file(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Target], str | None]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", f"BACKUPBOT_CONFIG={path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", str(path)) from None
    targets: dict[str, Target] = {}
    for name, spec in (data.get("targets") or {}).items():
        where = f"{path} [targets.{name}]"
        if not isinstance(spec, dict):
            raise ConfigError("must be a table", where)
        url = spec.get("database_url")
        if url is None and "database_url_env" in spec:
            url = env.get(spec["database_url_env"])
            if not url:
                raise ConfigError(f"{spec['database_url_env']} is not set", where)
        if not url:
            raise ConfigError("needs database_url or database_url_env", where)
        _check_url(url, where)
        profile = spec.get("profile", "auto")
        if profile not in ("auto", "supabase", "plain"):
            raise ConfigError(f"profile must be auto, supabase or plain, got {profile!r}", where)
        excl = spec.get("exclude_schemas")
        targets[name] = Target(
            name=name,
            database_url=url,
            profile=profile,
            schedule=spec.get("schedule", env.get("BACKUP_SCHEDULE") or "0 2 * * *"),
            exclude_schemas=tuple(excl) if excl is not None else None,
        )
    return targets, data.get("default_target")


def _same_database(a: str, b: str) -> bool:
    """Whether two connection URLs name the same database however spelled: postgres:// or
    postgresql://, the default port 5432 written out or not, a password or options added. Only
    URLs that spell out one host and the user compare so; any other (a service, hostaddr, several
    hosts, a part left to PGHOST/PGPORT/PGUSER/PGDATABASE or libpq's defaults) is the same only
    as the very same text: a wrong "same" would silently ignore DATABASE_URL."""
    from psycopg.conninfo import conninfo_to_dict

    def key(url: str) -> tuple[str, str, str, str] | None:
        given = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        host, user = given.get("host", ""), given.get("user", "")
        if not host or not user or "," in host or "service" in given or "hostaddr" in given:
            return None
        port = given.get("port") or ("" if os.environ.get("PGPORT") else "5432")
        dbname = given.get("dbname") or ("" if os.environ.get("PGDATABASE") else user)
        if not port or not dbname:
            return None
        # Host names ignore case; a socket directory does not. Database and user names are exact.
        return (host if host.startswith("/") else host.lower(), port, dbname, user)

    try:
        ka, kb = key(a), key(b)
    except Exception:  # not parseable: only the very same text is the same database
        return a == b
    return a == b if ka is None or kb is None else ka == kb


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Merge .env (lower priority) and the environment, validate, and return frozen settings."""
    env: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        env.update(read_env_file(Path(env_file)))
    env.update(os.environ if environ is None else environ)
    r = _Reader(env)

    targets: dict[str, Target] = {}
    default_target: str | None = None
    config_file = r.str("BACKUPBOT_CONFIG")
    if config_file:
        targets, default_target = _targets_from_file(Path(config_file), env)
    url = r.str("DATABASE_URL")
    if url:
        _check_url(url, "DATABASE_URL")
        name = r.str("BACKUP_TARGET", DEFAULT_TARGET) or DEFAULT_TARGET
        profile = r.str("BACKUP_PROFILE", "auto") or "auto"
        if profile not in ("auto", "supabase", "plain"):
            raise ConfigError(f"must be auto, supabase or plain, got {profile!r}", "BACKUP_PROFILE")
        excl = r.str("EXCLUDE_SCHEMAS")
        if targets:  # a targets file: DATABASE_URL may only be one of its targets' URL
            matching = [t.name for t in targets.values() if _same_database(t.database_url, url)]
            if matching:  # the one it describes is the default, unless the file or BACKUP_DEFAULT_TARGET says
                default_target = default_target or (name if name in matching else matching[0])
            else:
                # Likely a copied .env.example beside the file: it would either be ignored or add
                # a target backed up (and alerted about) every night. Say so instead of guessing.
                raise ConfigError(f"DATABASE_URL is set, but no target in BACKUPBOT_CONFIG ({', '.join(targets)}) "
                                  "is that database: give it to one there (database_url_env = \"DATABASE_URL\"), "
                                  "or unset DATABASE_URL", "DATABASE_URL")
        else:
            targets[name] = Target(
                name=name,
                database_url=url,
                profile=profile,
                schedule=r.str("BACKUP_SCHEDULE", "0 2 * * *") or "0 2 * * *",
                exclude_schemas=_csv(excl) if excl is not None else None,
            )
            default_target = default_target or name
    if not targets:
        raise ConfigError("DATABASE_URL is not set (or give targets in BACKUPBOT_CONFIG)", "DATABASE_URL")
    default_target = r.str("BACKUP_DEFAULT_TARGET", default_target) or next(iter(targets))
    if default_target not in targets:
        raise ConfigError(f"default target {default_target!r} is not defined", "BACKUP_DEFAULT_TARGET")
    for t in targets.values():
        _register_url_password(t.database_url)

    s3 = None
    bucket = r.str("S3_BUCKET")
    if bucket:
        sse = r.str("S3_SSE")
        if sse not in (None, "AES256", "aws:kms"):
            raise ConfigError(f"must be AES256 or aws:kms, got {sse!r}", "S3_SSE")
        s3 = S3Settings(
            bucket=bucket,
            prefix=(r.str("S3_PREFIX", "") or "").strip("/"),
            endpoint_url=r.str("S3_ENDPOINT_URL"),
            region=r.str("S3_REGION") or r.str("AWS_DEFAULT_REGION") or r.str("AWS_REGION"),
            sse=sse,
            kms_key_id=r.str("S3_SSE_KMS_KEY_ID"),
            part_size=r.int("S3_PART_SIZE_MB", 16, minimum=5) * 1024 * 1024,
        )
    register_secret(r.str("AWS_SECRET_ACCESS_KEY"))

    recipients = _csv(r.str("ENCRYPTION_RECIPIENTS"))
    for rec in recipients:
        if not rec.startswith("age1") or not _age_recipient_ok(rec):
            raise ConfigError("each recipient must be an age public key (age1..., as `age-keygen -y` prints it)",
                              "ENCRYPTION_RECIPIENTS")
    identity = r.str("AGE_IDENTITY_FILE")
    encryption = EncryptionSettings(recipients=recipients, identity_file=Path(identity) if identity else None)

    tz = r.str("BACKUP_TIMEZONE", "UTC") or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {tz!r}", "BACKUP_TIMEZONE") from None

    level = r.int("COMPRESSION_LEVEL", 4, minimum=1)
    if level > 19:
        raise ConfigError("must be between 1 and 19", "COMPRESSION_LEVEL")

    slack = SlackSettings(
        bot_token=r.str("SLACK_BOT_TOKEN"),
        signing_secret=r.str("SLACK_SIGNING_SECRET"),
        app_token=r.str("SLACK_APP_TOKEN"),
        channel=r.str("SLACK_CHANNEL"),
        api_url=r.str("SLACK_API_URL", SLACK_API_DEFAULT) or SLACK_API_DEFAULT,
        alert_mentions=_csv(r.str("ALERT_MENTIONS")),
        runbook_url=r.str("RUNBOOK_URL"),
        operators=_csv(r.str("BACKUP_OPERATORS")),
        allowed_channels=_csv(r.str("ALLOWED_CHANNELS")),
        restore_requesters=_csv(r.str("RESTORE_REQUESTERS")) if r.str("RESTORE_REQUESTERS") else None,
        restore_approvers=_csv(r.str("RESTORE_APPROVERS")),
        restore_approval_ttl_minutes=r.int("RESTORE_APPROVAL_TTL", 30, minimum=1),
    )
    for secret in (slack.bot_token, slack.signing_secret, slack.app_token):
        register_secret(secret)
    register_secret(r.str("SUPABASE_ACCESS_TOKEN"))

    bindir = r.str("PG_BINDIR")
    return Settings(
        targets=targets,
        default_target=default_target,
        backup_dir=r.path("BACKUP_DIR", "./backups"),
        catalog_path=r.path("BACKUPBOT_DB", "./backupbot.db"),
        s3=s3,
        retention=RetentionPolicy(
            hourly=r.int("RETENTION_HOURLY", 24),
            daily=r.int("RETENTION_DAILY", 7),
            weekly=r.int("RETENTION_WEEKLY", 4),
            monthly=r.int("RETENTION_MONTHLY", 3),
            min_verified=r.int("RETENTION_MIN_VERIFIED", 3),
        ),
        encryption=encryption,
        compression_level=level,
        compression_threads=r.int("COMPRESSION_THREADS", min(2, os.cpu_count() or 1)),
        exact_count_max_rows=r.int("EXACT_COUNT_MAX_ROWS", 1_000_000),
        timezone=tz,
        pg_bindir=Path(bindir) if bindir else None,
        post_restore_command=r.str("POST_RESTORE_COMMAND"),
        restore_work_mem=_memory(r.str("RESTORE_MAINTENANCE_WORK_MEM", "512MB") or "512MB"),
        restore_jobs=r.int("RESTORE_JOBS", 2, minimum=1),
        restore_temp_dir=_directory(r.str("RESTORE_TEMP_DIR"), "RESTORE_TEMP_DIR"),
        post_restore_timeout_s=r.int("POST_RESTORE_TIMEOUT", 600, minimum=1),
        slack=slack,
        extra=dict(env),
    )


def _register_url_password(url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        register_secret(str(conninfo_to_dict(url).get("password") or ""))
    except Exception:
        pass

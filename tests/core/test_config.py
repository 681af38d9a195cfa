"""Configuration is validated once; every bad value is one line naming the variable."""

from __future__ import annotations

import pytest

from bot.config import load_settings, parse_duration, read_env_file
from bot.errors import ConfigError

URL = "postgresql://u:pw@db.example.com:5432/crm"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "invalid configuration: DATABASE_URL is not set (or give targets in BACKUPBOT_CONFIG) (DATABASE_URL)"),
        ({"DATABASE_URL": "not a url at all ==="}, "invalid configuration: not a valid PostgreSQL connection URL (DATABASE_URL)"),
        ({"DATABASE_URL": URL, "RETENTION_DAILY": "-1"}, "RETENTION_DAILY must be at least 0, got -1 (RETENTION_DAILY)"),
        ({"DATABASE_URL": URL, "COMPRESSION_LEVEL": "25"}, "must be between 1 and 19 (COMPRESSION_LEVEL)"),
        ({"DATABASE_URL": URL, "BACKUP_TIMEZONE": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus' (BACKUP_TIMEZONE)"),
        ({"DATABASE_URL": URL, "S3_BUCKET": "b", "S3_SSE": "rot13"}, "must be AES256 or aws:kms, got 'rot13' (S3_SSE)"),
        ({"DATABASE_URL": URL, "ENCRYPTION_RECIPIENTS": "ssh-ed25519 AAAA"}, "(ENCRYPTION_RECIPIENTS)"),
        ({"DATABASE_URL": URL, "BACKUP_PROFILE": "oracle"}, "must be auto, supabase or plain, got 'oracle' (BACKUP_PROFILE)"),
        ({"DATABASE_URL": URL, "RESTORE_MAINTENANCE_WORK_MEM": "lots"}, "(RESTORE_MAINTENANCE_WORK_MEM)"),
    ],
)
def test_bad_values_are_one_clear_line_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as err:
        load_settings(env, env_file=None)
    assert message in err.value.message
    assert "\n" not in err.value.message and "pw@" not in err.value.message


def test_env_only_single_target_works_with_nothing_else():
    s = load_settings({"DATABASE_URL": URL}, env_file=None)
    assert list(s.targets) == ["default"] and s.default_target == "default"
    assert str(s.backup_dir) == "backups" and str(s.catalog_path) == "backupbot.db"
    assert (s.retention.daily, s.retention.min_verified) == (7, 3)
    assert s.s3 is None and not s.encryption.enabled
    assert "pw" not in repr(s)


def test_named_targets_from_a_toml_file_read_urls_from_the_environment(tmp_path):
    cfg = tmp_path / "backupbot.toml"
    cfg.write_text('default_target = "prod"\n[targets.prod]\ndatabase_url_env = "PROD_URL"\nprofile = "supabase"\n'
                   '[targets.staging]\ndatabase_url = "postgresql://s@staging/crm"\nschedule = "*/15 * * * *"\n')
    s = load_settings({"BACKUPBOT_CONFIG": str(cfg), "PROD_URL": URL}, env_file=None)
    assert s.default_target == "prod" and s.target(None).profile == "supabase"
    assert s.target("staging").schedule == "*/15 * * * *"
    with pytest.raises(Exception, match="unknown target 'qa' \\(known targets: prod, staging\\)"):
        s.target("qa")
    with pytest.raises(ConfigError, match="PROD_URL is not set"):
        load_settings({"BACKUPBOT_CONFIG": str(cfg)}, env_file=None)


def test_database_url_beside_a_targets_file_is_refused_rather_than_adding_a_target(tmp_path):
    # GIVEN a targets file, and DATABASE_URL / BACKUP_TARGET from a copied .env.example
    cfg = tmp_path / "backupbot.toml"
    cfg.write_text('[targets.prod]\ndatabase_url_env = "PROD_URL"\n[targets.staging]\n'
                   'database_url = "postgresql://s@staging/crm"\n')
    env = {"BACKUPBOT_CONFIG": str(cfg), "PROD_URL": URL, "BACKUP_TARGET": "default",
           "DATABASE_URL": "postgresql://postgres:change-me@localhost/x"}
    # WHEN the settings load THEN one line says what is wrong and what to do
    for target in ("default", "prod"):  # an extra target, or one whose URL would be ignored
        with pytest.raises(ConfigError) as err:
            load_settings({**env, "BACKUP_TARGET": target}, env_file=None)
        assert "DATABASE_URL is set, but no target in BACKUPBOT_CONFIG (prod, staging) is that database" in \
            err.value.message
        assert "change-me" not in err.value.message
    # AND the form the message suggests works, with no extra target
    cfg.write_text('[targets.prod]\ndatabase_url_env = "DATABASE_URL"\n[targets.staging]\n'
                   'database_url = "postgresql://s@staging/crm"\n')
    settings = load_settings(env, env_file=None)
    assert sorted(settings.targets) == ["prod", "staging"]
    assert settings.targets["prod"].database_url == env["DATABASE_URL"]
    # AND the same database spelled another way (scheme, default port, a password .pgpass would
    # give, options) is that target, which becomes the default, as BACKUP_TARGET says
    cfg.write_text('[targets.staging]\ndatabase_url = "postgresql://s@staging/crm"\n'
                   '[targets.prod]\ndatabase_url = "postgresql://app@db.internal/crm"\n')
    for spelling in ("postgres://app:secret@db.internal:5432/crm?sslmode=require", "postgresql://app@db.internal/crm"):
        settings = load_settings({**env, "DATABASE_URL": spelling, "BACKUP_TARGET": "prod"}, env_file=None)
        assert sorted(settings.targets) == ["prod", "staging"] and settings.default_target == "prod"


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text('# comment\nexport DATABASE_URL="postgresql://a@h/db"\nRETENTION_DAILY=9  # nine\nBACKUP_DIR=/x\n')
    assert read_env_file(env_file)["RETENTION_DAILY"] == "9"
    s = load_settings({"BACKUP_DIR": "/from-env"}, env_file=env_file)
    assert s.retention.daily == 9 and str(s.backup_dir) == "/from-env"
    env_file.write_text("this line has no equals sign\n")
    with pytest.raises(ConfigError, match="line 1 is not KEY=VALUE"):
        load_settings({}, env_file=env_file)


@pytest.mark.parametrize(("raw", "seconds"), [("26h", 93600), ("90m", 5400), ("2d", 172800), ("45s", 45), ("1.5", 5400)])
def test_durations(raw, seconds):
    assert parse_duration(raw, "X").total_seconds() == seconds


def test_bad_duration_names_the_variable():
    with pytest.raises(ConfigError, match=r"'soon' is not a duration like 26h, 90m or 2d \(MAX_BACKUP_AGE\)"):
        parse_duration("soon", "MAX_BACKUP_AGE")


@pytest.mark.parametrize("raw", ["infh", "nan", "-infd", "1e300s", "", "h"])
def test_durations_that_are_no_duration_are_refused_not_crashed_on(raw):
    with pytest.raises(ConfigError, match=r"is not a duration like 26h"):
        parse_duration(raw, "MAX_BACKUP_AGE")


def test_an_encryption_recipient_that_is_not_a_valid_age_key_is_refused_at_start_up():
    import pyrage

    good = str(pyrage.x25519.Identity.generate().to_public())
    env = {"DATABASE_URL": "postgresql://a@h/db"}
    assert load_settings({**env, "ENCRYPTION_RECIPIENTS": good}, env_file=None).encryption.recipients == (good,)
    for bad in ("age1garbage", good[:-1] + ("q" if good[-1] != "q" else "p"), "ssh-ed25519 AAAA"):
        with pytest.raises(ConfigError, match=r"age public key .*\(ENCRYPTION_RECIPIENTS\)"):
            load_settings({**env, "ENCRYPTION_RECIPIENTS": bad}, env_file=None)


def test_database_urls_that_only_look_alike_are_not_the_same_database(tmp_path, monkeypatch):
    # GIVEN a targets file whose prod is on localhost, and libpq defaults that point elsewhere
    cfg = tmp_path / "backupbot.toml"
    cfg.write_text('[targets.prod]\ndatabase_url = "postgresql://app@localhost/crm"\n')
    for var in ("PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGHOST", "staging.internal")
    # WHEN DATABASE_URL leaves the host to libpq (which would reach staging), names a service,
    # or a socket directory spelled differently
    for url in ("postgresql://app@/crm", "postgresql://app@localhost/crm?service=staging",
                "postgresql://app@%2Ftmp%2FPG/crm", "postgresql://app@/crm?host="):
        # THEN it is not taken for prod (its own database would be silently ignored): refused
        with pytest.raises(ConfigError, match="no target in BACKUPBOT_CONFIG \\(prod\\) is that database"):
            load_settings({"BACKUPBOT_CONFIG": str(cfg), "DATABASE_URL": url}, env_file=None)
    # AND with the same host spelled out, it is prod
    settings = load_settings({"BACKUPBOT_CONFIG": str(cfg), "DATABASE_URL": "postgres://app:pw@localhost:5432/crm"},
                             env_file=None)
    assert list(settings.targets) == ["prod"]



def test_same_database_compares_spellings_not_guesses(monkeypatch):
    from bot.config import _same_database

    for var in ("PGPORT", "PGDATABASE"):
        monkeypatch.delenv(var, raising=False)
    # the same database, spelled differently
    assert _same_database("postgres://app:pw@DB.internal:5432/crm?sslmode=require", "postgresql://app@db.internal/crm")
    # not the same, or not knowable from the text: a wrong "same" would ignore DATABASE_URL
    assert not _same_database("postgresql://app@localhost/crm?service=staging", "postgresql://app@localhost/crm")
    assert not _same_database("postgresql://app@%2Ftmp%2FPG/crm", "postgresql://app@%2Ftmp%2Fpg/crm")
    assert not _same_database("postgresql://app@/crm?host=", "postgresql://app@staging/crm")
    assert not _same_database("postgresql://app@db/crm", "postgresql://app@db/Crm")
    monkeypatch.setenv("PGPORT", "5433")
    assert not _same_database("postgresql://app@db/crm", "postgresql://app@db:5432/crm")

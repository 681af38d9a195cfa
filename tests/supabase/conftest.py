"""One backup of the session's Supabase-shaped source project, shared by the Supabase tests, and
services over its catalog pointed at whichever database a test restores to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.core.catalog import Backup
from bot.services import Services
from tests.fixtures.supabase_cluster import SupabaseProject


def backup_env(workdir: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "BACKUP_DIR": str(workdir / "backups"),
        "BACKUPBOT_DB": str(workdir / "catalog.db"),
        "BACKUP_TARGET": "prod",
        **extra,
    }


@dataclass
class StoredBackup:
    """A backup of supabase_source and the settings that find it again."""

    workdir: Path
    backup: Backup

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        return backup_env(self.workdir, database_url, **extra)

    def services(self, database_url: str, **extra: str) -> Services:
        """Services whose target "prod" is ``database_url`` (where --into and --in-place go)."""
        return Services(load_settings(self.env(database_url, **extra), env_file=None))


@pytest.fixture(scope="session")
def source_backup(supabase_source: SupabaseProject, tmp_path_factory: pytest.TempPathFactory) -> StoredBackup:
    """A backup of the source project taken as `postgres` (the session's, so restores reuse it)."""
    workdir = tmp_path_factory.mktemp("supabase-backups")
    services = Services(load_settings(backup_env(workdir, supabase_source.postgres_url), env_file=None))
    return StoredBackup(workdir, services.backup(actor="tester", source="cli").backup)

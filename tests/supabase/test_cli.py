"""`backupbot restore ID --to URL --yes` end to end, as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.supabase_cluster import SupabaseProject
from tests.supabase.conftest import StoredBackup
from tests.supabase.facts import scalar


def _cli(stored: StoredBackup, source: SupabaseProject, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stored.env(source.postgres_url)}
    return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_restore_to_a_fresh_project_succeeds_and_a_failing_one_exits_non_zero(
    source_backup: StoredBackup, supabase_source: SupabaseProject, supabase_fresh: SupabaseProject, tmp_path: Path,
) -> None:
    backup_id = source_backup.backup.id
    # WHEN restored --to a fresh project THEN exit 0 and the report prints the statement to run
    ok = _cli(source_backup, supabase_source, tmp_path, "restore", backup_id, "--to", supabase_fresh.postgres_url, "--yes")
    assert ok.returncode == 0, ok.stderr
    assert "✓ rows auth.users — 3 restored, 3 in backup" in ok.stdout
    assert "ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.deals;" in ok.stdout
    assert supabase_fresh.postgres_password not in ok.stdout + ok.stderr
    # WHEN restored again onto the same project (its auth tables now have those rows)
    again = _cli(source_backup, supabase_source, tmp_path, "restore", backup_id, "--to", supabase_fresh.postgres_url, "--yes")
    # THEN it exits non-zero with one line naming what failed, and the project is unchanged
    assert again.returncode != 0
    [line] = again.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: pg_restore failed") and "TABLE DATA auth." in line and "Nothing was restored" in line
    assert scalar(supabase_fresh.postgres_url, "SELECT count(*) FROM public.profiles") == 3
    assert scalar(supabase_fresh.postgres_url, "SELECT has_table_privilege('anon', 'public.audit_log', 'SELECT')") is False

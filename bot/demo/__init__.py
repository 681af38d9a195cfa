"""`backupbot demo`: a throwaway cluster, a CRM-shaped database, a backup, a restore, a report."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path


def crm_sql() -> str:
    return resources.files("bot.demo").joinpath("crm.sql").read_text(encoding="utf-8")


def run_demo(keep: bool = False) -> int:
    from bot.config import load_settings
    from bot.core.cluster import Cluster
    from bot.core.restore import RestoreRequest
    from bot.render.common import human_bytes
    from bot.services import Services

    work = Path(tempfile.mkdtemp(prefix="backupbot-demo-"))
    print(f"demo: starting a throwaway PostgreSQL cluster in {work}")
    cluster = Cluster()
    try:
        cluster.start()
        url = cluster.create_database("crm")
        cluster.execute(crm_sql(), "crm")
        print(f"demo: loaded a CRM-shaped database ({cluster.url('crm', password='')}) with roles, RLS, jsonb")
        env = {"DATABASE_URL": url, "BACKUP_DIR": str(work / "backups"), "BACKUPBOT_DB": str(work / "catalog.db"),
               "BACKUP_TARGET": "demo", "PATH": os.environ.get("PATH", "")}
        services = Services(load_settings(env, env_file=None))
        outcome = services.backup(actor="demo", source="cli")
        b = outcome.backup
        print(f"demo: backup {b.id}: {human_bytes(b.size_bytes)} (database {human_bytes(b.manifest['database_size_bytes'])}), "
              f"sha256 {b.sha256[:12]}…, {b.duration_s:.2f}s")
        checks = services.verify(b.id, actor="demo", source="cli")
        print("demo: verify: " + ", ".join(f"{c.destination} {'ok' if c.ok else c.error}" for c in checks))
        restored, _ = services.restore(RestoreRequest(b.id, mode="into", into="crm_restored"), actor="demo", source="cli")
        print(f"demo: restored into {restored.destination} in {restored.duration_s:.2f}s; verification report:")
        for line in restored.report.lines():
            print(f"  {line}")
        ok = restored.report.ok and all(c.ok for c in checks)
        print("demo: OK — every check passed" if ok else "demo: FAILED — see the report above")
        return 0 if ok else 1
    finally:
        cluster.stop()
        if keep:
            print(f"demo: files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        sys.stdout.flush()

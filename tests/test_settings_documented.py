"""Every setting the code reads is documented in .env.example (which the README's table is built from)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READ = re.compile(r'\b[a-z_.]+\(\s*"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"')
# Read through boto3's and libpq's own conventions, documented in prose, not as backupbot settings.
EXTERNAL = {"AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SECRET_ACCESS_KEY", "PGCONNECT_TIMEOUT"}


def test_every_setting_read_by_the_code_is_in_env_example():
    used = {m for path in [*ROOT.glob("bot/**/*.py"), *ROOT.glob("commands/**/*.py")]
            for m in READ.findall(path.read_text(encoding="utf-8"))}
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert len(used) > 30  # the scan itself works
    assert sorted(used - documented - EXTERNAL) == []


def test_readme_configuration_table_is_current():
    import subprocess
    import sys

    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_table.py")], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert table in (ROOT / "README.md").read_text(), "run: python scripts/config_table.py and paste into README"

"""Print the README's configuration table from .env.example (the one place settings are described).

    python scripts/config_table.py > /tmp/table.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

VAR = re.compile(r"^#?([A-Z][A-Z0-9_]+)=(.*)$")
DEFAULT_MARK = "# default"


def table(text: str) -> str:
    out: list[str] = []
    comment: list[str] = []
    pending: list[tuple[str, str]] = []  # variables sharing one comment block

    def flush() -> None:
        nonlocal pending, comment
        if pending:
            names = "<br>".join(f"`{n}`" for n, _ in pending)
            defaults = "<br>".join(d if d.startswith("(") else (f"`{d}`" if d else "—") for _, d in pending)
            out.append(f"| {names} | {defaults} | {' '.join(comment).replace('|', '/')} |")
        pending, comment = [], []

    for line in text.splitlines():
        if line.startswith("# ---"):
            flush()
            title = line.strip("# -").split("(")[0].strip()
            out.append(f"| **{title}** | | |")
        elif m := VAR.match(line):
            # A commented-out line is an example, not a default, unless it says "# default": a
            # default that must stay commented out (it would override a file, or is rarely set).
            value = m.group(2)
            default = (value if not line.startswith("#")
                       else value.removesuffix(DEFAULT_MARK).strip() if value.endswith(DEFAULT_MARK) else "")
            if m.group(1) == "DATABASE_URL":
                default = "(required)"
            pending.append((m.group(1), default))
        elif line.startswith("#"):
            if pending:
                flush()
            comment.append(line.lstrip("#").strip())
        else:
            flush()
    flush()
    head = "| Variable | Default | What it does |\n|---|---|---|"
    return head + "\n" + "\n".join(r for r in out if not r.startswith("| backupbot settings"))


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.stdout.write(table((root / ".env.example").read_text()) + "\n")

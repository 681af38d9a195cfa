"""Helpers shared by the Slack tests: polling with a deadline, a pg_dump held at a gate, and
looking up what the app showed in the fake Slack."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.slack_api import FakeSlackAPI
from tests.fixtures.pg import fake_bindir

T = TypeVar("T")

# pg_dump that waits until the gate file exists: a backup that runs exactly as long as the test
# needs, without sleeping in the test. `--version` answers at once (the version check runs first).
GATED_PG_DUMP = """#!/bin/sh
if [ "$1" = "--version" ]; then exec "@REAL@/pg_dump" --version; fi
while [ ! -e "@GATE@" ]; do sleep 0.02; done
exec "@REAL@/pg_dump" "$@"
"""


def until(probe: Callable[[], T], timeout: float = 30, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def gated_bindir(tmp_path: Path) -> tuple[Path, Path]:
    """(PG_BINDIR whose pg_dump waits for the gate, the gate file to create to let it go)."""
    gate = tmp_path / "gate-open"
    return fake_bindir(tmp_path, {"pg_dump": GATED_PG_DUMP.replace("@GATE@", str(gate))}), gate


def channel_texts(fake: FakeSlackAPI, channel: str) -> list[str]:
    return [m.get("text", "") for m in fake.messages(channel)]


def find_message(fake: FakeSlackAPI, channel: str, needle: str) -> dict[str, Any] | None:
    """The newest top-level message whose current text contains ``needle``."""
    found = [m for m in fake.messages(channel) if needle in m.get("text", "")]
    return found[-1] if found else None


def wait_for_message(fake: FakeSlackAPI, channel: str, needle: str, timeout: float = 30) -> dict[str, Any]:
    return until(lambda: find_message(fake, channel, needle), timeout, f"a message with {needle!r} in {channel}")


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message.get("blocks", []) if b["type"] == "actions" for e in b["elements"]]


def everything_sent(fake: FakeSlackAPI) -> str:
    """Every Web API call body and response_url message the app sent, as one string to scan."""
    calls = [json.dumps(c.params, default=str) for c in fake.calls()]
    responses = [json.dumps(r.body, default=str) for r in fake.responses()]
    return "\n".join(calls + responses)

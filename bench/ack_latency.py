"""Measure how fast the Slack app acknowledges `/backup now` while another backup is running.

    python bench/ack_latency.py [--acks 20]

Starts a throwaway PostgreSQL cluster with the demo CRM database, the fake Slack Web API from the
test suite, and the app in HTTP mode on a local port (the same server `backupbot run --http`
uses). It then

* idle:  sends N signed `/backup list` requests with nothing running, as a baseline;
* busy:  holds one backup at a pg_dump gate (a wrapper that waits for a file) and sends N signed
  `/backup now` requests for the same target, each answered "already running".

Latency is the wall time from sending the signed POST to receiving the HTTP response: what Slack's
3-second limit applies to. Reports the median, p95 and max of each and writes
bench/out/ack_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(REPO)]  # run as a script: make `bot`, `commands` and `tests` importable

from bot.app import create_app  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.core.cluster import Cluster  # noqa: E402
from bot.demo import crm_sql  # noqa: E402
from bot.runner import health  # noqa: E402
from bot.server import make_server  # noqa: E402
from bot.services import Services  # noqa: E402
from tests.fakes.slack_api import FakeSlackAPI  # noqa: E402
from tests.fakes.slack_requests import post, slash_command_body  # noqa: E402
from tests.fixtures.pg import fake_bindir  # noqa: E402
from tests.slack.support import GATED_PG_DUMP  # noqa: E402

SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench-token"
CHANNEL = "C0BENCH"


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "median_ms": round(1000 * statistics.median(ordered), 2),
            "p95_ms": round(1000 * p95, 2), "max_ms": round(1000 * ordered[-1], 2)}


def timed_command(url: str, fake: FakeSlackAPI, text: str, i: int) -> float:
    body = slash_command_body(text=text, user_id="U0BENCH", channel_id=CHANNEL,
                              response_url=fake.response_url(f"bench-{text}-{i}"))
    t0 = time.perf_counter()
    status, _, _ = post(url, body, SECRET)
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise SystemExit(f"/backup {text} answered HTTP {status}")
    return elapsed


def wait_until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def run(acks: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="backupbot-ackbench-"))
    with Cluster(password="bench-pw-1") as pg, FakeSlackAPI(token=TOKEN) as fake:
        url = pg.create_database("crm")
        pg.execute(crm_sql(), "crm")
        gate = work / "gate"
        bindir = fake_bindir(work, {"pg_dump": GATED_PG_DUMP.replace("@GATE@", str(gate))})
        settings = load_settings({
            "DATABASE_URL": url, "BACKUP_TARGET": "prod", "BACKUP_DIR": str(work / "backups"),
            "BACKUPBOT_DB": str(work / "catalog.db"), "PG_BINDIR": str(bindir), "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET, "SLACK_CHANNEL": CHANNEL, "SLACK_API_URL": fake.url,
        }, env_file=None)
        app, ctx = create_app(settings, Services(settings))
        server = make_server(app, lambda: health(ctx), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        events = f"http://127.0.0.1:{server.server_address[1]}/slack/events"
        try:
            timed_command(events, fake, "help", -1)  # warm-up: imports, first connections
            idle = [timed_command(events, fake, "list", i) for i in range(acks)]
            timed_command(events, fake, "now", -1)  # the backup that stays running
            wait_until(lambda: ctx.core.running("prod"), 30, "the backup to start")
            busy = [timed_command(events, fake, "now", i) for i in range(acks)]
            still_one = len(ctx.core.catalog.runs(kind="backup")) == 1
        finally:
            gate.touch()
            wait_until(lambda: not ctx.core.running("prod"), 60, "the backup to finish")
            server.shutdown()
            ctx.jobs.shutdown(wait=True)
    return {"idle_list": summarize(idle), "busy_now": summarize(busy), "one_backup_ran": still_one}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--acks", type=int, default=20, help="requests per measurement (default 20)")
    args = parser.parse_args()
    results = run(args.acks)
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    (out / "ack_latency.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, label in (("idle_list", "/backup list, nothing running"),
                        ("busy_now", "/backup now while a backup runs")):
        r = results[name]
        print(f"{label:<36} median {r['median_ms']:>7.1f} ms   p95 {r['p95_ms']:>7.1f} ms   "
              f"max {r['max_ms']:>7.1f} ms   (n={r['n']})")
    print(f"backups started while busy: {'1 (correct)' if results['one_backup_ran'] else 'MORE THAN ONE'}")
    return 0 if results["one_backup_ran"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

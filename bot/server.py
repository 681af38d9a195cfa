"""HTTP mode: Slack's requests at POST /slack/events and a health check at GET /healthz,
served by a small threaded HTTP server that hands each request to Bolt."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slack_bolt import App
from slack_bolt.request import BoltRequest

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # Slack's payloads are far smaller; refuse anything absurd


def make_server(app: App, health: Callable[[], dict[str, Any]], host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "backupbot"

        def log_message(self, fmt: str, *args: Any) -> None:  # route access logs through logging
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, headers: dict[str, Any] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            sent_type = False
            for k, v in (headers or {}).items():
                for item in v if isinstance(v, list) else [v]:
                    if k.lower() == "content-type":
                        sent_type = True
                    self.send_header(k, str(item))
            if not sent_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] == "/healthz":
                report = health()
                self._send(200 if report.get("ok") else 503, json.dumps(report).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/slack/events":
                self._send(404, b'{"error": "not found"}')
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, b'{"error": "too large"}')
                return
            body = self.rfile.read(length).decode("utf-8")
            headers: dict[str, str | Sequence[str]] = {k.lower(): [v] for k, v in self.headers.items()}
            resp = app.dispatch(BoltRequest(body=body, headers=headers))
            self._send(resp.status, (resp.body or "").encode("utf-8"), resp.headers)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server

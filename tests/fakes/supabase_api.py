"""A local stand-in for the Supabase Management API's backups endpoint, over real HTTP.

``GET /v1/projects/{ref}/database/backups`` answers what the test arranged with
``set_backups``; a wrong or missing bearer token gets 401 like the real API; ``fail_with(503)``
makes it answer an error, and ``stop()`` makes it unreachable. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/v1/projects/([a-z0-9]+)/database/backups$")


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class _State:
    token: str
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: int | None = None
    requests: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(Seen(self.path, dict(self.headers.items())))
        if state.failure is not None:
            return self._send(state.failure, {"message": "Service Unavailable"})
        if self.headers.get("Authorization") != f"Bearer {state.token}":
            return self._send(401, {"message": "Unauthorized"})
        m = _PATH.match(self.path)
        if not m or m[1] not in state.projects:
            return self._send(404, {"message": "Project not found"})
        self._send(200, state.projects[m[1]])

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _Server(ThreadingHTTPServer):
    state: _State
    daemon_threads = True


class FakeSupabaseAPI:
    def __init__(self, token: str = "sbp_fake0token0for0tests") -> None:
        self.state = _State(token)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def __enter__(self) -> FakeSupabaseAPI:
        server = _Server(("127.0.0.1", self.port), _Handler)  # port 0: a free one; keep it for restarts
        server.state = self.state
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def requests(self) -> list[Seen]:
        return list(self.state.requests)

    def set_backups(self, ref: str, backups: list[dict[str, Any]], *, pitr_enabled: bool = False) -> None:
        self.state.projects[ref] = {"region": "eu-central-1", "walg_enabled": True, "pitr_enabled": pitr_enabled,
                                    "backups": backups, "physical_backup_data": {}}

    def fail_with(self, status: int | None) -> None:
        self.state.failure = status


def backup(status: str, inserted_at: str) -> dict[str, Any]:
    """One entry of the API's ``backups`` list."""
    return {"is_physical_backup": True, "status": status, "inserted_at": inserted_at}

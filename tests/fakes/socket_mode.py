"""A fake Slack Socket Mode endpoint: a real WebSocket server (RFC 6455, standard library only) on a
local port that says hello like Slack, pushes envelopes, and records what the app sends back."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

JsonDict = dict[str, Any]
T = TypeVar("T")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE_BYTES = 16_384

_trigger_ids = itertools.count(1)


def slash_command_envelope(
    text: str,
    *,
    channel_id: str,
    response_url: str,
    command: str = "/backup",
    user_id: str = "U0ALICE",
    envelope_id: str | None = None,
) -> JsonDict:
    """A slash_commands envelope shaped like the ones Slack sends over Socket Mode."""
    return {
        "envelope_id": envelope_id or str(uuid.uuid4()),
        "payload": {
            "token": "verification-token",
            "team_id": "T111",
            "team_domain": "xxx",
            "channel_id": channel_id,
            "channel_name": "backups",
            "user_id": user_id,
            "user_name": "alice",
            "command": command,
            "text": text,
            "api_app_id": "A111",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": f"{next(_trigger_ids)}.222.fakefakefake",
        },
        "type": "slash_commands",
        "accepts_response_payload": True,
    }


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A single unmasked (server-to-client) frame with FIN set."""
    length = len(payload)
    if length <= 125:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


class _ConnectionClosed(Exception):
    pass


class _Connection:
    """One accepted client: the handshake, then a reader loop in its own thread."""

    def __init__(self, server: FakeSocketMode, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.path = ""
        self.headers: dict[str, str] = {}
        self.open = False
        self._buffer = b""
        self._send_lock = threading.Lock()

    # -- low-level I/O ----------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65_536)
            if not chunk:
                raise _ConnectionClosed
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def send_frame(self, opcode: int, payload: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(encode_frame(opcode, payload))

    # -- protocol -----------------------------------------------------------------------

    def handshake(self) -> bool:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk or len(self._buffer) > MAX_HANDSHAKE_BYTES:
                return False
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        request_line, *lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        key = self.headers.get("sec-websocket-key", "")
        if (
            len(parts) != 3
            or parts[0] != "GET"
            or self.headers.get("upgrade", "").lower() != "websocket"
            or self.headers.get("sec-websocket-version") != "13"
            or not key
        ):
            self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return False
        self.path = parts[1]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        return True

    def read_message(self) -> tuple[int, bytes]:
        """The next complete message (fragments joined); control frames come back on their own."""
        message_opcode, parts = None, []
        while True:
            b1, b2 = self._read_exact(2)
            fin, opcode, masked, length = b1 & 0x80, b1 & 0x0F, b2 & 0x80, b2 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read_exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read_exact(8))
            if not masked:
                # RFC 6455 5.1: a server must close the connection on an unmasked client frame.
                self.close(1002, "client frames must be masked")
                raise _ConnectionClosed
            mask = self._read_exact(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read_exact(length)))
            if opcode >= OP_CLOSE:
                return opcode, data
            if opcode != OP_CONTINUATION:
                message_opcode = opcode
            parts.append(data)
            if fin:
                return message_opcode or OP_TEXT, b"".join(parts)

    def run(self) -> None:
        try:
            if not self.handshake():
                return
            self.open = True
            self.server._on_open(self)
            while True:
                opcode, data = self.read_message()
                if opcode == OP_PING:
                    self.send_frame(OP_PONG, data)
                elif opcode == OP_CLOSE:
                    self.close(struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1000)
                    return
                elif opcode == OP_TEXT:
                    self.server._on_text(data.decode("utf-8"))
                # pongs and binary frames need no answer
        except (_ConnectionClosed, OSError):
            pass
        finally:
            self.open = False
            self.sock.close()
            self.server._on_closed()

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())
        except OSError:
            pass
        self.open = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FakeSocketMode:
    """Slack's Socket Mode side. Use as a context manager, or call start() and stop().

    Point FakeSlackAPI's apps.connections.open at ``url``; every client that connects gets a hello,
    then whatever ``send_envelope`` pushes; every text message it sends back is recorded.
    """

    def __init__(self, *, app_id: str = "A111") -> None:
        self.app_id = app_id
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: list[_Connection] = []
        self._received: list[JsonDict] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeSocketMode:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)  # lets the accept loop notice stop() quickly
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="fake-socket-mode")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close(1001, "server stopping")
        self._listener = self._thread = None

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The ws:// URL apps.connections.open should hand out."""
        if self._listener is None:
            raise RuntimeError("FakeSocketMode is not started")
        return f"ws://127.0.0.1:{self._listener.getsockname()[1]}/link/?ticket=fake-ticket"

    # -- inspection ---------------------------------------------------------------------------

    def connections(self) -> list[_Connection]:
        """Every client that completed the handshake, first first."""
        with self._lock:
            return list(self._connections)

    def received(self) -> list[JsonDict]:
        """Every text message clients sent, JSON-decoded, oldest first."""
        with self._lock:
            return list(self._received)

    def wait_for_connection(self, timeout: float = 10.0) -> _Connection:
        """The newest open connection, once one has completed the handshake and got its hello."""
        return self._wait(
            lambda: next((c for c in reversed(self._connections) if c.open), None),
            timeout,
            "a Socket Mode connection",
        )

    def wait_for_ack(self, envelope_id: str, timeout: float = 10.0) -> JsonDict:
        """The client's acknowledgement of an envelope: {"envelope_id": ..., "payload"?: ...}."""
        return self._wait(
            lambda: next((m for m in self._received if m.get("envelope_id") == envelope_id), None),
            timeout,
            f"the ack of envelope {envelope_id}",
        )

    # -- pushing ---------------------------------------------------------------------------

    def send_envelope(self, envelope: JsonDict) -> str:
        """Push an envelope to the newest open connection; returns its envelope_id."""
        conn = self.wait_for_connection(timeout=0)
        conn.send_frame(OP_TEXT, json.dumps(envelope).encode())
        return str(envelope.get("envelope_id", ""))

    # -- internals ---------------------------------------------------------------------------

    def _wait(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = probe()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; "
                        f"connections: {len(self._connections)}, received: {self._received}"
                    )
                self._changed.wait(remaining)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = _Connection(self, sock)
            threading.Thread(target=conn.run, daemon=True, name="fake-socket-mode-conn").start()

    def _on_open(self, conn: _Connection) -> None:
        with self._changed:
            count = sum(1 for c in self._connections if c.open) + 1
            hello = {
                "type": "hello",
                "num_connections": count,
                "debug_info": {"host": "applink-fake", "build_number": 1,
                               "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }
            # Sent before the connection is visible, so a test never pushes ahead of the hello.
            conn.send_frame(OP_TEXT, json.dumps(hello).encode())
            self._connections.append(conn)
            self._changed.notify_all()

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = {"_raw": text}
        with self._changed:
            self._received.append(message if isinstance(message, dict) else {"_raw": message})
            self._changed.notify_all()

    def _on_closed(self) -> None:
        with self._changed:
            self._changed.notify_all()

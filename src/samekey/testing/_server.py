"""A loopback payment server that implements the server side of Idempotency-Key.

It behaves as Stripe and draft-ietf-httpapi-idempotency-key-header describe: the
first request with a key executes the side effect (a charge row in a real SQLite
file) and stores its response; a repeat with the same key replays it; a repeat
while the first is still executing gets 409; the same key with another payload
gets 422; a POST without a key gets 400. Every request that arrives is recorded
(key, time, outcome), so tests assert on what crossed the wire.

Faults are injected *inside* the server, around the side effect, by a `FaultPlan`
(for network faults between client and server, see `FaultProxy`).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["Fault", "FaultPlan", "PaymentServer"]


@dataclass(frozen=True)
class Fault:
    """One injected server fault.

    kind: ``"drop_after"`` (charge, then close the connection without answering),
    ``"reset_before"`` (reset the connection before charging), ``"status"`` (answer
    ``status`` without charging, with ``retry_after`` if given), ``"slow"`` (charge,
    then wait ``delay`` seconds before answering).
    """

    kind: str
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0


class FaultPlan:
    """Which fault (if any) hits the n-th request: by schedule, then by seeded chance."""

    def __init__(
        self,
        schedule: Sequence[Fault | None] = (),
        *,
        rate: float = 0.0,
        kinds: Sequence[Fault] = (Fault("drop_after"), Fault("reset_before"), Fault("status", 503)),
        seed: int = 0,
    ) -> None:
        self._schedule = list(schedule)
        self._rate = rate
        self._kinds = list(kinds)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def next(self) -> Fault | None:
        with self._lock:
            if self._schedule:
                return self._schedule.pop(0)
            if self._rate and self._random.random() < self._rate:
                return self._random.choice(self._kinds)
            return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, key TEXT NOT NULL, body TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL, status INTEGER, body BLOB
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, key TEXT, method TEXT, path TEXT, at REAL, outcome TEXT
);
"""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # clients killed mid-request (the point of many tests) are not server errors
        pass


class PaymentServer:
    """``with PaymentServer() as server: server.url`` -> ``http://127.0.0.1:<port>``.

    POST /charges (JSON body) charges once per Idempotency-Key and answers 201 with
    ``{"id": ..., "amount": ...}``. GET /charges lists the charges. ``db_path`` is the
    SQLite file holding charges, stored responses and the request log; it can be
    opened by tests and by other processes.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        faults: FaultPlan | None = None,
        work_seconds: float = 0.0,
        decline: Callable[[dict[str, Any]], int | None] | None = None,
        port: int = 0,
    ) -> None:
        self.db_path = str(db_path) if db_path is not None else ":memory:"
        self.faults = faults or FaultPlan()
        self.work_seconds = work_seconds
        self.decline = decline
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        if self.db_path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._httpd = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PaymentServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._db.close()

    def __enter__(self) -> PaymentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read ----------------------------------------------------------------

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            return self._db.execute(sql, params).fetchall()

    def charge_count(self) -> int:
        return int(self._query("SELECT count(*) FROM charges")[0][0])

    def charges(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, key, body FROM charges ORDER BY id")
        return [{"id": r[0], "key": r[1], **json.loads(r[2])} for r in rows]

    def keys_seen(self) -> list[str]:
        """The Idempotency-Key of every request that arrived, in order (None-less)."""
        return [r[0] for r in self._query("SELECT key FROM requests WHERE key IS NOT NULL ORDER BY id")]

    def requests(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT key, method, path, at, outcome FROM requests ORDER BY id")
        return [dict(zip(("key", "method", "path", "at", "outcome"), r, strict=True)) for r in rows]

    # -- the server side of the protocol --------------------------------------------------

    def _log(self, key: str | None, method: str, path: str, outcome: str) -> None:
        with self._db_lock:
            self._db.execute(
                "INSERT INTO requests (key, method, path, at, outcome) VALUES (?, ?, ?, ?, ?)",
                (key, method, path, time.time(), outcome),
            )

    def _begin(self, key: str, fingerprint: str) -> tuple[str, int | None, bytes | None]:
        """('new'|'replay'|'in_flight'|'mismatch', status, body) for a key, atomically."""
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT fingerprint, state, status, body FROM idempotency WHERE key = ?", (key,)
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO idempotency (key, fingerprint, state) VALUES (?, ?, 'running')", (key, fingerprint)
                    )
                    return "new", None, None
                if row[0] != fingerprint:
                    return "mismatch", None, None
                if row[1] == "running":
                    return "in_flight", None, None
                return "replay", row[2], row[3]
            finally:
                self._db.execute("COMMIT")

    def _charge(self, key: str, payload: dict[str, Any], status: int) -> bytes:
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                body_text = json.dumps(payload, sort_keys=True)
                if status == 201:
                    cur = self._db.execute(
                        "INSERT INTO charges (key, body, at) VALUES (?, ?, ?)", (key, body_text, time.time())
                    )
                    answer = json.dumps({"id": f"ch_{cur.lastrowid}", **payload}).encode()
                else:
                    answer = json.dumps({"error": "card_declined"}).encode()
                self._db.execute(
                    "UPDATE idempotency SET state = 'done', status = ?, body = ? WHERE key = ?", (status, answer, key)
                )
                return answer
            finally:
                self._db.execute("COMMIT")

    def _forget_running(self, key: str) -> None:
        with self._db_lock:
            self._db.execute("DELETE FROM idempotency WHERE key = ? AND state = 'running'", (key,))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _reset(self) -> None:
                # RST instead of FIN: the client sees a connection reset
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def do_GET(self) -> None:
                body = json.dumps(server.charges()).encode()
                self._reply(200, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                key = self.headers.get("Idempotency-Key")
                path = self.path
                if not key:
                    server._log(None, "POST", path, "400")
                    self._reply(400, b'{"error":"missing Idempotency-Key"}')
                    return
                fault = server.faults.next()
                if fault is not None and fault.kind == "reset_before":
                    server._log(key, "POST", path, "reset_before")
                    self._reset()
                    return
                if fault is not None and fault.kind == "status":
                    server._log(key, "POST", path, str(fault.status))
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    self._reply(fault.status, b'{"error":"injected"}', headers)
                    return
                fingerprint = hashlib.sha256(path.encode() + b"\n" + raw).hexdigest()
                state, status, stored = server._begin(key, fingerprint)
                if state == "mismatch":
                    server._log(key, "POST", path, "422")
                    self._reply(422, b'{"error":"idempotency key reused with a different payload"}')
                    return
                if state == "in_flight":
                    server._log(key, "POST", path, "409")
                    self._reply(409, b'{"error":"a request with this key is still in flight"}')
                    return
                if state == "replay":
                    server._log(key, "POST", path, "replay")
                    self._reply(status or 500, stored or b"", {"Idempotent-Replayed": "true"})
                    return
                try:
                    payload = json.loads(raw or b"{}")
                except ValueError:
                    server._forget_running(key)
                    server._log(key, "POST", path, "400")
                    self._reply(400, b'{"error":"body is not JSON"}')
                    return
                if server.work_seconds:
                    time.sleep(server.work_seconds)
                declined = server.decline(payload) if server.decline else None
                answer = server._charge(key, payload, declined or 201)
                if fault is not None and fault.kind == "drop_after":
                    server._log(key, "POST", path, "charged_then_dropped")
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.kind == "slow":
                    time.sleep(fault.delay)
                server._log(key, "POST", path, "charged" if not declined else str(declined))
                self._reply(declined or 201, answer)

        return Handler

"""A loopback payment server that implements the server side of Idempotency-Key.

It behaves as Stripe and draft-ietf-httpapi-idempotency-key-header describe: the
first request with a key executes the side effect (a charge row in a real SQLite
file) and stores its response; a repeat with the same key replays it; a repeat
while the first is still executing gets 409; the same key with another payload
gets 422; a POST without a key gets 400. The charge and the stored answer commit in
one transaction, so a key whose execution died with its server process (kill -9)
left nothing charged: its next request is executed afresh, the way a Stripe-like API
frees the key of a worker that died. Every request that arrives is recorded
(key, time, outcome), so tests assert on what crossed the wire.

Faults are injected *inside* the server, around the side effect, by a `FaultPlan`
(for network faults between client and server, see `FaultProxy`).
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import hashlib
import itertools
import json
import os
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple

from .._identity import pid_is_gone
from ._apis import PLAIN, Api
from ._faults import Fault, FaultPlan

__all__ = ["Fault", "FaultPlan", "PaymentServer"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, key TEXT NOT NULL, body TEXT NOT NULL, \
at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL, status INTEGER, body \
BLOB, owner TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, key TEXT, method TEXT, path TEXT, at REAL, outcome TEXT, body TEXT
);
"""

_LIVE: set[str] = set()  # the serving PaymentServers of this process, by token


def _owner_alive(owner: str | None) -> bool:
    """Whether the execution that wrote a 'running' row may still finish: its server serves."""
    pid, _, rest = (owner or "").partition("/")
    if not pid.isdigit():  # no owner recorded: nothing can finish it
        return False
    if int(pid) == os.getpid():
        return rest.partition("/")[0] in _LIVE  # a server of this process, stopped mid-request?
    return not pid_is_gone(int(pid))  # (no safe probe on Windows: counted as alive)


class PaymentServer:
    """``with PaymentServer() as server: server.url`` -> ``http://127.0.0.1:<port>``.

    POST /charges (JSON body) charges once per Idempotency-Key and answers 201 with
    ``{"id": ..., "amount": ...}``. With ``require_auth="Bearer sk_test"`` a request without
    that Authorization is refused with a 401 before anything is charged or stored.
    GET /charges lists the charges. ``api=STRIPE`` (or ``SQUARE``, ``INCREASE``) answers that
    SDK's requests instead, each POST a charge (see `Api`). ``db_path`` is the SQLite file holding
    charges, stored responses and the request log; it can be opened by tests and by other processes.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        faults: FaultPlan | None = None,
        work_seconds: float = 0.0,
        decline: Callable[[dict[str, Any]], int | None] | None = None,
        require_auth: str | None = None,
        port: int = 0,
        api: Api = PLAIN,
    ) -> None:
        self.api = api  # how it speaks: samekey's JSON /charges, or like Stripe, Square, Increase
        self.db_path = str(db_path) if db_path is not None else ":memory:"
        self.faults = faults or FaultPlan()
        self.work_seconds = work_seconds
        self.decline = decline
        self.require_auth = (
            require_auth  # e.g. "Bearer sk_test": anything else gets a 401 and is not acted on
        )
        self._db_lock = threading.Lock()
        self._stopped = False
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        if self.db_path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            # survives a killed process (the OS keeps the writes); a test server needs no fsync
            self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        # who executes a key: pid/server/request, to
        # tell a live execution from one killed with its server
        self._token = os.urandom(6).hex()
        self._executions = itertools.count(1)
        # One asyncio loop in a background thread: at concurrency 100 a thread-per-connection
        # server spends its time fighting over the GIL, and the tests would measure that.
        self._loop = asyncio.new_event_loop()
        try:
            self._sock = socket.create_server(("127.0.0.1", port), backlog=1024)
        except BaseException:  # e.g. the port is taken: leave nothing open
            self._loop.close()
            self._db.close()
            raise
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PaymentServer:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)

            async def serve() -> None:
                self._server = await asyncio.start_server(self._connection, sock=self._sock)
                ready.set()

            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        _LIVE.add(self._token)
        self._thread = threading.Thread(target=run, name="PaymentServer", daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        return self

    def stop(self) -> None:
        _LIVE.discard(
            self._token
        )  # a request it leaves running is executed again by the next server

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._thread = None
        if (
            not self._loop.is_closed()
        ):  # also when it never started; a second stop() does nothing more
            self._loop.close()
        self._sock.close()
        with self._db_lock:
            self._db.close()
            self._stopped = True

    def __enter__(self) -> PaymentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read ----------------------------------------------------------------

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            if not self._stopped:
                return self._db.execute(sql, params).fetchall()
        # after stop(): tests naturally assert after the `with` block; read the file itself
        if self.db_path == ":memory:":
            raise RuntimeError(
                "this PaymentServer was stopped and its in-memory database is gone: "
                "read it inside the `with` block, or give it a db_path"
            )
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def charge_count(self) -> int:
        return int(self._query("SELECT count(*) FROM charges")[0][0])

    def charges(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, key, body FROM charges ORDER BY id")
        return [{"id": r[0], "key": r[1], **json.loads(r[2])} for r in rows]

    def keys_seen(self) -> list[str]:
        """The Idempotency-Key of every request that arrived, in order (None-less)."""
        return [
            r[0] for r in self._query("SELECT key FROM requests WHERE key IS NOT NULL ORDER BY id")
        ]

    def requests(self) -> list[dict[str, Any]]:
        """Every request that arrived, in order: key, method, path, at, outcome and body (text)."""
        rows = self._query("SELECT key, method, path, at, outcome, body FROM requests ORDER BY id")
        return [
            dict(zip(("key", "method", "path", "at", "outcome", "body"), r, strict=True))
            for r in rows
        ]

    # -- the server side of the protocol --------------------------------------------------

    def _log(self, key: str | None, request: _Request, outcome: str) -> None:
        body = request.body.decode("utf-8", "replace")
        with self._db_lock:
            self._db.execute(
                "INSERT INTO requests (key, method, path, at, outcome, body) VALUES (?, "
                "?, ?, ?, ?, ?)",
                (key, request.method, request.path, time.time(), outcome, body),
            )

    def _begin(
        self, key: str, fingerprint: str, owner: str
    ) -> tuple[str, int | None, bytes | None]:
        """('new'|'replay'|'in_flight'|'mismatch', status, body) for a key, atomically.

        'new': ``owner`` now executes the key, the first time or in place of an execution
        whose server process died (a charge commits with its answer: it charged nothing).
        """
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT fingerprint, state, status, body, owner FROM idempotency WHERE key = ?",
                    (key,),
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO idempotency (key, fingerprint, state, owner) "
                        "VALUES (?, ?, 'running', ?)",
                        (key, fingerprint, owner),
                    )
                    return "new", None, None
                if row[0] != fingerprint:
                    return "mismatch", None, None
                if row[1] == "running":
                    if _owner_alive(row[4]):
                        return "in_flight", None, None
                    self._db.execute("UPDATE idempotency SET owner = ? WHERE key = ?", (owner, key))
                    return "new", None, None
                return "replay", row[2], row[3]
            finally:
                self._db.execute("COMMIT")

    def _charge(
        self, key: str, payload: dict[str, Any], status: int, owner: str
    ) -> tuple[str, int, bytes]:
        """('charged'|'replay'|'in_flight', status, body): charges only while ``owner`` executes the
        key.

        Were this execution wrongly taken for dead and the key executed by another, it
        charges nothing and answers as a repeat would.
        """
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT state, status, body, owner FROM idempotency WHERE key = ?", (key,)
                )
                state, stored_status, stored, current = row.fetchone() or (None, None, None, None)
                if state == "done":
                    return "replay", stored_status or 500, stored or b""
                if state != "running" or current != owner:
                    return (
                        "in_flight",
                        409,
                        b'{"error":"a request with this key is still in flight"}',
                    )
                body_text = json.dumps(payload, sort_keys=True)
                if status == 201:
                    cur = self._db.execute(
                        "INSERT INTO charges (key, body, at) VALUES (?, ?, ?)",
                        (key, body_text, time.time()),
                    )
                    answer = json.dumps(self.api.answer(cur.lastrowid or 0, payload)).encode()
                else:
                    answer = json.dumps(self.api.error("card_declined")).encode()
                self._db.execute(
                    "UPDATE idempotency SET state = 'done', status = ?, body = ? WHERE key = ?",
                    (status, answer, key),
                )
                return "charged", status, answer
            finally:
                self._db.execute("COMMIT")

    def _forget_running(self, key: str, owner: str) -> None:
        with self._db_lock:
            self._db.execute(
                "DELETE FROM idempotency WHERE key = ? AND state = 'running' AND owner = ?",
                (key, owner),
            )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while (request := await _read_request(reader)) is not None:
                try:
                    status, payload, extra = await self._handle(request)
                except _Abort as abort:
                    _hang_up(writer, sock, reset=abort.reset)
                    return
                writer.write(self._render(status, payload, extra))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    def _render(self, status: int, payload: bytes, extra: dict[str, str]) -> bytes:
        """The response on the wire; an error body is shaped as the API's errors are."""
        if status >= 400:
            payload = self.api.error_body(payload)
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        head = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        head += [f"{k}: {v}" for k, v in extra.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload

    async def _handle(self, request: _Request) -> _Answer:
        """Answer one request as an idempotent API does; raises `_Abort` to answer nothing."""
        if request.method == "GET":
            return 200, json.dumps(self.charges()).encode(), {}
        key = self.api.key(request.headers, request.body)
        authorization = request.headers.get("authorization")
        if self.require_auth is not None and authorization != self.require_auth:
            self._log(key, request, "401")  # refused before the key is even looked at, as Stripe
            return (
                401,
                b'{"error":"invalid API key"}',
                {"WWW-Authenticate": 'Bearer realm="payments"'},
            )
        if not key:
            self._log(None, request, "400")
            return 400, b'{"error":"missing Idempotency-Key"}', {}
        fault = self.faults.next()
        if fault is not None and fault.kind == "reset_before":
            self._log(key, request, "reset_before")
            raise _Abort(reset=True)
        if fault is not None and fault.kind == "status":
            self._log(key, request, str(fault.status))
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return fault.status, b'{"error":"injected"}', extra
        return await self._execute(key, request, fault)

    async def _execute(self, key: str, request: _Request, fault: Fault | None) -> _Answer:
        """Execute ``key`` once, or answer as its repeat; then a fault that strikes after it."""
        fingerprint = hashlib.sha256(request.path.encode() + b"\n" + request.body).hexdigest()
        owner = f"{os.getpid()}/{self._token}/{next(self._executions)}"
        state, status, stored = self._begin(key, fingerprint, owner)
        if state != "new":
            return self._repeat(key, request, state, status, stored)
        try:
            payload = self.api.payload(request.body)
        except ValueError:
            self._forget_running(key, owner)
            self._log(key, request, "400")
            return 400, b'{"error":"body is not JSON"}', {}
        if self.work_seconds:
            await asyncio.sleep(self.work_seconds)
        declined = self.decline(payload) if self.decline else None
        outcome, status, answer = self._charge(key, payload, declined or 201, owner)
        if outcome != "charged":
            self._log(key, request, "replay" if outcome == "replay" else "409")
            return status, answer, {"Idempotent-Replayed": "true"} if outcome == "replay" else {}
        if fault is not None and fault.kind == "drop_after":
            self._log(key, request, "charged_then_dropped")
            raise _Abort(reset=False)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        self._log(key, request, "charged" if not declined else str(declined))
        return declined or 201, answer, {}

    def _repeat(
        self,
        key: str,
        request: _Request,
        state: str,
        status: int | None,
        stored: bytes | None,
    ) -> _Answer:
        """The answer when `_begin` did not hand the key to this request: 422, 409 or the replay."""
        if state == "mismatch":
            self._log(key, request, "422")
            return 422, b'{"error":"idempotency key reused with a different payload"}', {}
        if state == "in_flight":
            self._log(key, request, "409")
            return 409, b'{"error":"a request with this key is still in flight"}', {}
        self._log(key, request, "replay")
        return status or 500, stored or b"", {"Idempotent-Replayed": "true"}


class _Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


_Answer = tuple[int, bytes, dict[str, str]]  # status, body, extra headers


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on the connection, or None when it ends or cannot be framed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path = [*lines[0].split(" ", 2), "", ""][:2]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)  # a body of unknown length: a stream, a generator
        else:
            body = await reader.readexactly(int(headers.get("content-length") or 0))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return None
    return _Request(method, path, headers, body)


def _hang_up(writer: asyncio.StreamWriter, sock: socket.socket | None, *, reset: bool) -> None:
    """Close the connection unanswered: with a RST when ``reset`` (the client sees a reset)."""
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if reset:
        writer.transport.abort()
    else:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked request body (RFC 9112 7.1), decoded; trailers are read and dropped."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class _Abort(Exception):
    """Close the client's connection without answering."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset

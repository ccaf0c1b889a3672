"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for network faults between client and server.

It reads each request off the client's connection, asks its `FaultPlan` what to
do, and then forwards it, answers it itself, or breaks the connection at the
chosen moment: before the server saw the request (reset, 503, 429) or after the
server acted (response lost, response held past the client's timeout). Plain
threads and blocking sockets with timeouts, so nothing outlives `stop()`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from ._faults import Fault, FaultPlan

__all__ = ["FaultProxy"]

_MAX_LINE = 65536
_MAX_HEADERS = 200
_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _Broken(Exception):
    """The peer sent something that is not HTTP/1.1 we can frame, or stopped mid-message."""


@dataclass(frozen=True)
class _Message:
    raw: bytes
    keep_alive: bool


@dataclass
class _Link:
    """One client's connection and, from its first forwarded request on, its own upstream one."""

    client: socket.socket
    from_client: BinaryIO
    upstream: socket.socket | None = None
    from_upstream: BinaryIO | None = None
    abort: bool = False  # end the client's connection with a RST instead of a FIN


def _read_message(stream: BinaryIO, *, is_request: bool, method: str = "") -> _Message | None:
    """One whole HTTP/1.1 message as raw bytes, or None on a clean end of stream."""
    start = stream.readline(_MAX_LINE)
    if not start:
        return None
    parts = [start]
    headers: dict[str, str] = {}
    for line in _read_field_lines(stream, parts, "headers"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    version = start.split(b" ", 1)[0] if not is_request else start.rsplit(b" ", 1)[-1].strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (
        version != b"HTTP/1.0" or "keep-alive" in connection
    )
    status = 0 if is_request else int(start.split(b" ")[1])
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = stream.readline(_MAX_LINE)
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                _read_field_lines(stream, parts, "trailers")
                break
            parts.append(_read_exactly(stream, size + 2))
    elif "content-length" in headers:
        parts.append(_read_exactly(stream, int(headers["content-length"])))
    elif not is_request and method != "HEAD" and status not in (204, 304) and status >= 200:
        parts.append(stream.read())  # delimited by the end of the connection
        keep_alive = False
    return _Message(b"".join(parts), keep_alive)


def _read_field_lines(stream: BinaryIO, parts: list[bytes], section: str) -> list[bytes]:
    """Header (or trailer) lines up to the empty line, appended raw to ``parts``; returns them."""
    lines: list[bytes] = []
    for _ in range(_MAX_HEADERS):
        line = stream.readline(_MAX_LINE)
        if not line:
            raise _Broken(f"connection closed inside the {section}")
        parts.append(line)
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line)
    raise _Broken(f"too many {section} lines")


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise _Broken("connection closed inside the body")
    return data


def _abort(sock: socket.socket) -> None:
    """Close with a TCP RST (zero linger) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """``with FaultProxy(server.url, FaultPlan(rate=0.3, seed=1)) as proxy:`` -> send to
    ``proxy.url``.

    Faults (see `Fault`): ``drop_after`` forwards, lets the server answer, then
    closes the client's connection without the answer; ``reset_before`` resets the
    client's connection (TCP RST) before forwarding; ``status`` answers itself
    (503, or 429 with ``Retry-After``); ``slow`` forwards, then holds the answer
    ``delay`` seconds before passing it on (past the client's read timeout, the
    client has given up by then). ``faults`` is a `FaultPlan` or a schedule list.

    ``counts`` says what the proxy did: ``connections``, ``requests``,
    ``forwarded`` (reached the server) and one entry per fault label. Every
    socket has ``io_timeout``; `stop` closes everything and joins the threads.
    """

    def __init__(
        self,
        target: str,
        faults: FaultPlan | Sequence[Fault | None] | None = None,
        *,
        port: int = 0,
        io_timeout: float = 30.0,
    ) -> None:
        url = httpx.URL(target if "://" in target else f"http://{target}")
        if url.scheme != "http" or not url.host:
            raise ValueError(
                "target must be an http:// address (the proxy speaks plain HTTP/1.1), "
                f"got {target!r}"
            )
        self.target = (url.host, url.port or 80)
        self.faults = faults if isinstance(faults, FaultPlan) else FaultPlan(faults or ())
        self.io_timeout = io_timeout
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.05)  # the accept loop polls the stop flag

    # -- lifecycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
            threads = list(self._threads)
        for sock in sockets:
            _close(sock)
        for thread in threads:
            thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def faults_injected(self) -> int:
        """How many requests a fault hit (all kinds)."""
        with self._lock:
            return sum(
                v
                for k, v in self.counts.items()
                if k not in ("connections", "requests", "forwarded")
            )

    # -- plumbing ---------------------------------------------------------------------

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._track(client):
                _close(client)
                return
            self._count("connections")
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.io_timeout)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, client.makefile("rb"))
        try:
            while not self._stopping.is_set() and self._relay(link):
                pass
        except (OSError, _Broken, ValueError):
            pass  # a peer went away or timed out; the client sees a broken connection
        finally:
            self._close_link(link)

    def _relay(self, link: _Link) -> bool:
        """Take one request through its fault; True to read the next one on this connection."""
        request = _read_message(link.from_client, is_request=True)
        if request is None:
            return False
        self._count("requests")
        fault = self.faults.next()
        if fault is not None:
            self._count(fault.label)
        if fault is not None and fault.kind == "reset_before":
            link.abort = True
            return False
        if fault is not None and fault.kind == "status":
            link.client.sendall(_status_response(fault))
            return True
        response = self._forward(link, request)
        if response is None:
            return False
        if fault is not None and fault.kind == "drop_after":
            return False  # the server acted; the client gets a closed connection, no answer
        if fault is not None and fault.kind == "slow" and self._stopping.wait(fault.delay):
            return False
        link.client.sendall(response.raw)
        return response.keep_alive and request.keep_alive

    def _forward(self, link: _Link, request: _Message) -> _Message | None:
        """The server's answer to ``request``, or None when the connection is to end unanswered."""
        if link.upstream is None and not self._connect_upstream(link):
            return None
        assert link.upstream is not None and link.from_upstream is not None
        link.upstream.sendall(request.raw)
        self._count("forwarded")
        method = request.raw.split(b" ", 1)[0].decode("latin-1")
        try:
            # None: the server closed without answering, and so does the proxy
            return _read_message(link.from_upstream, is_request=False, method=method)
        except ConnectionResetError:
            link.abort = True  # pass the server's reset on
            return None

    def _connect_upstream(self, link: _Link) -> bool:
        """Open the client's own connection to the target; False if it cannot (502) or stopping."""
        try:
            link.upstream = socket.create_connection(self.target, timeout=self.io_timeout)
        except OSError:
            link.client.sendall(_status_response(Fault("status", 502)))
            return False
        if not self._track(link.upstream):
            return False
        link.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.from_upstream = link.upstream.makefile("rb")
        return True

    def _close_link(self, link: _Link) -> None:
        """Close both connections; the client's with a RST when ``link.abort`` says so."""
        for stream in (link.from_client, link.from_upstream):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        for sock in (link.client, link.upstream):
            if sock is not None:
                self._untrack(sock)
                if link.abort and sock is link.client:
                    _abort(sock)
                else:
                    _close(sock)


def _status_response(fault: Fault) -> bytes:
    body = b'{"error":"injected by samekey.testing.FaultProxy"}'
    lines = [
        f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if fault.retry_after is not None:
        lines.append(f"Retry-After: {fault.retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

"""A minimal loopback HTTP/1.1 server for overhead measurements, run in its own process.

Why not PaymentServer: it writes every charge to SQLite and parses requests with
more care than needed; its own cost (and its disk writes competing with the
journal's fsync) would hide the client-side overhead we measure. This server answers
``201`` with a tiny JSON body to any request, keeps connections alive, and honours
Idempotency-Key the way a payment API does (the first answer for a key is replayed,
from memory), so retries and replays behave as against a real server.

``python -m benchmarks._server [--think-ms MS]`` prints ``http://127.0.0.1:PORT`` and
serves until stdin is closed. ``--think-ms`` answers each request that many milliseconds
late, as a real API does while it works (Stripe's charges take hundreds): the same client
costs then weigh against a realistic round trip instead of a bare loopback one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

_replies: dict[bytes, bytes] = {}
_count = 0
_think = 0.0  # seconds before each answer


def _answer(key: bytes | None) -> bytes:
    global _count
    if key is not None:
        cached = _replies.get(key)
        if cached is not None:
            return cached
    _count += 1
    body = b'{"id":"ch_%d","status":"succeeded"}' % _count
    reply = (
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (
            len(body),
            body,
        )
    )
    if key is not None:
        _replies[key] = reply
    return reply


class _Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length, key = 0, None
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"idempotency-key":
                    key = value.strip()
            total = end + 4 + length
            if len(self.buffer) < total:
                break
            self.buffer = self.buffer[total:]
            out.append(_answer(key))
        if out and _think:
            asyncio.get_running_loop().call_later(_think, self.transport.write, b"".join(out))
        elif out:
            self.transport.write(b"".join(out))


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    # stdin closing (the parent exiting) stops the server: no orphan process
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
    ).start()
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--think-ms", type=float, default=0.0, help="answer each request this late")
    _think = parser.parse_args().think_ms / 1000
    asyncio.run(_serve())

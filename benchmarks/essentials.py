"""Targets 3b/3d: how much of samekey's async gap is its flow, how much the work it must do.

Over httpx-aiohttp at concurrency 100, against one loopback server, in interleaved rounds:

- bare httpx.AsyncClient;
- samekey.AsyncClient (durability process), as shipped;
- "straight line": samekey's own per-request work with no flow around it. The request's plan
  (operation, key, redacted headers and URL, fingerprint), its claim on samekey's journal
  thread, the key header, the buffered answer, its redacted headers queued as the completion,
  the OperationInfo. No retry, no hooks, no interruption handling, no replay: it takes the
  happy path only and raises on anything else;
- the same without the plan: each request's intent copied from the first one's (its
  operation, key and body its own), to show what deriving it costs;
- the mission floor of `async_throughput`: the claim and the answer, group-committed, with
  no samekey code at all.

    python -m benchmarks.essentials [--rounds 16] [--operations 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

import samekey
from samekey._contract import Claim, Complete, Intent, OperationRecord
from samekey._engine import Engine
from samekey._plan import uuid4
from samekey._transport import _JournalThread
from samekey._wire import INFO_EXTENSION, OPERATION_EXTENSION, OperationInfo

from ._common import report, server
from .async_throughput import BODY, ClaimFloor
from .loop_budget import CONCURRENCY, _drive

BARE, SAMEKEY = "bare httpx.AsyncClient", "samekey.AsyncClient (process)"
LINE, NO_PLAN, FLOOR = "straight line", "straight line, no plan", "mission floor"
Post = Callable[[], Awaitable[None]]


# the steps of samekey's own work, in the order a request takes them (see `StraightLine`)
CLIENT, PLAN, CLAIM, KEY_HEADER, BUFFER, ANSWER, INFO = range(7)


class StraightLine(httpx.AsyncBaseTransport):
    """samekey's per-request work for a fresh operation answered at once, and nothing else.

    ``upto``: the last step taken (`benchmarks.instructions` counts them one by one); CLIENT
    takes none, the request only passes through samekey's client to the inner transport.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, engine: Engine, *, plan: bool, upto: int = INFO
    ) -> None:
        assert engine.batching is not None
        self.inner, self.engine, self.plan, self.upto = inner, engine, plan, upto
        self.thread = _JournalThread(engine.batching)
        self.first: Intent | None = None

    def _intent(self, request: httpx.Request) -> Intent:
        first = self.first
        if self.plan or first is None:
            plan = self.engine.plan(request)
            assert plan is not None
            self.first = plan.intent
            return plan.intent
        operation = request.extensions[OPERATION_EXTENSION]
        return Intent(operation, uuid4(), first.key_header, first.method, first.url,
                      first.fingerprint, first.request_headers, request.content)  # fmt: skip

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        engine, upto = self.engine, self.upto
        intent = self._intent(request) if upto >= PLAN else None
        if intent is None or upto < CLAIM:
            return await self.inner.handle_async_request(request)
        owner = engine.owners.new()
        record = await self._claim(intent, owner, request)
        if upto >= KEY_HEADER:
            request.headers[engine.key_header] = record.key
        response = await self.inner.handle_async_request(request)
        if upto < BUFFER:
            return response
        raw = await self._buffer(response, request)
        if upto >= ANSWER:
            headers = engine.redactor.response_headers(response.headers)
            status, now = response.status_code, engine.clock()
            Complete(record.operation, owner, 1, status, headers, raw, now).run(engine.journal)
        if upto >= INFO:
            info = OperationInfo(record.operation, record.key, 1, False)
            response.extensions[INFO_EXTENSION] = info
        return response

    async def _claim(self, intent: Intent, owner: str, request: httpx.Request) -> OperationRecord:
        engine = self.engine
        claim = Claim(intent, owner, engine.lease_for(request), engine.clock())
        found = await self.thread.submit(claim, asyncio.get_running_loop())
        if found.status != "created":
            raise RuntimeError(f"straight line: the claim found {found.status!r}, no flow here")
        record: OperationRecord = found.record
        return record

    async def _buffer(self, response: httpx.Response, request: httpx.Request) -> bytes:
        stream = response.stream
        raw = b"".join([chunk async for chunk in stream])  # type: ignore[union-attr]
        await stream.aclose()  # type: ignore[union-attr]
        response.stream, response.request = httpx.ByteStream(raw), request
        if self.engine.policy.should_retry_response(response):
            raise RuntimeError(f"straight line: HTTP {response.status_code}, no retries here")
        return raw

    async def aclose(self) -> None:
        self.thread.stop()
        await self.inner.aclose()


def _journal(folder: str, name: str) -> samekey.Journal:
    return samekey.Journal(os.path.join(folder, f"{name}.sqlite3"), durability="process")


def _straight(make: Callable[[], httpx.AsyncBaseTransport], journal: samekey.Journal, plan: bool,
              upto: int = INFO) -> samekey.AsyncClient:  # fmt: skip
    client = samekey.AsyncClient(journal=journal)
    client._transport = StraightLine(make(), client.engine, plan=plan, upto=upto)
    return client


async def _run(url: str, folder: str, rounds: int, operations: int) -> dict[str, list[float]]:
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    def make() -> httpx.AsyncBaseTransport:
        return AiohttpTransport(limits=limits)

    target, sent = url + "/v1/charges", [0]
    journals = [_journal(folder, name) for name in ("samekey", "line", "copy")]
    clients: dict[str, Any] = {
        BARE: httpx.AsyncClient(transport=make()),
        SAMEKEY: samekey.AsyncClient(transport=make(), journal=journals[0]),
        LINE: _straight(make, journals[1], plan=True),
        NO_PLAN: _straight(make, journals[2], plan=False),
        FLOOR: ClaimFloor(
            httpx.AsyncClient(transport=make()), os.path.join(folder, "floor"), answers=True
        ),
    }

    def post(name: str, client: Any) -> Post:
        async def one() -> None:  # an error answer must not count as throughput
            if name == BARE:
                response = await client.post(target, json=BODY)
            else:
                sent[0] += 1
                response = await client.post(target, json=BODY, operation=f"op-{sent[0]}")
            response.raise_for_status()

        return one

    posts = {name: post(name, client) for name, client in clients.items()}
    rates: dict[str, list[float]] = {name: [] for name in posts}
    try:
        for p in posts.values():  # warm up: connections, threads
            await _drive(p, 3 * CONCURRENCY)
        names = list(posts)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                rate, _loop_cpu = await _drive(posts[name], operations)
                rates[name].append(rate)
    finally:
        for client in clients.values():
            await client.aclose()
        for journal in journals:
            journal.close()
    return rates


def run(rounds: int = 16, operations: int = 500) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="samekey-essentials-") as folder:
        with server("minimal", folder) as url:
            rates = asyncio.run(_run(url, folder, rounds, operations))
    bare = rates[BARE]
    rows = [
        [
            name,
            f"{statistics.median(found):,.0f}",
            f"{sum(found) / sum(bare):.3f}x",
            f"{statistics.median(x / y for x, y in zip(found, bare, strict=True)):.3f}x",
        ]
        for name, found in rates.items()
    ]
    title = (
        f"Where the async gap goes: httpx-aiohttp, {CONCURRENCY} at once, {rounds} interleaved "
        f"rounds of {operations}"
    )
    headers = ["variant", "ops/s, median round", "vs bare, all rounds", "vs bare, median round"]
    ratio = {name: sum(found) / sum(bare) for name, found in rates.items()}
    notes = [
        f"samekey's flow around its own work: {ratio[LINE] - ratio[SAMEKEY]:+.3f}x of bare; "
        f"deriving the plan: {ratio[NO_PLAN] - ratio[LINE]:+.3f}x; the rest of samekey's own "
        f"work, down to the mission floor: {ratio[FLOOR] - ratio[NO_PLAN]:+.3f}x",
    ]
    return report(title, headers, rows, notes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--operations", type=int, default=500)
    args = parser.parse_args()
    run(args.rounds, args.operations)


if __name__ == "__main__":
    main()

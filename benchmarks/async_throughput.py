"""Concurrent async POSTs: bare httpx.AsyncClient vs samekey.AsyncClient, per transport.

Every variant sends the same operations at the same concurrency with the same
``httpx.Limits``, to one loopback server in its own process, in rounds (each round sends a
slice of the operations through every variant, order rotated) so drift hits them alike.
Two transports under each client: httpx's own (httpcore's pool) and httpx-aiohttp's
``AiohttpTransport``; samekey wraps whichever the client is given. A transport that answers
at once (no network) gives the journal's own ceiling, per durability.

    python -m benchmarks.async_throughput [--operations 10000] [--concurrency 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

import samekey

from ._common import FloorJournal, Target, new_run, report, server

BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
HTTPX, AIOHTTP, INSTANT = "httpx", "httpx-aiohttp", "instant"
DURABILITIES = ("process", "fsync")


@dataclass
class Variant:
    name: str
    transport: str  # HTTPX, AIOHTTP or INSTANT
    durability: str | None  # None: bare httpx.AsyncClient
    client: httpx.AsyncClient
    seconds: float = 0.0
    done: int = 0
    errors: int = 0
    round_rates: list[float] = field(default_factory=list)  # ops/s in each measured round

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    def versus(self, bare: Variant) -> float:
        """This variant's throughput over all rounds / bare's: the same operations, interleaved.

        Not a median of per-round ratios: httpx's own pool at concurrency 100 swings from ~100
        to ~800 ops/s between rounds seconds apart (its connection assignment is CPU-bound), so
        a round's ratio says more about which state the pool was in than about samekey.
        """
        return self.rate / bare.rate

    @property
    def spread(self) -> str:
        """The slowest and fastest round, ops/s."""
        return f"{min(self.round_rates):,.0f}-{max(self.round_rates):,.0f}"


class InstantTransport(httpx.AsyncBaseTransport):
    """Answers 201 at once, without a network: what is left is the client and the journal.

    It passes once through the event loop first. Without that, a client that waits for nothing
    else (bare httpx) never lets another task run: its 100 tasks would go one at a time, with
    none of the cost of 100 requests in flight (the garbage collector walks them all) that a
    client waiting for its journal pays.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)
        await request.aread()
        return httpx.Response(201, json={"id": "ch_1", "status": "succeeded"}, request=request)


async def _round(
    v: Variant, target: str, start: int, count: int, concurrency: int, run: str
) -> None:
    next_index = start
    end = start + count

    async def worker() -> None:
        nonlocal next_index
        while next_index < end:
            i = next_index
            next_index += 1
            try:
                if v.durability:
                    response = await v.client.post(
                        target,
                        json=BODY,
                        operation=f"order-{run}-{i}/charge",  # type: ignore[call-arg]
                    )
                else:
                    response = await v.client.post(target, json=BODY)
                response.raise_for_status()
            except httpx.HTTPError:
                v.errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    v.seconds += seconds
    v.done += count
    v.round_rates.append(count / seconds)


def _transports(limits: httpx.Limits) -> dict[str, Callable[[], httpx.AsyncBaseTransport]]:
    from httpx_aiohttp import AiohttpTransport

    return {
        HTTPX: lambda: httpx.AsyncHTTPTransport(limits=limits),
        AIOHTTP: lambda: AiohttpTransport(limits=limits),
        INSTANT: InstantTransport,
    }


BY_HAND = "by hand"
CLAIM_FLOOR = "claim floor"
MISSION_FLOOR = "mission floor"
RAW_BODY = b'{"amount":1000,"currency":"eur","source":"tok_visa"}'


class ByHand:
    """samekey's protocol written by hand over an httpx.AsyncClient: the key INSERTed before the
    POST and the answer UPDATEd after it (samekey's statements, on its schema), each on one
    writer thread (a sqlite3 connection belongs to one thread), awaited from the loop. No
    batching, no lease, no replay: the least a durable async client does (durability process)."""

    def __init__(self, client: httpx.AsyncClient, path: str) -> None:
        self.client, self.path = client, path
        self.writer = concurrent.futures.ThreadPoolExecutor(1, "by-hand-journal")
        self.journal: FloorJournal | None = None
        self.writer.submit(self._open).result()

    def _open(self) -> None:
        self.journal = FloorJournal(self.path)

    async def post(self, url: str, *, json: Any, operation: str) -> httpx.Response:
        loop = asyncio.get_running_loop()
        journal, key, now = self.journal, str(uuid.uuid4()), time.time()
        assert journal is not None
        await loop.run_in_executor(self.writer, journal.claim, operation, key, url, RAW_BODY, now)
        response = await self.client.post(url, json=json, headers={"Idempotency-Key": key})
        await loop.run_in_executor(self.writer, journal.complete, operation, response.content, now)
        return response

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.journal is not None:
            self.writer.submit(self.journal.close).result()
        self.writer.shutdown()


class ClaimFloor:
    """The least a client that journals its key before sending must do: the claim INSERT alone.

    Each POST queues its INSERT (samekey's statement, on its schema) and awaits it; one writer
    thread takes everything queued and commits it in one transaction, as samekey's journal
    thread does, and wakes the loop once per batch. No lease, no replay: what is left between
    this and bare is the hand-off and the write every such client pays.

    ``answers``: also keep the answer, as a client that replays must (the mission floor). The
    answer's UPDATE is queued without a wait and goes in the next batch's transaction, as
    samekey's deferred completions do; a writer with nothing else to do writes it within 10 ms.
    """

    def __init__(self, client: httpx.AsyncClient, path: str, *, answers: bool = False) -> None:
        self.client, self.path, self.answers = client, path, answers
        self.queue: list[tuple[asyncio.Future[None], tuple[Any, ...]]] = []
        self.later: list[tuple[str, bytes, float]] = []  # answers, written with the next batch
        self.lock, self.wake, self.ready = threading.Lock(), threading.Event(), threading.Event()
        self.stopping = False
        self.writer = threading.Thread(target=self._serve, name="claim-floor", daemon=True)
        self.writer.start()
        self.ready.wait()

    async def post(self, url: str, *, json: Any, operation: str) -> httpx.Response:
        future = asyncio.get_running_loop().create_future()
        key = str(uuid.uuid4())
        with self.lock:
            self.queue.append((future, (operation, key, url, RAW_BODY, time.time())))
        self.wake.set()
        await future
        response = await self.client.post(url, json=json, headers={"Idempotency-Key": key})
        if self.answers:
            with self.lock:
                self.later.append((operation, response.content, time.time()))
        return response

    def _serve(self) -> None:
        journal = FloorJournal(self.path)
        self.ready.set()
        while True:
            self.wake.wait(0.01)
            self.wake.clear()
            with self.lock:
                batch, self.queue = self.queue, []
                later, self.later = self.later, []
            if batch or later:
                journal.conn.execute("BEGIN IMMEDIATE")
                for answer in later:
                    journal.complete(*answer)
                for _, claim in batch:
                    journal.claim(*claim)
                journal.conn.execute("COMMIT")
            if batch:
                futures = [future for future, _ in batch]
                futures[0].get_loop().call_soon_threadsafe(_resolve, futures)
            elif self.stopping:
                break
        journal.close()

    async def aclose(self) -> None:
        await self.client.aclose()
        self.stopping = True
        self.wake.set()
        self.writer.join()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _variants(folder: str, concurrency: int) -> tuple[list[Variant], list[samekey.Journal]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    variants, journals = [], []
    for transport, make in _transports(limits).items():
        variants.append(
            Variant(
                f"httpx.AsyncClient, {transport}",
                transport,
                None,
                httpx.AsyncClient(transport=make()),
            )
        )
        for durability in DURABILITIES:
            path = os.path.join(folder, f"journal-{transport}-{durability}.sqlite3")
            journal = samekey.Journal(path, durability=durability)  # type: ignore[arg-type]
            journals.append(journal)
            client = samekey.AsyncClient(journal=journal, transport=make())
            variants.append(
                Variant(
                    f"samekey.AsyncClient ({durability}), {transport}",
                    transport,
                    durability,
                    client,
                )
            )
        if transport == AIOHTTP:
            by_hand = ByHand(httpx.AsyncClient(transport=make()), os.path.join(folder, "by-hand"))
            name = f"{BY_HAND}: the 2 SQLite writes on a writer thread, {transport}"
            variants.append(Variant(name, transport, BY_HAND, by_hand))  # type: ignore[arg-type]
            floor = ClaimFloor(httpx.AsyncClient(transport=make()), os.path.join(folder, "floor"))
            name = f"{CLAIM_FLOOR}: the claim INSERT alone, group-committed, {transport}"
            variants.append(Variant(name, transport, CLAIM_FLOOR, floor))  # type: ignore[arg-type]
            path = os.path.join(folder, "mission-floor")
            floor = ClaimFloor(httpx.AsyncClient(transport=make()), path, answers=True)
            name = f"{MISSION_FLOOR}: the claim and the answer, group-committed, {transport}"
            variants.append(Variant(name, transport, MISSION_FLOOR, floor))  # type: ignore[arg-type]
    return variants, journals


async def _run(
    url: str, folder: str, operations: int, concurrency: int, rounds: int
) -> list[Variant]:
    target = url + "/v1/charges"
    variants, journals = _variants(folder, concurrency)
    run = new_run()
    try:
        for v in variants:  # warm up: open the connections, start threads
            await _round(v, target, -2 * concurrency, 2 * concurrency, concurrency, run + "w")
            v.seconds, v.done, v.errors, v.round_rates = 0.0, 0, 0, []
        per_round = operations // rounds
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                await _round(v, target, r * per_round, per_round, concurrency, run)
    finally:
        for v in variants:
            await v.client.aclose()
        for journal in journals:
            journal.close()
    return variants


def run(
    operations: int = 10_000,
    concurrency: int = 100,
    rounds: int | None = None,
    folder: str | None = None,
) -> dict[str, Any]:
    rounds = rounds or max(
        4, operations // 500
    )  # rounds of >= 250 operations, so 100 stay in flight
    with (
        tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp,
        server("minimal", tmp) as url,
    ):
        variants = asyncio.run(_run(url, tmp, operations, concurrency, rounds))
    bare = {v.transport: v for v in variants if v.durability is None}
    rows = [
        [
            v.name,
            v.done,
            v.errors,
            f"{v.seconds:.2f}",
            f"{v.rate:,.0f}",
            v.spread,
            f"{v.versus(bare[v.transport]):.2f}x",
        ]
        for v in variants
    ]
    headers = [
        "variant",
        "operations",
        "errors",
        "seconds",
        "ops/s",
        "ops/s per round, min-max",
        "vs bare, same transport",
    ]
    by = {(v.transport, v.durability): v for v in variants}
    targets = []
    for n, durability in enumerate(DURABILITIES):
        ceiling = by[INSTANT, durability]
        # CPU per operation: what samekey adds with no network at all, and what 0.8x of bare leaves
        # (if nothing ran in parallel: the journal thread can use the second core)
        adds = 1e6 / ceiling.rate - 1e6 / bare[INSTANT].rate
        mission = by[AIOHTTP, MISSION_FLOOR].versus(bare[AIOHTTP])
        for m, transport in enumerate((HTTPX, AIOHTTP)):
            leaves = 0.25e6 / bare[transport].rate
            targets.append(
                Target(
                    f"3{'abcd'[2 * n + m]}",
                    f"async samekey ({durability}) / bare, {transport} transport",
                    by[transport, durability].versus(bare[transport]),
                    0.8,
                    better="higher",
                    floor=f"on {AIOHTTP}: the claim and the answer {mission:.2f}x, the claim "
                    f"alone {by[AIOHTTP, CLAIM_FLOOR].versus(bare[AIOHTTP]):.2f}x, by hand "
                    f"{by[AIOHTTP, BY_HAND].versus(bare[AIOHTTP]):.2f}x; "
                    f"ceiling {ceiling.rate:,.0f} ops/s "
                    f"({ceiling.rate / bare[transport].rate:.2f}x bare); "
                    f"samekey +{adds:.0f} µs/op, 0.8x leaves {leaves:.0f}",
                    bound=mission if transport == AIOHTTP else None,
                )
            )
    for durability in DURABILITIES:
        targets.append(
            Target(
                "3-ceiling",
                f"journal's own ceiling ({durability}), transport answering at once",
                by[INSTANT, durability].rate,
                unit="ops/s",
                floor=f"bare httpx.AsyncClient on it: {bare[INSTANT].rate:,.0f} ops/s",
            )
        )
    best = max((HTTPX, AIOHTTP), key=lambda t: by[t, "fsync"].rate)
    other = AIOHTTP if best == HTTPX else HTTPX
    notes = [
        f"for throughput at concurrency {concurrency}, choose the {best} transport: "
        "samekey (fsync) "
        f"{by[best, 'fsync'].rate:,.0f} ops/s against {by[other, 'fsync'].rate:,.0f} "
        f"ops/s on {other}",
        f"every variant has the same limits: max_connections={concurrency}, "
        f"max_keepalive_connections={concurrency}",
    ]
    title = (
        f"Concurrent: {operations} async POSTs per variant at concurrency {concurrency}, in "
        f"{rounds} interleaved rounds"
    )
    rates = {v.name: v.rate for v in variants}
    return report(title, headers, rows, notes, targets, rates=rates, concurrency=concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1,000 operations per variant")
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    args = parser.parse_args()
    run(1000 if args.quick else args.operations, args.concurrency, folder=args.dir)


if __name__ == "__main__":
    main()

"""Concurrent async POSTs: throughput of bare httpx.AsyncClient vs samekey.AsyncClient.

10,000 operations at concurrency 100 per variant, against one loopback server in
its own process. The variants take turns in rounds (each round sends a slice of the
operations through every variant, order rotated) so drift hits them alike.

    python -m benchmarks.async_throughput [--operations 10000] [--concurrency 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import httpx

import samekey

from ._common import report, server, table

BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}


@dataclass
class Variant:
    name: str
    client: httpx.AsyncClient
    keyed: bool
    seconds: float = 0.0
    done: int = 0
    errors: int = 0
    extra: list[object] = field(default_factory=list)


async def _round(v: Variant, target: str, start: int, count: int, concurrency: int, run: str) -> None:
    next_index = start
    end = start + count

    async def worker() -> None:
        nonlocal next_index
        while next_index < end:
            i = next_index
            next_index += 1
            try:
                if v.keyed:
                    response = await v.client.post(target, json=BODY, operation=f"order-{run}-{i}/charge")  # type: ignore[call-arg]
                else:
                    response = await v.client.post(target, json=BODY)
                response.raise_for_status()
            except httpx.HTTPError:
                v.errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    v.seconds += time.perf_counter() - t0
    v.done += count


async def _run(url: str, folder: str, operations: int, concurrency: int, rounds: int) -> list[Variant]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    target = url + "/v1/charges"
    variants = [Variant("httpx.AsyncClient (bare)", httpx.AsyncClient(limits=limits), keyed=False)]
    journals = []
    for durability in ("process", "fsync"):
        journal = samekey.Journal(os.path.join(folder, f"journal-{durability}.sqlite3"), durability=durability)
        journals.append(journal)
        client = samekey.AsyncClient(journal=journal, limits=limits)
        variants.append(Variant(f"samekey.AsyncClient ({durability})", client, keyed=True))
    run = uuid.uuid4().hex[:8]
    try:
        for v in variants:  # warm up: open the connections, start threads
            await _round(v, target, -2 * concurrency, 2 * concurrency, concurrency, run + "w")
            v.seconds, v.done, v.errors = 0.0, 0, 0
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


def run(operations: int = 10_000, concurrency: int = 100, rounds: int | None = None, folder: str | None = None) -> dict:
    rounds = rounds or max(4, operations // 500)  # rounds of >= 250 operations, so 100 stay in flight
    with tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp, server("minimal", tmp) as url:
        variants = asyncio.run(_run(url, tmp, operations, concurrency, rounds))
    bare = variants[0].done / variants[0].seconds
    rows = []
    for v in variants:
        rate = v.done / v.seconds
        rows.append([v.name, v.done, v.errors, f"{v.seconds:.2f}", f"{rate:,.0f}", f"{rate / bare:.2f}x"])
    text = table(["variant", "operations", "errors", "seconds", "ops/s", "vs bare"], rows)
    process = variants[1].done / variants[1].seconds / bare
    fsync = variants[2].done / variants[2].seconds / bare
    checks = [
        f"samekey process / bare = {process:.2f}x (target >= 0.80x): {'MET' if process >= 0.8 else 'NOT MET'}",
        f"samekey fsync / bare = {fsync:.2f}x (reported; group commit: one fsync per batch)",
        "note: at concurrency 100 bare httpx is CPU-bound in httpcore's connection pool, which scans every "
        "request it holds on each request and response; samekey's tasks spend part of each operation on the "
        "journal, outside the pool, so fewer wait in it (a ratio above 1.0x comes from that, not from magic)",
    ]
    title = (
        f"Concurrent: {operations} async POSTs per variant at concurrency {concurrency}, in {rounds} interleaved rounds"
    )
    return report(title, text, checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1,000 operations per variant")
    parser.add_argument("--dir", default=None, help="folder for the journals (default: the system temp folder)")
    args = parser.parse_args()
    run(1000 if args.quick else args.operations, args.concurrency, folder=args.dir)


if __name__ == "__main__":
    main()

"""What samekey costs the event loop: async throughput with the journal's work taken away.

Target 3 (samekey >= 0.8x bare on the same async transport) is bounded by the event loop's
CPU: at concurrency 100 the loop thread is busy, so every µs samekey's Python adds to an
operation there is throughput lost. Over a transport answering at once, four journals:

- the real one (claims batched on the journal thread, as shipped);
- the journal thread with no SQL at all (each claim answered with a fresh record at once): what
  is left is samekey's Python on the loop and the hand-off to the journal thread;
- the claims run on the loop itself (no journal thread): the hand-off gone, SQLite on the loop;
- no journal work at all (claims answered on the loop, answers dropped): samekey's flow and
  driver alone, the least samekey can add to the loop as it is written.

For each: samekey's throughput against bare httpx.AsyncClient in the same rounds, and the loop
thread's own CPU per operation (time.thread_time). ``--no-gc`` turns the cyclic garbage
collector off, to show its share.

    python -m benchmarks.loop_budget [--operations 2000] [--rounds 8] [--no-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

import samekey
from samekey._contract import Claim, ClaimResult, Complete, JournalCall, new_record

from .async_throughput import BODY, InstantTransport

CONCURRENCY = 100


class NoSQL(samekey.Journal):
    """The journal thread's batches answered without SQLite: every claim creates its record."""

    def run_batch(self, calls: Sequence[JournalCall]) -> list[tuple[Any, BaseException | None]]:
        return [(_created(c) if isinstance(c, Claim) else None, None) for c in calls]


def _created(claim: Claim) -> ClaimResult:
    expires = claim.now + claim.lease_seconds
    return ClaimResult("created", new_record(claim.intent, claim.owner, claim.now, expires))


class ClaimsOnTheLoop(samekey.AsyncClient):
    """The real journal, its claims run on the event loop's thread (no journal thread)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        journal = self._transport.engine.journal  # type: ignore[attr-defined]
        _on_the_loop(self, lambda action: action.run(journal), (Claim,))


class NoJournal(samekey.AsyncClient):
    """No journal work at all: claims answered on the loop, answers dropped. What is left is
    samekey's flow and driver on the loop, with no thread to hand anything to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _on_the_loop(self, lambda action: _created(action) if isinstance(action, Claim) else None,
                     (Claim, Complete))  # fmt: skip


def _on_the_loop(client: samekey.AsyncClient, answer: Callable[[Any], Any], kinds: tuple[type, ...]
                 ) -> None:  # fmt: skip
    transport = client._transport
    perform = transport._perform  # type: ignore[attr-defined]

    async def on_loop(action: Any, on_worker: Any) -> Any:
        if isinstance(action, kinds):
            return answer(action)
        return await perform(action, on_worker)

    transport._perform = on_loop  # type: ignore[attr-defined]


async def _drive(post: Callable[[], Awaitable[object]], operations: int) -> tuple[float, float]:
    """(operations per second, the loop thread's CPU µs per operation) at CONCURRENCY."""
    left = [operations]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await post()

    started, cpu = time.perf_counter(), time.thread_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return operations / (time.perf_counter() - started), (
        time.thread_time() - cpu
    ) / operations * 1e6


async def _compare(client: samekey.AsyncClient, operations: int, rounds: int) -> dict[str, Any]:
    bare = httpx.AsyncClient(transport=InstantTransport())
    sent = [0]

    async def keyed() -> None:
        sent[0] += 1
        await client.post("http://x/", json=BODY, operation=f"op-{sent[0]}")

    async def plain() -> None:
        await bare.post("http://x/", json=BODY)

    results: dict[str, list[tuple[float, float]]] = {"bare": [], "samekey": []}
    for _ in range(rounds):
        results["bare"].append(await _drive(plain, operations))
        results["samekey"].append(await _drive(keyed, operations))
    await client.aclose()
    await bare.aclose()
    rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
    return {"ratio": rate["samekey"] / rate["bare"], "cpu": cpu}


def run(operations: int = 2000, rounds: int = 8) -> None:
    print(
        f"\nAsync, a transport answering at once, {CONCURRENCY} tasks, {rounds} rounds of "
        f"{operations} (medians)\n"
    )
    print("| journal | samekey / bare | loop CPU per operation, bare -> samekey |")
    print("|---|---|---|")
    variants: dict[str, Callable[[str], samekey.AsyncClient]] = {
        "the real one": lambda path: samekey.AsyncClient(
            transport=InstantTransport(), journal=samekey.Journal(path, durability="process")
        ),
        "no SQL on the journal thread": lambda path: samekey.AsyncClient(
            transport=InstantTransport(), journal=NoSQL(path, durability="process")
        ),
        "claims on the loop": lambda path: ClaimsOnTheLoop(
            transport=InstantTransport(), journal=samekey.Journal(path, durability="process")
        ),
        "no journal work at all, nothing handed to a thread": lambda path: NoJournal(
            transport=InstantTransport(), journal=samekey.Journal(path, durability="process")
        ),
    }
    with tempfile.TemporaryDirectory(prefix="samekey-loop-") as folder:
        for n, (name, make) in enumerate(variants.items()):
            client = make(os.path.join(folder, f"journal-{n}.sqlite3"))
            found = asyncio.run(_compare(client, operations, rounds))
            bare, keyed = found["cpu"]["bare"], found["cpu"]["samekey"]
            print(f"| {name} | {found['ratio']:.2f}x | {bare:.0f} -> {keyed:.0f} µs |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--no-gc", action="store_true", help="the cyclic garbage collector off: its share"
    )
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    run(args.operations, args.rounds)


if __name__ == "__main__":
    main()

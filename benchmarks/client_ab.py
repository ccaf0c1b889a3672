"""Two samekey source trees side by side in one process: a client's whole request path, A/B.

For a refactoring of the core: the same POSTs go through a `samekey.Client` of each tree, in
alternating blocks (a new random order each round) to one loopback server, so machine noise
hits them alike; then the same for `samekey.AsyncClient` at concurrency 20 (``--aiohttp``: over
httpx-aiohttp at concurrency 100, as targets 3b/3d). Both trees use the
SQLite journal with durability "process" (the path the benchmarks compare to bare httpx).

    git archive <commit> src | tar -x -C /tmp/before
    python -m benchmarks.client_ab /tmp/before/src src [--blocks 30] [--cpu] [--aiohttp]

Prints the median time per request for each tree and their ratio (after/before).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ._common import server
from .journal_ab import _load

BLOCK = 40  # sequential requests per block
TASKS = 20  # concurrent requests per async block (each sends BLOCK // 4)
AIOHTTP_TASKS = 100  # with --aiohttp: the concurrency of targets 3b/3d
BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}


def _sequential(client: Any, url: str, first: int, clock: Callable[[], float]) -> float:
    started = clock()
    for i in range(first, first + BLOCK):
        client.post(url, json=BODY, operation=f"s-{i}").raise_for_status()
    return (clock() - started) / BLOCK


def _concurrent(client: Any, url: str, first: int, clock: Callable[[], float]) -> float:
    per_task, tasks = BLOCK // 4, client.tasks

    async def task(t: int) -> None:
        for i in range(per_task):
            (await client.post(url, json=BODY, operation=f"a-{first}-{t}-{i}")).raise_for_status()

    async def block() -> float:
        started = clock()
        await asyncio.gather(*(task(t) for t in range(tasks)))
        return (clock() - started) / (tasks * per_task)

    return client.loop.run_until_complete(block())  # type: ignore[no-any-return]


def _measure(trees: dict[str, ModuleType], clients: dict[str, Any], url: str, blocks: int,
        work: Any,
             clock: Callable[[], float]) -> dict[str, float]:  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in trees}
    for b in range(blocks):
        order = list(trees)
        random.shuffle(order)
        for k in order:
            times[k].append(work(clients[k], url, b * BLOCK * TASKS, clock))
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def run(before: str, after: str, blocks: int, clock: Callable[[], float], aiohttp: bool) -> None:
    trees = {"before": _load("samekey_before", before), "after": _load("samekey_after", after)}
    folder = tempfile.mkdtemp(prefix="samekey-client-ab-")

    def journal(k: str, kind: str) -> Any:
        return trees[k].Journal(os.path.join(folder, f"{k}-{kind}.sqlite3"), durability="process")

    with server("minimal") as url:
        sync = {k: tree.Client(journal=journal(k, "sync")) for k, tree in trees.items()}
        _report("sequential Client POST", _measure(trees, sync, url, blocks, _sequential, clock))
        for client in sync.values():
            client.close()
        tasks = AIOHTTP_TASKS if aiohttp else TASKS
        loop, aio = asyncio.new_event_loop(), _async_clients(trees, journal, tasks, aiohttp)
        for client in aio.values():
            client.loop, client.tasks = loop, tasks
        over = "httpx-aiohttp" if aiohttp else "httpx's transport"
        _report(
            f"AsyncClient POST, {tasks} at once, {over}",
            _measure(trees, aio, url, blocks, _concurrent, clock),
        )
        for client in aio.values():
            loop.run_until_complete(client.aclose())
        loop.close()


def _async_clients(
    trees: dict[str, ModuleType], journal: Callable[[str, str], Any], tasks: int, aiohttp: bool
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    if aiohttp:  # the transport of targets 3b/3d
        from httpx_aiohttp import AiohttpTransport

        return {
            k: tree.AsyncClient(
                journal=journal(k, "async"), transport=AiohttpTransport(limits=limits)
            )
            for k, tree in trees.items()
        }
    return {
        k: tree.AsyncClient(journal=journal(k, "async"), limits=limits) for k, tree in trees.items()
    }


def _report(title: str, medians: dict[str, float]) -> None:
    before, after = medians["before"], medians["after"]
    print(
        f"{title:34s} before {before:8.1f} µs/req   after {after:8.1f} µs/req   "
        f"after/before {after / before:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the src folder of the tree to compare against")
    parser.add_argument("after", help="the src folder of the tree under test")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--cpu", action="store_true", help="time with the process CPU clock")
    parser.add_argument(
        "--aiohttp", action="store_true", help="async over httpx-aiohttp, 100 at once (3b/3d)"
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    run(args.before, args.after, args.blocks, clock, args.aiohttp)


if __name__ == "__main__":
    main()

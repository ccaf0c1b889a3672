"""Exactly once at scale, end to end: 8 processes racing over 200 operations on one journal (one
SIGKILLed and restarted), 1,000 asyncio operations at concurrency 100 on a server in its own
process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import samekey
from samekey.testing import PaymentServer

HERE = Path(__file__).parent


def _assert_exactly_once(server: PaymentServer, n: int) -> None:
    charges = server.charges()
    amounts = Counter(c["amount"] for c in charges)
    assert sorted(amounts) == list(range(n)), "an operation was lost"
    assert max(amounts.values()) == 1, f"double charges: {[a for a, k in amounts.items() if k > 1]}"
    key_of_amount = {c["amount"]: c["key"] for c in charges}
    assert len(set(key_of_amount.values())) == n
    assert set(server.keys_seen()) == set(key_of_amount.values()), "a request carried a second key"


# -- processes -----------------------------------------------------------------------------------


def _worker(journal: Path, url: str, seed: int, n: int) -> subprocess.Popen[bytes]:
    journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(journal.parent / f"worker-{seed}-{time.monotonic_ns()}.log", "wb")
    return subprocess.Popen(
        [sys.executable, str(HERE / "race_worker.py"), str(journal), url, str(seed), str(n)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _workers(journal: Path, url: str, count: int, n: int) -> list[subprocess.Popen[bytes]]:
    return [_worker(journal, url, seed, n) for seed in range(count)]


def _wait_all(workers: list[subprocess.Popen[bytes]], journal: Path) -> None:
    codes = [w.wait(timeout=120) for w in workers]
    logs = "\n".join(
        p.read_text(errors="replace")[-2000:] for p in sorted(journal.parent.glob("worker-*.log"))
    )
    assert codes == [0] * len(workers), logs


@pytest.fixture
def race_server(tmp_path: Path) -> Iterator[PaymentServer]:
    with PaymentServer(tmp_path / "race.sqlite3") as server:
        yield server


def test_8_processes_race_over_200_operations(
    journal_path: Path, race_server: PaymentServer
) -> None:
    workers = _workers(journal_path, race_server.url, 8, 200)
    _wait_all(workers, journal_path)
    _assert_exactly_once(race_server, 200)


def test_8_processes_race_with_one_killed_and_restarted(
    journal_path: Path, race_server: PaymentServer
) -> None:
    workers = _workers(journal_path, race_server.url, 8, 200)
    deadline = time.monotonic() + 60
    while race_server.charge_count() < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(workers[3].pid, signal.SIGKILL)
    assert workers[3].wait(timeout=10) == -signal.SIGKILL
    # the restarted process runs the same program on the same journal
    workers[3] = _worker(journal_path, race_server.url, 3, 200)
    _wait_all(workers, journal_path)
    _assert_exactly_once(race_server, 200)


# -- asyncio at scale
# -------------------------------------------------------------------------------


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PaymentServer in its own process, so it does not share our GIL."""
    db = tmp_path / "proc-server.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "samekey.testing", "--db", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url, db
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


class _SlowDiskJournal(samekey.Journal):
    """The real journal (so the async clients' journal thread runs it), 2 ms slower per batch of
    calls, as on a slow disk, recording which thread ran each batch."""

    threads: list[int]
    calls = 0

    def run_batch(self, calls: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        self.threads.append(threading.get_ident())
        self.calls += len(calls)
        time.sleep(0.002)
        return super().run_batch(calls)


async def _thousand(journal: object | None, url: str) -> tuple[list[float], list[httpx.Response]]:
    """1,000 POSTs at concurrency 100 with a heartbeat; bare httpx when journal is None."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    limits = httpx.Limits(max_connections=100)
    if journal is None:
        client = httpx.AsyncClient(base_url=url, limits=limits)
    else:
        client = samekey.AsyncClient(journal=journal, base_url=url, limits=limits)  # type: ignore[arg-type]
    async with client:
        gate = asyncio.Semaphore(100)

        async def pay(i: int) -> httpx.Response:
            async with gate:
                if journal is None:
                    return await client.post(
                        "/charges", json={"amount": i}, headers={"Idempotency-Key": f"bare-{i}"}
                    )
                return await client.post("/charges", json={"amount": i}, operation=f"op-{i}")  # type: ignore[call-arg]

        beat = asyncio.create_task(heartbeat())
        responses = await asyncio.gather(*(pay(i) for i in range(1000)))
        stop.set()
        await beat
    return sorted(lags), responses


def test_1000_async_operations_at_concurrency_100(
    journal_path: Path, server_process: tuple[str, Path]
) -> None:
    url, db = server_process
    journal = _SlowDiskJournal(journal_path)  # fsync durability, the default
    journal.threads = []
    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    try:
        lags, responses = asyncio.run(_thousand(journal, url))
    finally:
        journal.close()
    assert [r.status_code for r in responses] == [201] * 1000
    import sqlite3

    with sqlite3.connect(db) as conn:
        amounts = [
            row[0] for row in conn.execute("SELECT json_extract(body, '$.amount') FROM charges")
        ]
    assert sorted(amounts) == list(range(1000))
    # every claim ran off the event loop, grouped in batches of 2 ms + fsync (the completions
    # are queued on the loop and written in those batches)
    assert journal.calls >= 1000 and journal.threads and loop_thread not in journal.threads
    print(f"{journal.calls} journal calls in {len(journal.threads)} batches")
    # The same load through bare httpx, on the same server, for the loop's own baseline: at
    # concurrency 100 httpx itself keeps the loop busy for tens of ms per turn on 2 cores.
    bare_lags, _ = asyncio.run(_thousand(None, url))
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    bare_p50, bare_p99 = bare_lags[len(bare_lags) // 2], bare_lags[int(len(bare_lags) * 0.99)]
    print(
        f"heartbeat lag p50/p99: samekey {p50 * 1000:.1f}/{p99 * 1000:.1f} ms, "
        f"bare httpx {bare_p50 * 1000:.1f}/{bare_p99 * 1000:.1f} ms"
    )
    # every batch costs >= 2 ms: had they run on the loop, each beat would wait them out
    assert p99 < bare_p99 * 2 + 0.02, "the journal blocks the event loop"

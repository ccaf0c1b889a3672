"""Journal scale: start-up, lookup, replay and pending listing with 1k / 100k / 1M completed records.

The records are written straight into the real schema with one batched INSERT per
size (a million client calls would take far longer and measure the network, not
the journal). Each journal also holds 10 pending records, as after a crash.

    python -m benchmarks.journal_scale [--sizes 1000,100000,1000000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import httpx

import samekey
from samekey._rows import COLUMNS as _COLUMNS

from ._common import median, report, table

PENDING = 10
URL = "https://api.example.com/v1/charges"
BODY = b'{"amount":1000,"currency":"eur"}'
ANSWER = b'{"id":"ch_1","status":"succeeded"}'


def _fill(journal: samekey.Journal, count: int) -> None:
    now = time.time() - 3600
    headers = '[["content-type","application/json"]]'
    fingerprint = hashlib.sha256(f"POST\n{URL}\n".encode() + BODY).hexdigest()  # as _plan.fingerprint computes it

    def rows(n: int, state: str) -> object:
        for i in range(n):
            done = state == "completed"
            yield (
                f"{state}-{i:07d}/charge", f"key-{state}-{i}", "Idempotency-Key", "POST",
                URL, fingerprint, headers, BODY,
                state, now + i * 1e-3, now + i * 1e-3, now + i * 1e-3 if done else None, 1, None,
                201 if done else None, headers if done else None, ANSWER if done else None,
                None, None, None,
            )  # fmt: skip

    sql = f"INSERT INTO operations ({_COLUMNS}) VALUES ({', '.join('?' * 20)})"
    conn = journal._conn
    assert conn is not None
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sql, rows(count, "completed"))  # type: ignore[arg-type]
    conn.executemany(sql, rows(PENDING, "pending"))  # type: ignore[arg-type]
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _timed(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return median(samples)


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a completed operation was sent again: {request.url}")


def measure(folder: str, count: int) -> list[str]:
    path = os.path.join(folder, f"journal-{count}.sqlite3")
    t0 = time.perf_counter()
    with samekey.Journal(path) as journal:
        _fill(journal, count)
    build = time.perf_counter() - t0
    size_mb = os.path.getsize(path) / 1e6

    def startup() -> None:
        samekey.Client(journal=path).close()

    start = _timed(startup, 20)
    opening = _timed(lambda: samekey.Journal(path).close(), 20)
    ops = [f"completed-{random.randrange(count):07d}/charge" for _ in range(500)]
    with samekey.Journal(path) as journal:
        it = iter(ops * 2)
        lookup = _timed(lambda: journal.get(next(it)), 1000)
        listing = _timed(lambda: journal.pending(), 50)
        assert len(journal.pending()) == PENDING
        with samekey.Client(journal=journal, transport=httpx.MockTransport(_no_network)) as client:
            it2 = iter(ops)

            def replay() -> None:
                response = client.post(
                    URL, content=BODY, operation=next(it2),
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                assert samekey.operation_info(response).replayed  # type: ignore[union-attr]

            replayed = _timed(replay, 300)
    cli = ""
    if importlib.util.find_spec("samekey.cli") is not None:  # the CLI may not exist in every checkout

        def run_cli() -> None:
            subprocess.run(
                [sys.executable, "-m", "samekey", "list", "--journal", path],
                check=True, capture_output=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )  # fmt: skip

        cli = f"{_timed(run_cli, 5) * 1e3:.0f}"
    return [
        f"{count:,}", f"{size_mb:.0f}", f"{build:.1f}", f"{opening * 1e3:.2f}", f"{start * 1e3:.2f}",
        f"{lookup * 1e3:.3f}", f"{replayed * 1e3:.3f}", f"{listing * 1e3:.3f}", cli,
    ]  # fmt: skip


def run(sizes: tuple[int, ...] = (1000, 100_000, 1_000_000), folder: str | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp:
        for count in sizes:
            rows.append(measure(tmp, count))
            print("  measured", rows[-1][0], "records", flush=True)
    headers = [
        "completed records", "file MB", "build s", "Journal open ms", "Client start ms", "Journal.get ms",
        "replay via Client ms", "pending() ms", "`samekey list` ms",
    ]  # fmt: skip
    text = table(headers, rows)
    largest = rows[-1]
    checks = [
        f"lookup at {largest[0]} records: Journal.get {largest[5]} ms, replay {largest[6]} ms (target < 5 ms): "
        f"{'MET' if float(largest[5]) < 5 and float(largest[6]) < 5 else 'NOT MET'}",
    ]
    title = (
        f"Journal scale: medians; each journal also holds {PENDING} pending records (durability fsync). "
        "Client start includes httpx.Client's own set-up (its TLS context), the same with bare httpx"
    )
    return report(title, text, checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="1,000 and 100,000 records only")
    parser.add_argument("--dir", default=None, help="folder for the journals (default: the system temp folder)")
    args = parser.parse_args()
    sizes = (1000, 100_000) if args.quick else tuple(int(s) for s in args.sizes.split(","))
    run(sizes, folder=args.dir)


if __name__ == "__main__":
    main()

"""Journal scale: start-up, lookup, replay and pending listing with 1k / 100k / 1M completed
records, then `samekey list`'s pages on the largest journal, as a process and as the store's query.

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
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import httpx

import samekey

from ._common import Target, median, report, table

PENDING = 10
URL = "https://api.example.com/v1/charges"
BODY = b'{"amount":1000,"currency":"eur"}'
ANSWER = b'{"id":"ch_1","status":"succeeded"}'


def _fill(path: str, count: int) -> None:
    # plain sqlite3 into the file samekey created, its columns read from the file: the schema
    # follows samekey wherever the code defining it lives
    now = time.time() - 3600
    headers = '[["content-type","application/json"]]'
    fingerprint = hashlib.sha256(
        f"POST\n{URL}\n".encode() + BODY
    ).hexdigest()  # as _plan.fingerprint computes it
    conn = sqlite3.connect(path, isolation_level=None)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(operations)")]

    def rows(n: int, state: str) -> Iterator[tuple[object, ...]]:
        for i in range(n):
            done = state == "completed"
            at = now + i * 1e-3
            values = {
                "operation": f"{state}-{i:07d}/charge", "key": f"key-{state}-{i}",
                "key_header": "Idempotency-Key",
                "method": "POST", "url": URL, "fingerprint": fingerprint,
                "request_headers": headers,
                "request_body": BODY, "state": state, "created_at": at, "updated_at": at,
                "completed_at": at if done else None, "attempts": 1,
                "response_status": 201 if done else None,
                "response_headers": headers if done else None,
                "response_body": ANSWER if done else None,
            }  # fmt: skip
            yield tuple(values.get(c) for c in columns)

    sql = f"INSERT INTO operations ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows(count, "completed"))
        conn.executemany(sql, rows(PENDING, "pending"))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


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
    samekey.Journal(path).close()
    _fill(path, count)
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
    if (
        importlib.util.find_spec("samekey.cli") is not None
    ):  # the CLI may not exist in every checkout

        def run_cli() -> None:
            subprocess.run(
                [sys.executable, "-m", "samekey", "list", "--journal", path],
                check=True, capture_output=True, env={**os.environ,
                "PYTHONPATH": os.pathsep.join(sys.path)},
            )  # fmt: skip

        cli = f"{_timed(run_cli, 5) * 1e3:.0f}"
    return [
        f"{count:,}", f"{size_mb:.0f}", f"{build:.1f}", f"{opening * 1e3:.2f}",
        f"{start * 1e3:.2f}",
        f"{lookup * 1e3:.3f}", f"{replayed * 1e3:.3f}", f"{listing * 1e3:.3f}", cli,
    ]  # fmt: skip


def _listings(count: int) -> list[tuple[str, list[str]]]:
    """`samekey list` commands on a journal of ``count`` completed (+ PENDING pending) records:
    the crash case, a page of each state, prefixes rare and common, a page deep in the journal."""
    middle = f"completed-{count // 2:07d}/charge"
    newest = f"completed-{count - 1:07d}"[:-3]  # the newest ~1,000 records
    common = f"completed-{count // 2:07d}"[:-5]  # ~10% of the records, half way through
    return [
        ("list (the pending ones)", ["list"]),
        ("list --state pending --limit 50", ["list", "--state", "pending", "--limit", "50"]),
        ("list --prefix pending-0000 (10 pending)", ["list", "--prefix", "pending-0000"]),
        (
            f"list --all --prefix {newest} (~1,000, the newest)",
            ["list", "--all", "--prefix", newest],
        ),
        (
            f"list --all --prefix {common} --limit 100 (~10%)",
            ["list", "--all", "--prefix", common, "--limit", "100"],
        ),
        ("list --state completed --limit 100", ["list", "--state", "completed", "--limit", "100"]),
        (
            "list --all --limit 100 --after <half way>",
            ["list", "--all", "--limit", "100", "--after", middle],
        ),
    ]


def measure_listing(folder: str, count: int, rounds: int = 9) -> list[list[str]]:
    """Each `samekey list` as a process (wall clock; the commands and the process floor in a new
    random order each round, so machine noise hits them alike), beside the store's page query
    and what list did before it had one: read every record of the prefix, filter in Python."""
    from samekey._cli import _inspect, _paging  # not in checkouts older than the paged list
    from samekey._cli._args import build_parser

    path = os.path.join(folder, f"journal-{count}.sqlite3")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with samekey.Journal(path, read_only=True) as journal:
        middle = journal.get(f"completed-{count // 2:07d}/charge")
        assert middle is not None
        commands = [(label,
            [_paging.cursor_of(middle) if a == middle.operation else a for a in argv])
                    for label, argv in _listings(count)]  # fmt: skip
        queries = []
        for _, argv in commands:
            args = build_parser().parse_args(argv)
            query = _inspect.query_of(args, time.time(), args.limit)
            after = _timed(lambda q=query: journal.list_page(q), 5)  # type: ignore[misc]
            before = _timed(lambda q=query: _before(journal, q), 1)  # type: ignore[misc]
            queries.append((after, before, len(journal.list_page(query)[: args.limit])))
    argvs = [["--version"]] + [argv for _, argv in commands]
    samples: list[list[float]] = [[] for _ in argvs]
    for _ in range(rounds):
        for i in random.sample(range(len(argvs)), len(argvs)):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "samekey", *argvs[i], "--journal", path],
                check=True,
                           capture_output=True, env=env)  # fmt: skip
            samples[i].append(time.perf_counter() - t0)
    rows = [
        ["samekey --version (the process floor)", f"{median(samples[0]) * 1e3:.0f}", "", "", ""]
    ]
    for (label, _), wall, (after, before, shown) in zip(
        commands, samples[1:], queries, strict=True
    ):
        rows.append([f"samekey {label}: {shown} shown", f"{median(wall) * 1e3:.0f}",
                     f"{after * 1e3:.2f}", f"{before * 1e3:.1f}",
                     f"{before / after:,.0f}x"])  # fmt: skip
    return rows


def _before(journal: samekey.Journal, query: object) -> int:
    """What `samekey list` did before the page query (and still does on a store without one)."""
    from samekey._cli._paging import page

    class Unpaged:  # the journal without list_page
        def __init__(self) -> None:
            self.records = journal.records

    return len(page(Unpaged(), query))  # type: ignore[arg-type]


def run(sizes: tuple[int, ...] = (1000, 100_000, 1_000_000), folder: str | None = None) -> dict:
    rows = []
    listing: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp:
        for count in sizes:
            rows.append(measure(tmp, count))
            print("  measured", rows[-1][0], "records", flush=True)
        if importlib.util.find_spec("samekey._cli._paging") is not None:
            listing = measure_listing(tmp, sizes[-1])
    headers = [
        "completed records", "file MB", "build s", "Journal open ms", "Client start ms",
        "Journal.get ms",
        "replay via Client ms", "pending() ms", "`samekey list` ms",
    ]  # fmt: skip
    largest = rows[-1]
    checks = [
        f"lookup at {largest[0]} records: Journal.get {largest[5]} ms, replay {largest[6]} ms"
    ]
    lookup = Target(
        "scale",
        f"replay of a completed operation via Client, {largest[0]} records",
        float(largest[6]),
        5.0,
        unit="ms",
    )
    extra: dict[str, object] = {}
    if listing:
        listing_headers = [
            "command",
            "process ms",
            "list_page ms",
            "before ms",
            "before / list_page",
        ]
        print(
            f"\n`samekey list` on the {largest[0]}-record "
            f"journal\n\n{table(listing_headers, listing)}\n"
        )
        floor, worst = float(listing[0][1]), max(float(row[1]) for row in listing[1:])
        checks.append(
            f"samekey list at {largest[0]} records: every command within "
            f"{worst - floor:.0f} ms of the "
            f"process floor ({floor:.0f} ms, samekey --version)"
        )
        extra["listing"] = {"headers": listing_headers, "rows": listing}
    title = (
        f"Journal scale: medians; each journal also holds {PENDING} pending records "
        "(durability fsync). "
        "Client start includes httpx.Client's own set-up (its TLS context), the same "
        "with bare httpx"
    )
    return report(title, headers, rows, checks, [lookup], **extra)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="1,000 and 100,000 records only")
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    args = parser.parse_args()
    sizes = (1000, 100_000) if args.quick else tuple(int(s) for s in args.sizes.split(","))
    run(sizes, folder=args.dir)


if __name__ == "__main__":
    main()

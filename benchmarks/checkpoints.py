"""The tail a checkpoint puts on requests: SQLite's own (inside a commit) against samekey's
background one, in "process" mode, side by side in one run.

SQLite copies its write-ahead log into the main file once the log passes 1,000 pages, inside
the commit that crossed the line: that request pays the copy and two fsyncs. samekey's
"process" mode does it from a short-lived thread instead (`_wal.Checkpointer`). The
variants take turns in blocks of 10, in a new random order each round, as in sequential.py;
a checkpoint comes every ~170 operations, so the tail needs many requests to show.

    python -m benchmarks.checkpoints [--requests 8000]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

import samekey

from ._common import median, percentile, report, server

BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
BARE = "httpx.Client (bare)"
INLINE = "samekey process, SQLite's own checkpoint (as before)"
BACKGROUND = "samekey process, background checkpoint"


@dataclass
class _Variant:
    name: str
    call: Callable[[], object]
    wal: str | None = None
    samples: list[float] = field(default_factory=list)
    largest_wal: int = 0


def _samekey(
    name: str, target: str, path: str, *, inline: bool
) -> tuple[_Variant, Callable[[], None]]:
    journal = samekey.Journal(path, durability="process")
    if inline:  # what samekey did before: no thread, SQLite's default threshold, in the commit
        journal._checkpoints = None
        journal._read("PRAGMA wal_autocheckpoint=1000", (), "benchmark set-up")
    client = samekey.Client(journal=journal)
    run = uuid.uuid4().hex[:8]
    count = iter(range(10**9))

    def call() -> None:
        client.post(target, json=BODY, operation=f"{run}-{next(count)}").raise_for_status()

    def close() -> None:
        client.close()
        journal.close()

    return _Variant(name, call, wal=f"{path}-wal"), close


def run(requests: int = 8000, folder: str | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp, server() as url:
        target = url + "/v1/charges"
        bare = httpx.Client()
        inline, close_inline = _samekey(
            INLINE, target, os.path.join(tmp, "inline.sqlite3"), inline=True
        )
        background, close_background = _samekey(
            BACKGROUND, target, os.path.join(tmp, "bg.sqlite3"), inline=False
        )
        variants = [
            _Variant(BARE, lambda: bare.post(target, json=BODY).raise_for_status()),
            inline,
            background,
        ]
        try:
            for _ in range(50):
                for v in variants:
                    v.call()
            order = random.Random(1234)
            clock = time.perf_counter
            for _ in range(requests // 10):
                for v in order.sample(variants, len(variants)):
                    v.call()  # not counted: it pays for what the previous variant left behind
                    for _ in range(10):
                        t0 = clock()
                        v.call()
                        v.samples.append(clock() - t0)
                    if v.wal is not None:
                        v.largest_wal = max(v.largest_wal, os.path.getsize(v.wal))
        finally:
            bare.close()
            close_inline()
            close_background()
    rows = []
    for v in variants:
        s = v.samples
        rows.append([
            v.name, f"{median(s) * 1e3:.3f}", f"{percentile(s, 99) * 1e3:.2f}",
            f"{percentile(s, 99.9) * 1e3:.2f}",
            f"{max(s) * 1e3:.1f}", sum(x > 0.005 for x in s),
            f"{v.largest_wal / 1e6:.1f}" if v.wal else "",
        ])  # fmt: skip
    headers = [
        "variant",
        "median ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "over 5 ms",
        "largest WAL MB",
    ]
    by = {v.name: v.samples for v in variants}
    checks = [
        f"p99.9: {percentile(by[INLINE], 99.9) * 1e3:.2f} ms with SQLite's own checkpoint, "
        f"{percentile(by[BACKGROUND], 99.9) * 1e3:.2f} ms with samekey's background one "
        f"(bare httpx {percentile(by[BARE], 99.9) * 1e3:.2f} ms)",
        f"requests over 5 ms: {sum(x > 0.005 for x in by[INLINE])} against "
        f"{sum(x > 0.005 for x in by[BACKGROUND])} of {len(by[INLINE])}",
    ]
    title = (
        f"Checkpoint tail: {requests} POSTs per variant, durability process, in blocks of 10 "
        "in random order"
    )
    return report(title, headers, rows, checks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--quick", action="store_true", help="2000 requests per variant")
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    args = parser.parse_args()
    run(2000 if args.quick else args.requests, folder=args.dir)


if __name__ == "__main__":
    main()

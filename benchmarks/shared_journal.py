"""Worker processes sharing one journal (gunicorn or celery workers on one host, one file).

Each worker process sends sequential POSTs through samekey ("process" mode) to the loopback
server. When two workers commit at the same moment, one meets the other's lock. SQLite's own
busy handler would then sleep 1, 2, 5, 10 ms ... between tries, while a samekey commit holds the
lock for ~50 µs; samekey polls from 50 µs instead (`Journal._when_free`). Variants, in rounds
in a new random order each time: every worker on its own journal (no sharing: the floor), one
shared journal as samekey runs it, and one shared journal with SQLite's busy handler (as
samekey ran it before).

    python -m benchmarks.shared_journal [--workers 2] [--requests 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import median, percentile, report, server

OWN = "each worker its own journal"
SHARED = "one shared journal (samekey polls the lock)"
SQLITE_WAITS = "one shared journal, SQLite's busy handler (before)"

WORKER = r"""
import json, sys, time, uuid, samekey
url, path, requests, variant = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
journal = samekey.Journal(path, durability="process")
if variant == "sqlite":
    journal._read("PRAGMA busy_timeout=10000", (), "benchmark set-up")
run = uuid.uuid4().hex[:8]
with samekey.Client(journal=journal) as client:
    for i in range(20):
        client.post(url, json={"amount": 1000}, operation=f"{run}-warm-{i}")
    samples = []
    for i in range(requests):
        t0 = time.perf_counter()
        client.post(url, json={"amount": 1000}, operation=f"{run}-{i}").raise_for_status()
        samples.append(time.perf_counter() - t0)
journal.close()
print(json.dumps(samples))
"""


def _round(url: str, folder: str, variant: str, workers: int, requests: int) -> list[float]:
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    procs = []
    for n in range(workers):
        name = (
            f"own-{n}.sqlite3"
            if variant == OWN
            else ("shared.sqlite3" if variant == SHARED else "sqlite.sqlite3")
        )
        mode = "sqlite" if variant == SQLITE_WAITS else "samekey"
        cmd = [
            sys.executable,
            "-c",
            WORKER,
            url + "/v1/charges",
            os.path.join(folder, name),
            str(requests),
            mode,
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
    samples: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed with exit code {proc.returncode}")
        samples += json.loads(out)
    return samples


def run(
    workers: int = 2, requests: int = 3000, rounds: int = 6, folder: str | None = None
) -> dict[str, object]:
    variants = [OWN, SHARED, SQLITE_WAITS]
    samples: dict[str, list[float]] = {v: [] for v in variants}
    order = random.Random(1234)
    with tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp, server() as url:
        for _ in range(rounds):
            for variant in order.sample(variants, len(variants)):
                samples[variant] += _round(url, tmp, variant, workers, max(1, requests // rounds))
    rows = []
    for v in variants:
        s = samples[v]
        rows.append([
            v, len(s), f"{sum(s) / len(s) * 1e3:.3f}", f"{median(s) * 1e3:.3f}",
            f"{percentile(s, 99) * 1e3:.2f}",
            f"{percentile(s, 99.9) * 1e3:.2f}",
            f"{100 * sum(x > 0.002 for x in s) / len(s):.2f}%",
        ])  # fmt: skip
    headers = ["variant", "requests", "mean ms", "median ms", "p99 ms", "p99.9 ms", "over 2 ms"]
    checks = [
        f"p99 with a shared journal: {percentile(samples[SHARED], 99) * 1e3:.2f} ms as "
        "samekey runs it, "
        f"{percentile(samples[SQLITE_WAITS], 99) * 1e3:.2f} ms with SQLite's busy handler, "
        f"{percentile(samples[OWN], 99) * 1e3:.2f} ms with a journal per worker",
    ]
    title = (
        f"Shared journal: {workers} worker processes, {requests} sequential POSTs each per "
        "variant, durability process"
    )
    return report(title, headers, rows, checks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3000, help="per worker and variant")
    parser.add_argument("--quick", action="store_true", help="600 requests per worker and variant")
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    args = parser.parse_args()
    run(args.workers, 600 if args.quick else args.requests, folder=args.dir)


if __name__ == "__main__":
    main()

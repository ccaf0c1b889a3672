"""Resume throughput: `samekey resume --all` of many pending operations, to the loopback server.

A run that could not reach its server leaves its operations pending (claimed, key on disk,
never answered). Here a client whose transport refuses every connection leaves N of them in
a journal; then the CLI, in its own process, resumes them all against the loopback server.
The CLI's own start (`samekey resume --all` with nothing pending) is measured apart. When
`samekey resume --help` shows `--concurrency`, the run is measured with it too.

    python -m benchmarks.resume [--operations 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

import samekey

from ._common import Target, new_run, report, server

BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
CONCURRENCY = 16  # for `samekey resume --concurrency N`, where the CLI has it


class Refused(httpx.BaseTransport):
    """Every connection refused: nothing is sent, each operation stays pending."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused (benchmark)", request=request)


def leave_pending(path: str, target: str, count: int) -> None:
    journal = samekey.Journal(path, durability="process")
    policy = samekey.RetryPolicy(max_attempts=1)
    run = new_run()
    with samekey.Client(journal=journal, policy=policy, transport=Refused()) as client:
        for i in range(count):
            try:
                client.post(target, json=BODY, operation=f"order-{run}-{i:05d}/charge")
            except samekey.RetriesExhausted:
                pass
    journal.close()


def _cli(path: str, *options: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    command = [sys.executable, "-m", "samekey", "resume", "--all", "--journal", path, *options]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - t0, done


def has_concurrency() -> bool:
    usage = subprocess.run(
        [sys.executable, "-m", "samekey", "resume", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--concurrency" in usage.stdout


def _resume_all(folder: str, target: str, count: int, name: str, options: tuple[str, ...]) -> float:
    path = os.path.join(folder, f"{name}.sqlite3")
    leave_pending(path, target, count)
    seconds, done = _cli(path, *options)
    with samekey.Journal(path) as journal:
        left = len(journal.pending())
    if done.returncode != 0 or left:
        tail = (done.stderr or done.stdout)[-600:]
        raise RuntimeError(
            f"samekey resume --all {' '.join(options)}: exit {done.returncode}, {left} left\n{tail}"
        )
    return seconds


def run(operations: int = 10_000, folder: str | None = None) -> dict[str, Any]:
    cases: dict[str, tuple[str, ...]] = {"sequential": ()}
    if has_concurrency():
        cases[f"--concurrency {CONCURRENCY}"] = ("--concurrency", str(CONCURRENCY))
    rows, seconds = [], {}
    with (
        tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp,
        server("minimal", tmp) as url,
    ):
        target = url + "/v1/charges"
        empty = os.path.join(tmp, "empty.sqlite3")
        samekey.Journal(empty).close()
        start, _ = _cli(empty)
        for n, (case, options) in enumerate(cases.items()):
            seconds[case] = _resume_all(tmp, target, operations, f"case-{n}", options)
    for case, wall in seconds.items():
        rows.append(
            [
                f"samekey resume --all, {case}",
                operations,
                f"{wall:.2f}",
                f"{operations / wall:,.0f}",
            ]
        )
    best = min(seconds, key=lambda case: seconds[case])
    targets = [
        Target(
            "5",
            f"`samekey resume --all` of {operations:,} pending operations ({best})",
            operations / seconds[best],
            unit="ops/s",
            floor=f"the CLI's own start: {start * 1e3:.0f} ms",
        )
    ]
    notes = [
        f"the CLI's own start, with nothing pending: {start * 1e3:.0f} ms (included in "
        "the seconds above)",
        "every operation completed: none left pending after each run; "
        "the CLI opens the journal with "
        "durability fsync (the default): one fsync per operation's claim",
    ]
    title = (
        f"Resume: {operations:,} pending operations, `samekey resume --all` against one "
        "loopback server"
    )
    headers = ["run", "operations", "seconds", "ops/s"]
    return report(title, headers, rows, notes, targets)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    args = parser.parse_args()
    run(args.operations, args.dir)


if __name__ == "__main__":
    main()

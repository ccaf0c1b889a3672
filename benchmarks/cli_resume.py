"""`samekey resume --all` against a dead server, by --concurrency, side by side in one run.

An operator reported 40 pending operations resumed one at a time for 51 s against a server
that was down, with nothing printed between. Each variant here resumes the same 40 operations
(a fresh journal each, one earlier attempt each) as a `samekey` process against a loopback
port nothing listens on (connection refused at once), with --max-attempts 3 (the default 8,
with waits of up to 30 s, would take ~20 minutes one at a time), so the time is samekey's
backoff waits; it prints the wall time and the ratio to --concurrency 1.

    python -m benchmarks.cli_resume [--operations 40] [--max-attempts 3] [--concurrency 1 4 8 16]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import samekey

from ._common import table

SRC = Path(__file__).resolve().parents[1] / "src"


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on return: nothing listens there


def journal_with_pending(path: Path, operations: int, url: str) -> None:
    refuse = httpx.MockTransport(lambda request: httpx.Response(503))
    once = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(journal=path, policy=once, transport=refuse) as client:
        for n in range(operations):
            try:
                client.post(url, operation=f"batch-9/inv-{n:03d}", json={"amount": n})
            except samekey.RetriesExhausted:
                pass


def resume(path: Path, concurrency: int, attempts: int) -> tuple[float, int, str]:
    command = [
        sys.executable,
        "-m",
        "samekey",
        "resume",
        "--all",
        "--concurrency",
        str(concurrency),
    ]
    command += ["--max-attempts", str(attempts)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--journal", str(path)], capture_output=True, text=True, env=env
    )
    return time.perf_counter() - started, done.returncode, done.stdout.splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--operations", type=int, default=40)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()
    url = f"http://127.0.0.1:{dead_port()}/charges"
    rows, first = [], None
    with tempfile.TemporaryDirectory() as folder:
        for n in args.concurrency:
            path = Path(folder) / f"journal-{n}.sqlite3"
            journal_with_pending(path, args.operations, url)
            seconds, code, summary = resume(path, n, args.max_attempts)
            first = first or seconds
            rows.append(
                [
                    f"--concurrency {n}",
                    f"{seconds:.1f}",
                    f"{first / seconds:.1f}x",
                    str(code),
                    summary,
                ]
            )
    title = (
        f"samekey resume --all --max-attempts {args.max_attempts}: {args.operations} pending "
        "operations"
    )
    print(f"**{title}, server down (connection refused)**\n")
    print(table(["variant", "wall s", "faster than 1", "exit", "summary line"], rows))


if __name__ == "__main__":
    main()

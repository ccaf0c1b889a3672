"""Shared helpers: the server process, statistics, tables."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def server(kind: str = "minimal", folder: str | None = None, think_ms: float = 0.0) -> Iterator[str]:
    """Start the loopback server in its own process; yield its URL."""
    if kind == "minimal":
        cmd = [sys.executable, "-m", "benchmarks._server", "--think-ms", str(think_ms)]
    else:  # the PaymentServer from samekey.testing (charges in SQLite)
        cmd = [sys.executable, "-m", "samekey.testing", "--db", os.path.join(folder or ".", "server.sqlite3")]
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root, os.path.join(root, "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the benchmark server did not start: {url!r}")
        yield url
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU(s) ({cpu}), Python {platform.python_version()}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def report(title: str, text: str, checks: list[str]) -> dict[str, object]:
    """Print one benchmark's table and verdicts; the dict is what run_all writes to latest.md."""
    print(f"\n{title}\n\n{text}\n")
    for check in checks:
        print("  " + check)
    return {"title": title, "table": text, "checks": checks}

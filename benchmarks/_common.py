"""Shared helpers: the server process, statistics, tables, targets, the journal floor's schema."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def server(
    kind: str = "minimal", folder: str | None = None, think_ms: float = 0.0
) -> Iterator[str]:
    """Start the loopback server in its own process; yield its URL."""
    if kind == "minimal":
        cmd = [sys.executable, "-m", "benchmarks._server", "--think-ms", str(think_ms)]
    else:  # the PaymentServer from samekey.testing (charges in SQLite)
        cmd = [
            sys.executable,
            "-m",
            "samekey.testing",
            "--db",
            os.path.join(folder or ".", "server.sqlite3"),
        ]
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root, os.path.join(root, "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root
    )
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
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU(s) ({cpu}), Python "
        f"{platform.python_version()}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


@dataclass(frozen=True)
class Target:
    """One target of issue 22: what was measured, the limit, and the verdict computed from both.

    ``limit`` None: reported only (the issue sets no threshold). ``floor`` says, in a few words,
    the bound measured in the same run that the target cannot beat; ``bound`` is that floor's
    value on the target's own scale, where one is measured. A target missed by its floor too
    says so in its verdict: no client doing the same journaling could have met it in this run.
    """

    id: str
    what: str
    measured: float
    limit: float | None = None
    better: str = "lower"  # "lower": MET when measured <= limit; "higher": when measured >= limit
    unit: str = "x"
    floor: str = ""
    bound: float | None = None

    def meets(self, value: float) -> bool:
        assert self.limit is not None
        return value <= self.limit if self.better == "lower" else value >= self.limit

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return "reported"
        if self.meets(self.measured):
            return "MET"
        if self.bound is not None and not self.meets(self.bound):
            return "NOT MET, nor is its floor"
        return "NOT MET"

    def value(self, number: float | None = None) -> str:
        number = self.measured if number is None else number
        if self.unit == "x":
            return f"{number:.2f}x"
        if self.unit == "ms":
            return f"{number:.3f} ms"
        if self.unit == "ops/s":
            return f"{number:,.0f} ops/s"
        return f"{number:.0f} {self.unit}"

    def condition(self) -> str:
        if self.limit is None:
            return ""
        return f"{'<=' if self.better == 'lower' else '>='} {self.value(self.limit)}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def target_from(data: dict[str, Any]) -> Target:
    return Target(**{k: v for k, v in data.items() if k != "verdict"})


def report(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    notes: Sequence[str] = (),
    targets: Sequence[Target] = (),
    **extra: Any,
) -> dict[str, Any]:
    """Print one benchmark's table, notes and targets; return its JSON-ready section."""
    rows = [[str(c) for c in row] for row in rows]
    print(f"\n{title}\n\n{table(headers, rows)}\n")
    for note in notes:
        print("  " + note)
    for t in targets:
        print(f"  target {t.id}: {t.what} = {t.value()} {t.condition()}: {t.verdict}")
    section = {"title": title, "headers": list(headers), "rows": rows, "notes": list(notes)}
    return {**section, "targets": [t.as_dict() for t in targets], **extra}


def load() -> str:
    """The machine's load average (1, 5, 15 min) and CPU count, as `uptime` shows it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPU(s)"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


class FloorJournal:
    """A SQLite file with samekey's real journal schema, written by plain sqlite3 statements.

    The schema is read from a file samekey itself created (not imported from samekey's private
    modules), so the floors follow the schema wherever the code that defines it lives.
    ``claim`` runs the INSERT samekey's claim runs, ``complete`` the UPDATE of its completion.
    ``page_size``: that schema on pages of this many bytes instead of samekey's own.
    """

    def __init__(
        self,
        path: str,
        pragmas: Sequence[str] = ("PRAGMA synchronous=NORMAL",),
        *,
        page_size: int | None = None,
    ) -> None:
        import samekey

        if page_size is None:
            samekey.Journal(path, durability="process").close()
        else:
            _schema_on_pages(path, page_size)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        for pragma in pragmas:
            self.conn.execute(pragma)
        columns = [row[1] for row in self.conn.execute("PRAGMA table_info(operations)")]
        self.columns = columns
        names = ", ".join(columns)
        marks = ", ".join(f":{c}" for c in columns)
        self.insert = (
            f"INSERT INTO operations ({names}) VALUES ({marks}) ON CONFLICT (operation) DO NOTHING"
        )
        completed = [c for c in _COMPLETION if c in columns]
        sets = ", ".join(f"{c} = :{c}" for c in completed)
        self.update = (
            f"UPDATE operations SET {sets} WHERE operation = :operation AND state = 'pending'"
        )

    def claim(self, operation: str, key: str, url: str, body: bytes, now: float) -> None:
        values = {c: None for c in self.columns}
        values.update(
            operation=operation, key=key, key_header="Idempotency-Key", method="POST", url=url,
            fingerprint="0" * 64, request_headers=_HEADERS, request_body=body, state="pending",
            created_at=now, updated_at=now, attempts=0, lease_owner="owner", lease_expires=now + 60,
        )  # fmt: skip
        self.conn.execute(self.insert, {c: values.get(c) for c in self.columns})

    def complete(self, operation: str, body: bytes, now: float) -> None:
        values = dict(
            state="completed", completed_at=now, updated_at=now, attempts=1, last_error=None,
            response_status=201, response_headers=_HEADERS, response_body=body, lease_owner=None,
            lease_expires=None, operation=operation,
        )  # fmt: skip
        self.conn.execute(self.update, values)

    def close(self) -> None:
        self.conn.close()


def _schema_on_pages(path: str, page_size: int) -> None:
    """A new file at ``path``: samekey's schema, read from a journal samekey makes beside it,
    on pages of ``page_size`` bytes (set before WAL, which fixes it)."""
    import samekey

    model = path + ".model"
    samekey.Journal(model, durability="process").close()
    source = sqlite3.connect(model)
    schema = source.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    source.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    for (sql,) in schema:
        conn.execute(sql)
    conn.close()


_HEADERS = '[["accept","*/*"],["content-type","application/json"]]'
_COMPLETION = (
    "state", "completed_at", "updated_at", "attempts", "last_error", "response_status",
    "response_headers", "response_body", "lease_owner", "lease_expires",
)  # fmt: skip


def new_run() -> str:
    """A short tag that keeps operation names of one run apart from any other's."""
    return uuid.uuid4().hex[:8]

"""The soak proof: N charges through a faulty network by workers that get killed.

``run_soak`` starts a `PaymentServer`, a `FaultProxy` in front of it injecting a
seeded mix of faults, and worker *processes* that each run ``samekey.Client``
on one shared journal file. The parent SIGKILLs a random worker at seeded random
moments and restarts it at once; the restarted worker runs its share of the
operations again from the start (the journal replays finished ones and gives
unfinished ones their old key). At the end the server's SQLite file must hold
exactly one charge per operation, each under the key the journal recorded.

Used by tests/test_soak.py (N=300) and scripts/soak.py (N=10,000). A worker is
``python -m samekey.testing._soak worker ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._faults import Fault, FaultPlan
from ._proxy import FaultProxy
from ._server import PaymentServer

__all__ = ["SoakReport", "fault_mix", "run_soak", "verify"]

# A worker's client: it gives up on an answer after CLIENT_TIMEOUT; the proxy holds a
# "slow" answer longer than that. A killed worker's lease is taken over at once (same host);
# it would expire after LEASE stretched to cover one attempt's timeouts (Engine.lease_for).
CLIENT_TIMEOUT = 0.3
HOLD = 0.6
LEASE = 1.0


def operation_name(i: int) -> str:
    return f"order-{i:05d}/charge"


def payload(i: int) -> dict[str, int]:
    return {"order": i, "amount": 100 + i % 9_900}


def fault_mix(hold: float = HOLD) -> list[Fault]:
    """Every network fault kind, equally likely."""
    return [
        Fault.lost_response(),
        Fault.reset(),
        Fault.http(503),
        Fault.rate_limited("1"),
        Fault.slow_answer(hold),
    ]


@dataclass
class SoakReport:
    """The figures of one soak run; ``problems`` lists every broken invariant."""

    n: int
    workers: int
    fault_rate: float
    seed: int
    wall_seconds: float = 0.0
    requests: int = 0  # requests the proxy received
    faults: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    kills_mid_operation: int = 0  # the killed worker held a pending operation
    kills_after_charge: int = 0  # ... and the server had already charged it
    charges: int = 0
    duplicate_charges: int = 0
    lost_charges: int = 0
    distinct_keys: int = 0
    operations_with_several_keys: int = 0
    server_requests: int = 0
    server_replays: int = 0
    server_409s: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"operations          {self.n} ({self.workers} worker processes, seed {self.seed})",
            f"requests at proxy   {self.requests}",
            f"faults injected     {self.faults_injected} "
            f"({self.faults_injected / max(self.requests, 1):.1%}): {kinds}",
            f"SIGKILLs            {self.kills} ({self.kills_mid_operation} mid-operation, "
            f"{self.kills_after_charge} after the server charged)",
            f"server requests     {self.server_requests} ({self.server_replays} answered "
            "by replay, "
            f"{self.server_409s} with 409 in flight)",
            f"charges             {self.charges}",
            f"duplicate charges   {self.duplicate_charges}",
            f"lost charges        {self.lost_charges}",
            f"distinct keys       {self.distinct_keys} (operations seen with >1 key: "
            f"{self.operations_with_several_keys})",
            f"wall time           {self.wall_seconds:.1f} s",
            "result              "
            + ("OK: exactly once" if self.ok else "FAILED: " + "; ".join(self.problems)),
        ]


# -- the worker process --------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """Charge operations index, index+workers, ... < n; run again after a kill."""
    import samekey

    parser = argparse.ArgumentParser(prog="samekey.testing._soak worker")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--ready-dir", required=True)
    args = parser.parse_args(argv)
    # tiny real waits (workers are separate processes: set_testing would not reach them)
    policy = samekey.RetryPolicy(
        max_attempts=8, initial_delay=0.002, max_delay=0.02, max_retry_after=0.02, deadline=60
    )
    with samekey.Client(
        journal=args.journal, base_url=args.url, policy=policy, timeout=CLIENT_TIMEOUT, lease=LEASE
    ) as client:
        # The parent kills only workers that have done new work since they started: kills
        # should hit operations, not imports or the replay of what an earlier run finished
        # (else at a high kill rate a worker can be killed again before it gets anywhere).
        ready: Path | None = Path(args.ready_dir, f"ready-{os.getpid()}")
        for i in range(args.index, args.n, args.workers):
            for _ in range(1_000):  # each run of the operation uses the same journaled key
                try:
                    response = client.post("/charges", json=payload(i), operation=operation_name(i))
                except samekey.RetriesExhausted:
                    continue
                if response.status_code != 201:
                    print(
                        f"{operation_name(i)}: unexpected HTTP {response.status_code} "
                        f"{response.text}",
                        file=sys.stderr,
                    )
                    return 3
                info = samekey.operation_info(response)
                if ready is not None and info is not None and not info.replayed:
                    ready.touch()
                    ready = None
                break
            else:
                print(f"{operation_name(i)}: never completed", file=sys.stderr)
                return 4
    return 0


# -- the parent ------------------------------------------------------------------------------


class _Workers:
    def __init__(self, folder: Path, journal: Path, url: str, workers: int, n: int) -> None:
        self.folder = folder
        self.base = [
            sys.executable, "-m", "samekey.testing._soak", "worker",
            "--journal", str(journal), "--url", url, "--workers", str(workers), "--n", str(n),
            "--ready-dir", str(folder),
        ]  # fmt: skip
        import samekey

        # the workers import this very samekey (a source checkout or an installed one)
        source = str(Path(samekey.__file__).resolve().parents[1])
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
        }
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, IO[bytes]] = {}

    def start(self, index: int) -> None:
        log = self.logs.get(index)
        if log is None:
            log = self.logs[index] = open(self.folder / f"worker-{index}.log", "ab")
        self.procs[index] = subprocess.Popen(
            [*self.base, "--index", str(index)],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )

    def working(self, index: int) -> bool:
        """Running, and it has done new work since it started."""
        proc = self.procs[index]
        return proc.poll() is None and (self.folder / f"ready-{proc.pid}").exists()

    def log_tail(self, index: int) -> str:
        text = (self.folder / f"worker-{index}.log").read_text(errors="replace")
        return text[-2000:]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for log in self.logs.values():
            log.close()


def _pending_key_of(journal: Path, pid: int) -> str | None:
    """The key of the operation a (now dead) worker process held, if any."""
    try:
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute(
            "SELECT key FROM operations WHERE state = 'pending' AND lease_owner LIKE ?",
            (f"%/{pid}/%",),
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def run_soak(
    n: int = 300,
    *,
    fault_rate: float = 0.3,
    workers: int = 3,
    seed: int = 0,
    kills: int | None = None,
    kill_interval: tuple[float, float] = (0.1, 0.5),
    time_limit: float | None = None,
    folder: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run the soak and return its figures; ``report.problems`` is empty when exactly-once held.

    ``kills`` SIGKILLs in all (default ``max(3, n // 20)``), ``kill_interval`` seconds
    apart (seeded uniform); ``time_limit`` (default ``60 + n / 20`` s) bounds the run.
    """
    if n < 1 or workers < 1:
        raise ValueError("n and workers must be at least 1")
    kills = max(3, n // 20) if kills is None else kills
    limit = 60 + n / 20 if time_limit is None else time_limit
    report = SoakReport(n=n, workers=workers, fault_rate=fault_rate, seed=seed)
    with tempfile.TemporaryDirectory(prefix="samekey-soak-", dir=folder) as tmp:
        base = Path(tmp)
        journal, server_db = base / "journal.sqlite3", base / "server.sqlite3"
        plan = FaultPlan(rate=fault_rate, kinds=fault_mix(), seed=seed)
        started = time.monotonic()
        server = PaymentServer(server_db).start()
        proxy = FaultProxy(server.url, plan, io_timeout=10).start()
        pool = _Workers(base, journal, proxy.url, workers, n)
        run = _Run(report, pool, server, journal, kills, kill_interval, limit, started, progress)
        try:
            _supervise(run)
        finally:
            pool.stop_all()
            proxy.stop()
            server.stop()
        report.wall_seconds = time.monotonic() - started
        report.requests = proxy.counts["requests"]
        report.faults = {
            k: v
            for k, v in proxy.counts.items()
            if k not in ("connections", "requests", "forwarded")
        }
        verify(report, server_db, journal)
    return report


@dataclass
class _Run:
    """What the parent's steps share while it watches the workers of one soak."""

    report: SoakReport
    pool: _Workers
    server: PaymentServer
    journal: Path
    kills: int  # SIGKILLs to send in all
    kill_interval: tuple[float, float]
    limit: float  # seconds after ``started`` to give up
    started: float
    progress: Callable[[str], None] | None
    finished: set[int] = field(default_factory=set)  # indexes of the workers that exited
    next_kill: float = 0.0
    next_note: float = 0.0
    rng: random.Random = field(init=False)  # seeded: the kill moments and victims repeat

    def __post_init__(self) -> None:
        self.rng = random.Random(self.report.seed)


def _supervise(run: _Run) -> None:
    """Start the workers and watch them until all have finished or something broke."""
    for index in range(run.report.workers):
        run.pool.start(index)
    run.next_kill = time.monotonic() + run.rng.uniform(*run.kill_interval)
    run.next_note = time.monotonic() + 5
    while len(run.finished) < run.report.workers:
        now = time.monotonic()
        if now - run.started > run.limit:
            run.report.problems.append(f"did not finish within {run.limit:g} s")
            return
        _reap(run)
        if run.report.problems:
            return
        _kill_when_due(run, now)
        if run.progress is not None and now >= run.next_note:
            charged, kills, seconds = run.server.charge_count(), run.report.kills, now - run.started
            run.progress(f"{charged}/{run.report.n} charged, {kills} kills, {seconds:.0f} s")
            run.next_note = now + 5
        time.sleep(0.01)


def _reap(run: _Run) -> None:
    """Mark the workers that exited since the last look; a non-zero exit is a problem."""
    for index, proc in run.pool.procs.items():
        if index in run.finished or proc.poll() is None:
            continue
        if proc.returncode != 0:
            code, tail = proc.returncode, run.pool.log_tail(index)
            run.report.problems.append(f"worker {index} failed with exit code {code}: {tail}")
        run.finished.add(index)


def _kill_when_due(run: _Run, now: float) -> None:
    """SIGKILL a working worker chosen at random, if a kill is due, and restart it at once."""
    running = [i for i in run.pool.procs if i not in run.finished and run.pool.working(i)]
    if run.report.kills >= run.kills or now < run.next_kill or not running:
        return
    victim = run.rng.choice(running)
    proc = run.pool.procs[victim]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.returncode == -signal.SIGKILL:  # else it had exited by itself: not a kill
        _count_kill(run, proc.pid)
        run.pool.start(victim)  # the same share of operations, the same journal
    run.next_kill = now + run.rng.uniform(*run.kill_interval)


def _count_kill(run: _Run, pid: int) -> None:
    """Count a kill, and whether it hit an operation in flight, and one the server had charged."""
    run.report.kills += 1
    key = _pending_key_of(run.journal, pid)
    if key is not None:
        run.report.kills_mid_operation += 1
        if run.server._query("SELECT 1 FROM charges WHERE key = ?", (key,)):
            run.report.kills_after_charge += 1


def verify(report: SoakReport, server_db: Path, journal: Path) -> SoakReport:
    """Check exactly-once from the server's SQLite file (and the journal); fill ``report``."""
    db = sqlite3.connect(f"file:{server_db}?mode=ro", uri=True)
    try:
        charges = [(str(k), json.loads(b)) for k, b in db.execute("SELECT key, body FROM charges")]
        logged = db.execute("SELECT key, outcome, body FROM requests").fetchall()
    finally:
        db.close()
    per_order = Counter(int(body["order"]) for _, body in charges)
    charge_key = {int(body["order"]): key for key, body in charges}
    _count_charges(report, charges, per_order)
    _count_requests(report, logged)
    _check_charges(report, per_order)
    _check_journal(report, journal, charge_key)
    return report


def _count_charges(
    report: SoakReport,
    charges: list[tuple[str, Any]],
    per_order: Counter[int],
) -> None:
    """The figures of the charges: how many, duplicated, missing, and under how many keys."""
    report.charges = len(charges)
    report.duplicate_charges = sum(c - 1 for c in per_order.values() if c > 1)
    report.lost_charges = sum(1 for i in range(report.n) if per_order[i] == 0)
    report.distinct_keys = len({key for key, _ in charges})


def _count_requests(report: SoakReport, logged: list[tuple[Any, ...]]) -> None:
    """The figures of the request log: requests, replays, 409s, orders sent under several keys."""
    keys_of: defaultdict[int, set[str]] = defaultdict(set)
    for key, _, body in logged:
        try:
            keys_of[int(json.loads(body)["order"])].add(str(key))
        except (ValueError, KeyError, TypeError):
            continue  # a body that is not an order's JSON belongs to no operation
    report.operations_with_several_keys = sum(1 for keys in keys_of.values() if len(keys) > 1)
    report.server_requests = len(logged)
    report.server_replays = sum(1 for _, outcome, _ in logged if outcome == "replay")
    report.server_409s = sum(1 for _, outcome, _ in logged if outcome == "409")


def _check_charges(report: SoakReport, per_order: Counter[int]) -> None:
    """One charge per operation, under one key per operation, and nothing else."""
    n, problems = report.n, report.problems
    if report.charges != n:
        problems.append(f"{report.charges} charges for {n} operations")
    if report.duplicate_charges:
        problems.append(f"{report.duplicate_charges} duplicate charges")
    if report.lost_charges:
        problems.append(f"{report.lost_charges} operations never charged")
    if set(per_order) - set(range(n)):
        problems.append("charges for operations that were never asked for")
    if report.distinct_keys != n:
        problems.append(
            f"{report.distinct_keys} distinct keys among {report.charges} charges, expected {n}"
        )
    if report.operations_with_several_keys:
        problems.append(
            f"{report.operations_with_several_keys} operations reached the server with "
            "more than one key"
        )


def _check_journal(report: SoakReport, journal: Path, charge_key: dict[int, str]) -> None:
    """Every operation completed in the journal, under the very key the server charged."""
    from .._journal import Journal

    n, problems = report.n, report.problems
    with Journal(journal) as store:
        records = {r.operation: r for r in store.records()}
    unfinished = [
        op for op in map(operation_name, range(n)) if op not in records or records[op].pending
    ]
    if unfinished:
        problems.append(
            f"{len(unfinished)} operations not completed in the journal (first: {unfinished[0]})"
        )
    wrong = [
        i
        for i in range(n)
        if operation_name(i) in records and records[operation_name(i)].key != charge_key.get(i)
    ]
    if wrong:
        problems.append(
            f"{len(wrong)} operations charged under another key than the journal's "
            f"(first: {wrong[0]})"
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        return worker_main(args[1:])
    print(
        "usage: python -m samekey.testing._soak worker ... (see scripts/soak.py)", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())

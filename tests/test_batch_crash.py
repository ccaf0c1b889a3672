"""End to end: a batch of 50 payments is SIGKILLed half-way, then finished from the shell.

The batch (examples/batch_invoices.py) runs as a real process against a PaymentServer
living in this test process, so the server outlives the crash. Afterwards
`python -m samekey list` must show exactly the operations the dead process left in
flight, `python -m samekey resume --all` must finish them with their own keys, and a
re-run of the batch must pay only what is left: 50 charges, one key per invoice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import samekey
from samekey.testing import PaymentServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "batch_invoices.py"
INVOICES = 50
WORKERS = 4


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def kill_after_first_payment(batch: list[str], pause: float) -> None:
    """Run the batch and SIGKILL it ``pause`` s after it printed its first payment (counted from
    there, not from the start: on a loaded machine the start-up alone can outlast a fixed delay)."""
    crashing = subprocess.Popen(batch, stdout=subprocess.PIPE, text=True, env=env())
    assert crashing.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = crashing.stdout.readline()
        if not line or line.startswith("paid "):
            break
    time.sleep(pause)
    crashing.kill()
    assert crashing.wait(10) == -signal.SIGKILL
    crashing.stdout.close()


def samekey_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "samekey", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )


def printed(path: Path, verb: str) -> dict[str, str]:
    """operation -> key, from the batch's '<verb> <operation> <charge> key=<key>' lines."""
    pattern = re.compile(rf"^{verb} (\S+) ch_\d+ key=(\S+)$")
    return {m[1]: m[2] for line in path.read_text().splitlines() if (m := pattern.match(line))}


def test_sigkilled_batch_is_listed_resumed_and_finished_without_double_charges(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal.sqlite3"
    batch = [
        sys.executable, str(EXAMPLE), "--state", str(tmp_path / "state"), "--journal", str(journal),
        "--sample-size", str(INVOICES), "--workers", str(WORKERS),
    ]  # fmt: skip
    with PaymentServer(tmp_path / "server.sqlite3", work_seconds=0.08) as server:
        first_out = tmp_path / "first-run.txt"
        with first_out.open("w") as out:
            proc = subprocess.Popen(
                [*batch, "--server", server.url], stdout=out, stderr=subprocess.STDOUT, env=env()
            )
            try:
                deadline = time.monotonic() + 60
                while (
                    server.charge_count() < INVOICES // 2
                    and proc.poll() is None
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, first_out.read_text()
        assert INVOICES // 2 <= server.charge_count() < INVOICES

        # what the journal holds right after the crash
        with samekey.Journal(journal) as j:
            records = {r.operation: r for r in j.records()}
        pending = {op for op, r in records.items() if r.pending}
        paid_first = printed(first_out, "paid")

        listed = samekey_cli("list", "--json", "--journal", str(journal))
        assert listed.returncode == 0, listed.stderr
        listed_ops = {r["operation"]: r["key"] for r in json.loads(listed.stdout)}
        assert set(listed_ops) == pending  # exactly the interrupted ones
        # in flight: at most one per worker; answered but not yet journaled (a completion is
        # written with the next write, see _deferred): at most one more per worker
        assert 1 <= len(pending) <= 2 * WORKERS
        assert set(paid_first) <= set(records)
        assert len(set(paid_first) & pending) <= WORKERS  # resumed below: the server replays
        assert all(records[op].key == key for op, key in listed_ops.items())
        # every key the server heard of belongs to an operation the journal knows
        assert set(server.keys_seen()) <= {r.key for r in records.values()}
        table = samekey_cli("list", "--journal", str(journal))
        assert table.returncode == 0 and len(table.stdout.splitlines()) == 1 + len(pending)

        resumed = samekey_cli(
            "resume", "--all", "--base-url", server.url, "--journal", str(journal)
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        lines = resumed.stdout.splitlines()
        assert len(lines) == len(pending) + 1
        for op in pending:
            assert any(f"] {op}: HTTP 201 (key {listed_ops[op]}, " in line for line in lines), (
                resumed.stdout
            )
        assert (
            lines[-1] == f"resumed {len(pending)} operation(s): {len(pending)} completed now, 0 "
            "already completed, 0 failed"
        )
        assert json.loads(samekey_cli("list", "--json", "--journal", str(journal)).stdout) == []
        assert server.charge_count() == len(records)  # each interrupted one charged once, not twice

        second_out = tmp_path / "second-run.txt"
        rerun = subprocess.run(
            [*batch, "--server", server.url], capture_output=True, text=True, timeout=120, env=env()
        )
        second_out.write_text(rerun.stdout)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        already, paid_now = printed(second_out, "already paid"), printed(second_out, "paid")
        assert set(already) == set(records)  # replayed from the journal, nothing sent
        assert len(paid_now) == INVOICES - len(records)

        charges = server.charges()
        keys_seen = set(server.keys_seen())
        with samekey.Journal(journal) as j:
            final = {r.operation: r for r in j.records()}
    assert len(charges) == INVOICES
    assert len(final) == INVOICES and not any(r.pending for r in final.values())
    journal_keys = {r.key for r in final.values()}
    assert len(journal_keys) == INVOICES  # one key per operation
    assert {c["key"] for c in charges} == journal_keys  # one charge per key
    assert keys_seen == journal_keys  # and no other key ever reached the server
    assert sorted(c["invoice"] for c in charges) == [f"{n:04d}" for n in range(1, INVOICES + 1)]


def test_the_example_runs_with_no_arguments_and_a_rerun_pays_nothing_twice(tmp_path: Path) -> None:
    environ = {
        **env(),
        "TMPDIR": str(tmp_path),
    }  # its default state directory lives in the temp dir
    first = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, env=environ
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == "done: 20 paid now, 0 already paid earlier, 0 failed"
    second = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, env=environ
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[-1] == "done: 0 paid now, 20 already paid earlier, 0 failed"


def test_the_example_killed_mid_charge_with_its_own_server_pays_each_invoice_once_on_the_rerun(
    tmp_path: Path,
) -> None:
    # The README flow: --crash-after SIGKILLs the batch *and* the PaymentServer it runs, in the
    # middle of a charge (each takes 0.6 s). The server's key for that invoice stays 'running':
    # the re-run must execute it (nothing was charged: a charge commits with its answer), not
    # meet a 409 on every attempt of every run.
    state = tmp_path / "state"
    batch = [
        sys.executable,
        str(EXAMPLE),
        "--state",
        str(state),
        "--sample-size",
        "3",
        "--work-seconds",
        "0.6",
    ]
    # killed 0.3 s into the second charge, counted from the first one's answer
    kill_after_first_payment(
        batch, 0.3
    )  # SIGKILL: the batch and the PaymentServer it runs die together
    server_db = state / "server.sqlite3"

    def query(sql: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(server_db)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    (in_flight,) = query("SELECT key FROM idempotency WHERE state = 'running'")  # killed mid-charge
    with samekey.Journal(state / "journal.sqlite3") as j:
        pending = [r for r in j.records() if r.pending]
    assert [r.key for r in pending] == [in_flight[0]]

    for run, last_line in enumerate(
        ["0 failed", "done: 0 paid now, 3 already paid earlier, 0 failed"]
    ):
        rerun = subprocess.run(batch, capture_output=True, text=True, timeout=60, env=env())
        assert rerun.returncode == 0, f"run {run + 2}:\n{rerun.stdout}{rerun.stderr}"
        assert rerun.stdout.splitlines()[-1].endswith(last_line)
    charges = query("SELECT key, json_extract(body, '$.invoice') FROM charges ORDER BY 2")
    assert [invoice for _, invoice in charges] == ["0001", "0002", "0003"]  # one charge per invoice
    with samekey.Journal(state / "journal.sqlite3") as j:
        records = {r.operation: r for r in j.records()}
    assert not any(r.pending for r in records.values())
    assert {key for key, _ in charges} == {r.key for r in records.values()}
    assert records[pending[0].operation].key == in_flight[0]  # finished with its own key
    assert query("SELECT count(*) FROM idempotency WHERE state = 'running'") == [(0,)]


def test_a_rerun_straight_after_a_crash_counts_the_servers_replay_as_already_paid(
    tmp_path: Path,
) -> None:
    # No `samekey resume` in between: the invoice in flight when the batch died was charged by the
    # server (which outlived it); the re-run sends its key again and gets the server's replay. That
    # is not a payment made now: "paid now" counted it, so the summary claimed one charge too many.
    batch = [sys.executable, str(EXAMPLE), "--state", str(tmp_path / "state"), "--sample-size", "4"]
    with PaymentServer(tmp_path / "server.sqlite3", work_seconds=0.4) as server:
        kill_after_first_payment(
            [*batch, "--server", server.url], 0.15
        )  # the next one is mid-charge then
        deadline = time.monotonic() + 60
        running = "SELECT count(*) FROM idempotency WHERE state = 'running'"
        while time.monotonic() < deadline:  # the server finishes the charge alone
            with contextlib.closing(sqlite3.connect(tmp_path / "server.sqlite3")) as conn:
                if conn.execute(running).fetchone() == (0,):
                    break
            time.sleep(0.01)
        charged = server.charge_count()
        assert 2 <= charged < 4
        rerun = subprocess.run(
            [*batch, "--server", server.url], capture_output=True, text=True, timeout=60, env=env()
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        lines = rerun.stdout.splitlines()
        in_flight = (
            rf"already paid invoice-000{charged}/charge ch_{charged} key=\S+ \(the server's "
            r"replay\)"
        )
        assert any(re.fullmatch(in_flight, line) for line in lines), rerun.stdout
        assert (
            lines[-1] == f"done: {4 - charged} paid now, {charged} already paid earlier, 0 failed"
        )
        assert server.charge_count() == 4


def test_crash_after_longer_than_the_run_lets_a_finished_run_exit_normally(tmp_path: Path) -> None:
    # --crash-after simulates a crash *during* the run: a run that is over before it must
    # exit 0, not sit until the timer fires and then be SIGKILLed after printing "done".
    batch = [sys.executable, str(EXAMPLE), "--state", str(tmp_path / "state"), "--sample-size", "2"]
    started = time.monotonic()
    done = subprocess.run(
        [*batch, "--crash-after", "30"], capture_output=True, text=True, timeout=90, env=env()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "done: 2 paid now, 0 already paid earlier, 0 failed"
    assert time.monotonic() - started < 30

"""Against a real loopback server and real processes: lost responses, kill -9, restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import respx

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer


def test_key_is_in_the_journal_file_before_the_first_byte_is_sent(journal_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def server_side(request: httpx.Request) -> httpx.Response:
        # read the journal with a separate connection, as a restarted process would
        with sqlite3.connect(journal_path) as conn:
            rows = conn.execute("SELECT operation, key FROM operations").fetchall()
        seen.extend(rows)
        return httpx.Response(201)

    with respx.mock:
        route = respx.post("https://pay.example/charges").mock(side_effect=server_side)
        with samekey.Client(journal=journal_path) as client:
            client.post("https://pay.example/charges", json={"amount": 1}, operation="durable-op")
    assert seen == [("durable-op", route.calls[0].request.headers["Idempotency-Key"])]


def test_lost_response_is_retried_and_the_server_charges_once(
    journal_path: Path, tmp_path: Path
) -> None:
    plan = FaultPlan([Fault("drop_after"), Fault("drop_after"), Fault("status", 503)])
    with PaymentServer(tmp_path / "server.sqlite3", faults=plan) as server:
        policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.05)
        with samekey.Client(journal=journal_path, base_url=server.url, policy=policy) as client:
            response = client.post("/charges", json={"amount": 4200}, operation="order-42/charge")
        assert response.status_code == 201 and response.json()["amount"] == 4200
        assert server.charge_count() == 1
        outcomes = [r["outcome"] for r in server.requests()]
        assert outcomes == ["charged_then_dropped", "replay"]
        assert len(set(server.keys_seen())) == 1


CHILD = textwrap.dedent(
    """
    import sys, samekey
    journal, url = sys.argv[1], sys.argv[2]
    policy = samekey.RetryPolicy(max_attempts=10_000, initial_delay=0.05, max_delay=0.05, \
deadline=600)
    with samekey.Client(journal=journal, base_url=url, policy=policy) as client:
        response = client.post("/charges", json={"amount": 990}, operation="order-99/charge")
        print(response.status_code, flush=True)
    """
)


def test_kill_9_while_retrying_then_rerun_sends_the_same_key(
    journal_path: Path, tmp_path: Path
) -> None:
    # the first attempt charges but its answer is lost; then the server is "down" (503)
    plan = FaultPlan([Fault("drop_after")] + [Fault("status", 503)] * 10_000)
    with PaymentServer(tmp_path / "server.sqlite3", faults=plan) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(journal_path), server.url])
        try:
            deadline = time.monotonic() + 30
            while len(server.keys_seen()) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(server.keys_seen()) >= 3, "the child never retried"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        (child_key,) = set(server.keys_seen())
        assert server.charge_count() == 1

        server.faults = FaultPlan()  # the server recovers; the program is run again
        with samekey.Client(journal=journal_path, base_url=server.url) as client:
            record = client.journal.get("order-99/charge")
            assert record is not None and record.state == "pending" and record.key == child_key
            response = client.post("/charges", json={"amount": 990}, operation="order-99/charge")
        assert response.status_code == 201
        assert set(server.keys_seen()) == {child_key}
        assert server.charge_count() == 1
        assert server.requests()[-1]["outcome"] == "replay"


def test_rerun_after_success_does_not_pay_twice(journal_path: Path, server: PaymentServer) -> None:
    for _ in range(3):  # three runs of the same script
        with samekey.Client(journal=journal_path, base_url=server.url) as client:
            response = client.post("/charges", json={"amount": 7}, operation="invoice-7")
            assert response.status_code == 201
    assert server.charge_count() == 1
    assert len(server.requests()) == 1


@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_both_durabilities_work_end_to_end(
    journal_path: Path, server: PaymentServer, durability: str
) -> None:
    journal = samekey.Journal(journal_path, durability=durability)  # type: ignore[arg-type]
    with samekey.Client(journal=journal, base_url=server.url) as client:
        for i in range(5):
            client.post("/charges", json={"amount": i}, operation=f"op-{i}")
    journal.close()
    assert server.charge_count() == 5

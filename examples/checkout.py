"""Checkout with a flaky payment server: a lost response, a crash, a resume; one charge.

Run it with no arguments:  python examples/checkout.py

It starts a local payment server on 127.0.0.1 that charges and then drops the
connection (the response is lost), then answers 503 for a while. A child process
running the checkout is killed with SIGKILL while it retries. Running the checkout
again reuses the journaled Idempotency-Key, so the server replays its answer: the
customer is charged exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer


def checkout(order: int, base_url: str) -> None:
    """What a shop's checkout code looks like with samekey (default journal, no journal= needed)."""
    policy = samekey.RetryPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=1000, deadline=600)
    with samekey.Client(base_url=base_url, policy=policy) as client:
        response = client.post("/charges", json={"order": order, "amount": 4999}, operation=f"order-{order}/charge")
        info = samekey.operation_info(response)
        how = "replayed by the server" if response.headers.get("Idempotent-Replayed") else "new"
        attempts = info.attempts if info else "?"
        print(f"   checkout finished: HTTP {response.status_code} {response.json()} ({how}; attempts={attempts})")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        checkout(int(sys.argv[2]), sys.argv[3])
        return
    folder = Path(tempfile.mkdtemp(prefix="samekey-demo-"))
    order = int(time.time() * 1000) % 10_000_000  # a new order each run; the journal remembers old ones
    operation = f"order-{order}/charge"
    faults = FaultPlan([Fault("drop_after")] + [Fault("status", 503)] * 100_000)
    with PaymentServer(folder / "payments.sqlite3", faults=faults) as server:
        print(f"1. A payment server on {server.url}: it will charge, then lose the response, then answer 503.")
        print(f"   Journal: {samekey.default_journal_path()} (the embedded default)")
        child = subprocess.Popen([sys.executable, __file__, "--child", str(order), server.url])
        deadline = time.monotonic() + 20
        while len(server.requests()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        (key,) = set(server.keys_seen())
        print(f"2. The checkout process sent key {key}; the charge went through but the answer was lost.")
        print(f"   It kept retrying with the same key ({len(server.requests())} requests so far)...")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        charges = server.charge_count()
        print(f"3. ...and was killed with SIGKILL (exit {child.returncode}). Charges on the server: {charges}.")
        with samekey.Journal() as journal:
            record = journal.get(operation)
        assert record is not None
        print(f"4. The journal still holds {operation!r} as {record.state}, key {record.key}.")
        server.faults = FaultPlan()  # the server recovers
        print("5. The checkout runs again:")
        checkout(order, server.url)
        print(f"6. Keys the server saw: {len(set(server.keys_seen()))}. Charges: {server.charge_count()}.")
        assert server.charge_count() == 1


if __name__ == "__main__":
    main()

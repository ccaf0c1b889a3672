"""stripe-python over samekey: a lost answer, a kill -9, a re-run; one PaymentIntent per order.

Run it with no arguments:  python examples/stripe_sdk.py   (needs: pip install "samekey[stripe]")

A local server (127.0.0.1) answers stripe-python's POST /v1/payment_intents (form-encoded, as
Stripe's API) behind samekey's fault-injecting proxy; nothing goes to the network. A child
process creates the PaymentIntents of orders A and B with a stripe.StripeClient whose HTTP
client is samekey's. The server creates B's intent and the proxy loses the answer, then answers
503 while the child retries with the same key; the child is killed with SIGKILL. The same code
runs again on the same journal: A is answered from the journal, B is sent again with the key
journaled before its first attempt, and the server replays it. stripe-python's own key, made per
call and kept in memory, would have been a new one: a second PaymentIntent.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import stripe

import samekey
from samekey.integrations.stripe import StripeHTTPClient
from samekey.testing import STRIPE, Fault, FaultPlan, FaultProxy, PaymentServer


def create_intents(orders: dict[str, int], api_base: str, journal: str) -> None:
    """A shop's code: one PaymentIntent per order, each request named by samekey.operation()."""
    policy = samekey.RetryPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=1000, deadline=600)
    http = StripeHTTPClient(journal=journal, policy=policy, timeout=2)
    client = stripe.StripeClient(
        "sk_test_demo", http_client=http, base_addresses={"api": api_base}, max_network_retries=0
    )
    try:
        for name, order in orders.items():
            operation = f"order-{order}/payment-intent"
            before = http.client.journal.get(operation)  # only to tell the story below
            with samekey.operation(operation):
                intent = client.v1.payment_intents.create(
                    params={"amount": 4999, "currency": "eur"}
                )
            if before is None:
                how = "created"
            elif not before.pending:
                how = "answered from the journal, nothing sent"
            else:
                how = "sent again with its journaled key: the server replayed it"
            print(f"   order {name}: {intent.id}, key {http.key_for(operation)}, {how}", flush=True)
    finally:
        http.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("FIRST_ORDER", "URL", "JOURNAL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child is not None:  # the process the demo starts, then kills
        first = int(args.child[0])
        create_intents({"A": first, "B": first + 1}, args.child[1], args.child[2])
        return
    first = 1042
    orders = {"A": first, "B": first + 1}
    # A goes through; B is acted on and its answer lost, then 503s while the child retries
    child_faults = FaultPlan([None, Fault.lost_response()] + [Fault.http(503)] * 100_000)
    with (
        tempfile.TemporaryDirectory(prefix="samekey-stripe-demo-") as folder,
        PaymentServer(Path(folder) / "stripe.sqlite3", api=STRIPE) as server,
        FaultProxy(server.url, child_faults) as proxy,
    ):
        journal = str(Path(folder) / "journal.sqlite3")
        print(f"1. A Stripe-like API on {server.url}, behind a fault proxy {proxy.url}.")
        print("2. A process creates the PaymentIntents of orders A and B with stripe-python:")
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(first), proxy.url, journal]
        )
        try:
            deadline = time.monotonic() + 30
            while (
                proxy.counts["status_503"] < 3
                and child.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            if child.poll() is not None or proxy.counts["status_503"] < 3:
                sys.exit(
                    "stripe_sdk.py: the child process did not reach order B (exit "
                    f"{child.poll()}); stopping"
                )
            print(
                f"   order B: created, answer lost; {proxy.counts['status_503']} retries "
                "with its key got 503 ..."
            )
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        with samekey.Journal(journal) as j:
            left = j.get(f"order-{orders['B']}/payment-intent")
        print(f"3. ... and the process was killed with SIGKILL (exit {child.returncode}).")
        print(
            f"   Journal: order B {left.state if left else 'missing'}, key "
            f"{left.key if left else '-'}."
        )
        proxy.faults = FaultPlan([])  # the network is fine again
        print("4. The same code runs again, same journal:")
        create_intents(orders, proxy.url, journal)
        per_key = Counter(charge["key"] for charge in server.charges())
        print(
            f"5. PaymentIntents created on the server: {server.charge_count()}; distinct "
            f"keys: {len(per_key)}."
        )
        assert server.charge_count() == len(orders) and len(per_key) == len(orders)


if __name__ == "__main__":
    main()

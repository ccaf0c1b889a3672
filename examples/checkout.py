"""Checkout through a faulty network: lost responses, a crash, a re-run; one charge per order.

Run it with no arguments:  python examples/checkout.py

A local payment server (127.0.0.1) sits behind samekey's fault-injecting proxy. A
child process checks out three orders. The proxy lets the server charge order B and
then loses the answer, then answers 503 while the child retries with the same key;
the child is killed with SIGKILL. The checkout runs again on the same journal:
order A is answered from the journal, order B's journaled key is sent again and the
server replays its charge, order C's answer is lost once and retried with its key.
The server's books: exactly one charge per order.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import samekey
from samekey.testing import Fault, FaultPlan, FaultProxy, PaymentServer


def checkout(orders: dict[str, int], base_url: str) -> None:
    """A shop's checkout code with samekey (default journal: no journal= needed)."""
    policy = samekey.RetryPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=1000, deadline=600)
    with samekey.Client(base_url=base_url, policy=policy, timeout=2) as client:
        for name, order in orders.items():
            response = client.post(
                "/charges", json={"order": order, "amount": 4999}, operation=f"order-{order}/charge"
            )
            info = samekey.operation_info(response)
            attempts = info.attempts if info else "?"
            if info is not None and info.replayed:
                how = "answered from the journal, nothing sent"
            elif response.headers.get("Idempotent-Replayed"):
                how = (
                    f"the server replayed the charge an earlier attempt made (attempts: {attempts})"
                )
            else:
                how = f"charged (attempts: {attempts})"
            print(
                f"   order {name}: HTTP {response.status_code} {response.json()['id']}, {how}",
                flush=True,
            )


def _stderr_tail(path: Path, lines: int = 15) -> str:
    tail = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (nothing)"


def _died(child: subprocess.Popen[bytes], command: list[str], stderr: Path) -> str:
    """The message for the checkout process ending
    before the demo killed it: how, and its last words."""
    how = f"exit code {child.returncode}"
    if child.returncode < 0:
        with contextlib.suppress(ValueError):
            how += f", killed by {signal.Signals(-child.returncode).name}"
    return (
        f"checkout.py: the checkout process (pid {child.pid}: {shlex.join(command)}) "
        f"died unexpectedly ({how}); the demo stops here. Its stderr ended "
        f"with:\n{_stderr_tail(stderr)}"
    )


def main(argv: list[str] | None = None) -> None:
    # argparse so that --help (or a typo) explains and stops, before any journal is touched
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="It uses the default journal (samekey.default_journal_path(), or $SAMEKEY_JOURNAL).",
    )
    parser.add_argument("--child", nargs=2, metavar=("FIRST_ORDER", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:  # the checkout process the demo starts, then kills
        first = int(args.child[0])
        checkout({"A": first, "B": first + 1, "C": first + 2}, args.child[1])
        return
    first = (
        int(time.time() * 1000) % 10_000_000 * 3
    )  # new orders each run; the journal remembers old ones
    orders = {"A": first, "B": first + 1, "C": first + 2}
    # the child's requests: A goes through, B is charged and its answer lost, then 503s
    child_faults = FaultPlan([None, Fault.lost_response()] + [Fault.http(503)] * 100_000)
    with (
        tempfile.TemporaryDirectory(
            prefix="samekey-demo-"
        ) as folder,  # the server's books, removed at the end
        PaymentServer(Path(folder) / "payments.sqlite3") as server,
        FaultProxy(server.url, child_faults) as proxy,
    ):
        print(f"1. Payment server {server.url}, behind a fault proxy {proxy.url}.")
        print(f"   Journal: {samekey.default_journal_path()}")
        print("2. A checkout process pays orders A, B, C:")
        command = [sys.executable, __file__, "--child", str(first), proxy.url]
        child_stderr = (
            Path(folder) / "checkout-process.stderr"
        )  # for the message if it dies on its own
        with child_stderr.open("wb") as err:
            child = subprocess.Popen(command, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while proxy.counts["status_503"] < 3 and time.monotonic() < deadline:
                if (
                    child.poll() is not None
                ):  # it was to be killed by us, mid-retry: it died on its own
                    sys.exit(_died(child, command, child_stderr))
                time.sleep(0.02)
            if child.poll() is not None:
                sys.exit(_died(child, command, child_stderr))
            print(
                f"   order B: the server charged it, the proxy lost the answer; "
                f"{proxy.counts['status_503']} retries with the same key got 503 ..."
            )
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if (
                child.poll() is None
            ):  # the demo is stopping early (an error, Ctrl-C): leave no process behind
                child.kill()
                child.wait(timeout=10)
        with samekey.Journal() as journal:
            record = journal.get(f"order-{orders['B']}/charge")
        if (
            record is None or record.state != "pending"
        ):  # alive, but stuck before order B (bounded: 20 s)
            sys.exit(
                "checkout.py: the checkout process did not get to order B within 20 s "
                "(the proxy counted "
                f"{dict(proxy.counts)}); the demo stops here. Its stderr ended "
                f"with:\n{_stderr_tail(child_stderr)}"
            )
        print(f"3. ... and the process was killed with SIGKILL (exit {child.returncode}).")
        print(
            f"   Server charges: {server.charge_count()}. Journal: order B "
            f"{record.state}, key {record.key}."
        )
        proxy.faults = FaultPlan(
            [None, Fault.lost_response()]
        )  # B goes through; C's answer is lost once
        print("4. The checkout runs again, same journal, the network still lossy:")
        checkout(orders, proxy.url)
        per_order = Counter(charge["order"] for charge in server.charges())
        counts = " ".join(f"{name}={per_order[order]}" for name, order in orders.items())
        keys = len({charge["key"] for charge in server.charges()})
        print(
            f"5. Charges per order on the server: {counts}; distinct keys: {keys}; lost "
            "answers: 2; crashes: 1."
        )
        assert (
            all(per_order[order] == 1 for order in orders.values()) and server.charge_count() == 3
        )


if __name__ == "__main__":
    main()

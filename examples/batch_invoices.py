"""Pay a CSV of invoices, safely re-runnable after a crash.

    python examples/batch_invoices.py --crash-after 0.5 # sample CSV, local server: dies (SIGKILL)
    half-way python examples/batch_invoices.py                   # the re-run: pays only what is
    left samekey list --journal /tmp/samekey-batch-invoices/journal.sqlite3

Each invoice is one operation ("invoice-<id>/charge"): its Idempotency-Key is
journaled before the first send, so a re-run replays the invoices already paid
(from the journal, nothing sent), finishes the ones that were in flight with their
own keys (the server answers those by replay if it had already charged; a local
server killed with this process before its charge committed executes them then),
and pays the rest. No invoice is charged twice.

Without --server it starts samekey.testing.PaymentServer on 127.0.0.1, keeping its
charges in the state directory and its port in ``server-port`` so every run talks
to the same server. CSV columns: invoice_id, customer, amount_cents.
"""

from __future__ import annotations

import argparse
import csv
import errno
import os
import signal
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import samekey
from samekey.testing import PaymentServer


def write_sample(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["invoice_id", "customer", "amount_cents"])
        for n in range(1, count + 1):
            writer.writerow([f"{n:04d}", f"cus_{n % 7:03d}", 1000 + 37 * n])


def read_invoices(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class PortInUse(Exception):
    """The local server's port (kept in
    <state>/server-port) is taken: the message says what to do."""


def start_server(state: Path, work_seconds: float) -> PaymentServer:
    port_file = state / "server-port"
    port = int(port_file.read_text()) if port_file.exists() else 0
    try:
        server = PaymentServer(
            state / "server.sqlite3", work_seconds=work_seconds, port=port
        ).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # The port cannot just change: this state's journal names it in every URL (a pending invoice
        # sent to another port is another request), so say who may hold it and how to get past it.
        raise PortInUse(
            f"batch_invoices.py: port {port} on 127.0.0.1 is already in use, and the "
            "local payment server of "
            f"{state} must listen there (its journal names it): another run on this "
            "state folder may still be "
            f"going (let it finish or stop it), or something else listens there (see `ss -ltnp "
            f"'sport = :{port}'`); or start afresh with another state folder, e.g. "
            f"--state {state}-2"
        ) from None
    port_file.write_text(str(server.port))  # the journal's URLs name this port: keep it for re-runs
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--csv", type=Path, help="invoices to pay (default: a sample written to the state dir)"
    )
    parser.add_argument(
        "--state", type=Path, default=Path(tempfile.gettempdir()) / "samekey-batch-invoices"
    )
    parser.add_argument("--journal", type=Path, help="default: <state>/journal.sqlite3")
    parser.add_argument(
        "--server", help="payment API base URL (default: start a local PaymentServer)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sample-size", type=int, default=20)
    parser.add_argument(
        "--work-seconds", type=float, default=0.05, help="local server: time per charge"
    )
    parser.add_argument(
        "--crash-after", type=float, metavar="SECONDS", help="SIGKILL this process after SECONDS"
    )
    args = parser.parse_args(argv)

    args.state.mkdir(parents=True, exist_ok=True)
    csv_path = args.csv or args.state / "invoices.csv"
    if not csv_path.exists():
        write_sample(csv_path, args.sample_size)
        print(f"wrote {args.sample_size} sample invoices to {csv_path}")
    invoices = read_invoices(csv_path)
    try:
        server = None if args.server else start_server(args.state, args.work_seconds)
    except PortInUse as exc:
        print(exc, file=sys.stderr)
        return 2
    base_url = args.server or server.url  # type: ignore[union-attr]
    crash = None
    if args.crash_after is not None:
        crash = threading.Timer(args.crash_after, os.kill, (os.getpid(), signal.SIGKILL))
        crash.daemon = True
        crash.start()

    counts = {"paid": 0, "already": 0, "failed": 0}
    lock = threading.Lock()
    journal = args.journal or args.state / "journal.sqlite3"
    with samekey.Client(journal=journal, timeout=10.0) as client:

        def pay(invoice: dict[str, str]) -> None:
            operation = f"invoice-{invoice['invoice_id']}/charge"
            body = {"invoice": invoice["invoice_id"], "customer": invoice["customer"]}
            body["amount"] = int(invoice["amount_cents"])  # type: ignore[assignment]
            try:
                response = client.post(f"{base_url}/charges", operation=operation, json=body)
                response.raise_for_status()
            except Exception as exc:  # report and go on: the operation stays pending with its key
                with lock:
                    counts["failed"] += 1
                    print(f"FAILED {operation}: {exc}", flush=True)
                return
            info = samekey.operation_info(response)
            # paid earlier: completed in the journal (nothing sent), or in flight when a run was
            # killed and now sent again with its key, which the server answers with its replay
            replayed = info is not None and info.replayed
            # (Stripe's header; a journal replay carries it too when the stored answer was one)
            server_replayed = not replayed and response.headers.get("Idempotent-Replayed") == "true"
            already = replayed or server_replayed
            with lock:
                counts["already" if already else "paid"] += 1
                verb = "already paid" if already else "paid"
                how = " (the server's replay)" if server_replayed else ""
                key = info.key if info else None
                print(f"{verb} {operation} {response.json()['id']} key={key}{how}", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
            list(pool.map(pay, invoices))
    if crash is not None:
        crash.cancel()  # the run is over: a crash "after SECONDS" can no longer happen during it

    if server is not None:
        server.stop()
    print(
        f"done: {counts['paid']} paid now, {counts['already']} already paid earlier, "
        f"{counts['failed']} failed"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

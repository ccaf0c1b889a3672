"""Run a PaymentServer in its own process: ``python -m samekey.testing --db charges.sqlite3``.

Prints ``http://127.0.0.1:PORT`` on the first line of stdout once it accepts
connections, then serves until stdin is closed or the process is terminated.
"""

from __future__ import annotations

import argparse
import sys

from ._server import PaymentServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m samekey.testing", description=__doc__)
    parser.add_argument("--db", required=True, help="SQLite file for charges and the request log")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--work-seconds", type=float, default=0.0, help="time each new charge takes"
    )
    args = parser.parse_args()
    with PaymentServer(args.db, port=args.port, work_seconds=args.work_seconds) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or kills us)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The long soak: N charges through a faulty network by worker processes that get SIGKILLed.

    python scripts/soak.py                      # N=10,000, 30% faults, 4 workers, seed 1
    python scripts/soak.py --n 2000 --fault-rate 0.5 --workers 2 --seed 7

Prints the figures (operations, faults injected by kind, kills, duplicate and lost
charges, distinct keys, wall time) and exits 1 if any exactly-once invariant broke.
The same harness runs with N=300 in tests/test_soak.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "src")
)  # run from a checkout without installing

from samekey.testing._soak import run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=10_000, help="operations (charges) to make (default 10,000)"
    )
    parser.add_argument(
        "--fault-rate", type=float, default=0.3, help="share of requests hit by a fault (0.3)"
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed for faults and kill moments (default 1)"
    )
    parser.add_argument(
        "--kills", type=int, default=None, help="SIGKILLs in all (default n // 20, at least 3)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, help="give up after this many seconds"
    )
    args = parser.parse_args()
    print(
        f"soak: {args.n} operations, {args.fault_rate:.0%} faults, {args.workers} "
        f"workers, seed {args.seed}",
        flush=True,
    )
    report = run_soak(
        args.n,
        fault_rate=args.fault_rate,
        workers=args.workers,
        seed=args.seed,
        kills=args.kills,
        time_limit=args.time_limit,
        progress=lambda line: print("  ..", line, flush=True),
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark, print each target of issue 22 with its verdict, write the results.

pip install -e ".[bench]"
python -m benchmarks            # the full run (about 10 minutes on 2 cores)
python -m benchmarks --quick    # a fast pass (under a minute)

Writes benchmarks/results/results.json (every number, machine-readable), then from it
latest.md (the tables the docs show), latency.png (the chart) and hot_path_profile.md
(where samekey's own µs go). Every verdict is computed from the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    async_throughput,
    checkpoints,
    essentials,
    journal_scale,
    profile,
    profile_async,
    resume,
    sequential,
    shared_journal,
)
from ._common import RESULTS, Target, load, machine, stamp, target_from, write_json
from ._render import targets_table, write_all

# how much each benchmark does: (full, quick, smoke); smoke only checks that it all runs
SIZES: dict[str, tuple[Any, Any, Any]] = {
    "sequential": (2000, 200, 20),
    "checkpoints": (8000, 1500, 100),
    "shared": (3000, 300, 40),
    "async": (10_000, 300, 100),
    "resume": (10_000, 1000, 50),
    "scale": ((1000, 100_000, 1_000_000), (1000, 20_000), (1000,)),
    "profile": (6000, 600, 200),
    "profile_async": (20_000, 2000, 300),
    "essentials": ((30, 500), (4, 300), (2, 100)),  # (rounds, operations per round)
}
MODES = ("full", "quick", "smoke")


def measure(mode: str, folder: str | None) -> dict[str, Any]:
    size = {name: sizes[MODES.index(mode)] for name, sizes in SIZES.items()}
    smoke = mode == "smoke"
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "sequential": lambda: sequential.run(
            size["sequential"], warmup=5 if smoke else 50, folder=folder
        ),
        "checkpoints": lambda: checkpoints.run(size["checkpoints"], folder=folder),
        "shared": lambda: shared_journal.run(
            2, size["shared"], rounds={"full": 6, "quick": 3, "smoke": 2}[mode], folder=folder
        ),
        "async": lambda: async_throughput.run(size["async"], 20 if smoke else 100, folder=folder),
        "resume": lambda: resume.run(size["resume"], folder=folder),
        "scale": lambda: journal_scale.run(size["scale"], folder=folder),
        "profile": lambda: profile.run(size["profile"]),
        "profile_async": lambda: profile_async.run(size["profile_async"]),
        "essentials": lambda: essentials.run(*size["essentials"]),
    }
    sections = {}
    for name, step in steps.items():
        started = time.monotonic()
        sections[name] = step()
        print(f"  ({name}: {time.monotonic() - started:.0f} s)", flush=True)
    return sections


def _order(t: Target) -> int:
    """By the issue's numbering (1, 1b, 2, 3a...), then the others; a stable sort keeps the rest."""
    return int(t.id[0]) if t.id[0].isdigit() else 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer requests, journals up to 20k records"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few requests each: checks that everything runs"
    )
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    parser.add_argument(
        "--out", default=str(RESULTS), help="folder for the results (default: %(default)s)"
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md and .png from results.json"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        data = json.loads((out / "results.json").read_text())
    else:
        mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        data = {"when": stamp(), "machine": machine(), "mode": mode, "load_before": load()}
        print(
            f"samekey benchmarks, {data['when']}, {data['machine']}, {data['load_before']} ({mode})"
        )
        sections = measure(mode, args.dir)
        targets = sorted(
            (target_from(t) for s in sections.values() for t in s.get("targets", [])), key=_order
        )
        data.update(load_after=load(), sections=sections, targets=[t.as_dict() for t in targets])
        write_json(out / "results.json", data)
    print(f"\nTargets ({data['load_before']} at the start, {data['load_after']} at the end)\n")
    print(targets_table(data))
    written = write_all(data, out)
    print("\nwrote " + ", ".join(str(p) for p in [out / "results.json", *written]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

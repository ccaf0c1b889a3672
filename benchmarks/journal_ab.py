"""Two samekey source trees side by side in one process: the SQLite journal's own cost, A/B.

For a refactoring of the store: the same journal calls go through both trees in alternating
blocks (a new random order each round), so machine noise hits them alike. ``--cpu`` times
with this process's CPU clock instead of the wall clock: on a loaded machine that leaves out
the time spent waiting for a core (and, in "fsync" mode, most of the disk's).

    git archive <commit> src | tar -x -C /tmp/before
    python -m benchmarks.journal_ab /tmp/before/src src [--blocks 40] [--cpu]

Two workloads per durability: one caller's claim + complete (the sequential client's journal
work), and run_batch of 100 claims then 100 completions (what the async clients' journal
thread does). Prints the median per operation for each tree and their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

BLOCK = 50  # operations per block of the sequential workload
BATCH = 100  # calls per run_batch


def _load(name: str, src: str) -> ModuleType:
    """The samekey package under ``src``, imported as ``name`` (its modules import relatively)."""
    init = os.path.join(src, "samekey", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[os.path.dirname(init)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _contract(tree: ModuleType) -> Any:
    return sys.modules[tree.__name__ + "._contract"]


def _intent(tree: ModuleType, operation: str) -> Any:
    return _contract(tree).Intent(
        operation, f"k-{operation}", "Idempotency-Key", "POST", "http://x/", "fp", (), b"{}"
    )


def _sequential(tree: ModuleType, journal: Any, first: int, clock: Callable[[], float]) -> float:
    started = clock()
    for i in range(first, first + BLOCK):
        journal.claim(_intent(tree, f"s-{i}"), "me", 60.0, 1000.0)
        journal.complete(f"s-{i}", "me", 1, 201, [], b"{}", 1001.0)
    return (clock() - started) / BLOCK


def _batched(tree: ModuleType, journal: Any, first: int, clock: Callable[[], float]) -> float:
    contract = _contract(tree)
    names = [f"b-{first}-{i}" for i in range(BATCH)]
    started = clock()
    journal.run_batch([contract.Claim(_intent(tree, name), "me", 60.0, 1000.0) for name in names])
    journal.run_batch([contract.Complete(name, "me", 1, 201, [], b"{}", 1001.0) for name in names])
    return (clock() - started) / BATCH


def run(before: str, after: str, blocks: int, clock: Callable[[], float]) -> None:
    trees = {"before": _load("samekey_before", before), "after": _load("samekey_after", after)}
    folder = tempfile.mkdtemp(prefix="samekey-ab-")
    workloads = (
        ("claim + complete, one caller", _sequential),
        ("run_batch of 100 (async path)", _batched),
    )
    for durability in ("process", "fsync"):
        journals = {
            k: tree.Journal(
                os.path.join(folder, f"{k}-{durability}.sqlite3"), durability=durability
            )
            for k, tree in trees.items()
        }
        for w, (title, workload) in enumerate(workloads):
            times: dict[str, list[float]] = {k: [] for k in trees}
            for b in range(blocks):
                order = list(trees)
                random.shuffle(order)
                for k in order:
                    times[k].append(
                        workload(trees[k], journals[k], (w * blocks + b) * BLOCK * BATCH, clock)
                    )
            before_us, after_us = (statistics.median(times[k]) * 1e6 for k in ("before", "after"))
            print(
                f"{durability:8s} {title:31s} before {before_us:8.1f} µs/op   after "
                f"{after_us:8.1f} µs/op   "
                f"after/before {after_us / before_us:.3f}"
            )
        for journal in journals.values():
            journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the src folder of the tree to compare against")
    parser.add_argument("after", help="the src folder of the tree under test")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--cpu", action="store_true", help="time with the process CPU clock")
    args = parser.parse_args()
    run(args.before, args.after, args.blocks, time.process_time if args.cpu else time.perf_counter)


if __name__ == "__main__":
    main()

"""What samekey's own work costs the event loop, counted in instructions rather than timed.

Timings here move by 5% between runs minutes apart, and each cut worth making to samekey's
hot path is worth about 1%: a timed A/B cannot see it. valgrind counts the instructions the
event loop's thread runs (user space, that thread alone), and the count repeats within about
0.3% (the journal thread's batches vary a little). The cyclic collector is off, so that its
timing does not move the count; its own share is measured by ``loop_budget --no-gc``.

Over a transport answering at once, 100 tasks, each variant is counted for two run lengths;
the difference over the operations between them is the cost of one operation:

- bare httpx.AsyncClient;
- samekey's own work taken one step at a time (`essentials.StraightLine`): samekey.AsyncClient
  passing the request through, then + the plan, + the claim on the journal thread, + the key
  header, + the buffered answer, + the answer queued, + the OperationInfo;
- samekey.AsyncClient: what is left over the last step is the flow around that work.

``--against OTHER/src`` counts another tree the same way, side by side (git archive <commit> src
| tar -x -C /tmp/before). Needs valgrind; about 6 minutes on 2 cores, half with --quick.

    python -m benchmarks.instructions [--against /tmp/before/src] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from ._common import report
from .async_throughput import BODY, InstantTransport
from .essentials import ANSWER, BUFFER, CLAIM, CLIENT, INFO, KEY_HEADER, PLAN, _straight
from .loop_budget import _drive

BARE, SAMEKEY = "bare httpx.AsyncClient", "samekey.AsyncClient"
STEPS = {
    "samekey.AsyncClient, the request passed through": CLIENT,
    "+ the plan (key, fingerprint, redacted headers)": PLAN,
    "+ the claim, on the journal thread": CLAIM,
    "+ the key header": KEY_HEADER,
    "+ the answer buffered": BUFFER,
    "+ the answer queued for the journal": ANSWER,
    "+ the OperationInfo (the straight line)": INFO,
}
QUICK = (BARE, "+ the OperationInfo (the straight line)", SAMEKEY)
WARM_UP = 300
ROOT = Path(__file__).resolve().parent.parent


def _client(variant: str, folder: str) -> tuple[httpx.AsyncClient, bool]:
    """(the client of ``variant``, whether it takes an operation name)."""
    import samekey

    if variant == BARE:
        return httpx.AsyncClient(transport=InstantTransport()), False
    journal = samekey.Journal(os.path.join(folder, "journal.sqlite3"), durability="process")
    if variant == SAMEKEY:
        return samekey.AsyncClient(transport=InstantTransport(), journal=journal), True
    return _straight(InstantTransport, journal, plan=True, upto=STEPS[variant]), True


async def _send(variant: str, operations: int) -> None:
    with tempfile.TemporaryDirectory(prefix="samekey-instructions-") as folder:
        client, keyed = _client(variant, folder)
        sent = [0]

        async def post() -> None:
            sent[0] += 1
            if keyed:
                await client.post("http://x/", json=BODY, operation=f"op-{sent[0]}")
            else:
                await client.post("http://x/", json=BODY)

        await _drive(post, WARM_UP)
        await _drive(post, operations)
        await client.aclose()


def _count(variant: str, operations: int, src: str) -> int:
    """The instructions the main thread ran in a whole child process sending ``operations``."""
    with tempfile.TemporaryDirectory(prefix="samekey-callgrind-") as folder:
        out = os.path.join(folder, "callgrind.out")
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join([src, str(ROOT)])}
        command = [
            "valgrind", "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.instructions",
            "--child", variant, str(operations),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{variant}: the child failed:\n{done.stderr[-2000:]}")
        return _summary(Path(out + "-01").read_text())


def _summary(callgrind_out: str) -> int:
    for line in callgrind_out.splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError("no summary line in callgrind's output")


def _per_operation(variant: str, src: str, operations: int) -> float:
    shorter, longer = _count(variant, operations // 4, src), _count(variant, operations, src)
    return (longer - shorter) / (operations - operations // 4)


def run(against: str | None = None, quick: bool = False, operations: int = 1200) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("benchmarks.instructions needs valgrind (apt install valgrind)")
    variants = QUICK if quick else (BARE, *STEPS, SAMEKEY)
    trees = {"this tree": str(ROOT / "src")}
    if against is not None:
        trees = {"against": against, **trees}
    jobs = [(v, src) for v in variants for src in trees.values()]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        found = pool.map(lambda job: _per_operation(*job, operations), jobs)
        counts = dict(zip(jobs, found, strict=True))
    return _table(variants, trees, counts, operations)


def _table(variants: tuple[str, ...], trees: dict[str, str],
           counts: dict[tuple[str, str], float], operations: int) -> dict[str, Any]:  # fmt: skip
    rows, last = [], dict.fromkeys(trees.values(), 0.0)
    for v in variants:
        row = [v]
        for src in trees.values():
            found = counts[(v, src)]
            added = "" if v == BARE else f" ({found - last[src]:+,.0f})"
            row.append(f"{found:,.0f}{added}")
            last[src] = found
        if len(trees) == 2:
            before, after = (counts[(v, src)] for src in trees.values())
            row.append(f"{after / before:.3f}")
        rows.append(row)
    headers = ["variant", *(f"{name}: per operation (this step)" for name in trees)]
    if len(trees) == 2:
        headers.append("this tree / against")
    title = (
        "Instructions the event loop's thread runs per async operation (valgrind, collector off, "
        f"a transport answering at once, 100 tasks, {operations - operations // 4} operations)"
    )
    return report(title, headers, rows, [f"{name}: {src}" for name, src in trees.items()])


def _main_child(variant: str, operations: int) -> None:
    asyncio.run(_send(variant, operations))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", help="the src folder of another tree, counted beside")
    parser.add_argument("--quick", action="store_true", help="bare, straight line, samekey only")
    parser.add_argument("--operations", type=int, default=1200)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # one counted process
    args = parser.parse_args(argv)
    if args.child:
        gc.disable()  # its timing would move the count; loop_budget --no-gc shows its share
        _main_child(args.child[0], int(args.child[1]))
        return
    run(args.against, args.quick, args.operations)


if __name__ == "__main__":
    main()

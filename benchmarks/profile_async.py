"""Where an async operation's CPU goes, at concurrency 100, over a transport answering at once.

Target 3 is throughput: on a fast transport (httpx-aiohttp) samekey must keep 0.8x of bare
httpx, so what counts is the CPU each operation costs the event loop's thread, and what the
journal thread (`_transport._JournalThread`) costs beside it. A child process runs the
operations, bare httpx.AsyncClient or samekey.AsyncClient (durability process), while py-spy
samples its threads; each variant runs in a process of its own, so every sample of it
belongs to it. The µs per operation come from the same workload run without py-spy.

    python -m benchmarks.profile_async [--operations 20000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ._common import table
from .profile import BUCKETS, OWN, WAITING, WAITS, _bucket, _frames, _line, _name, _py_spy

RATE = 1000
CONCURRENCY = 100
WORKLOAD = """
import asyncio, sys, time, uuid, httpx, samekey
CONCURRENCY = int(sys.argv[5])
variant, journal_path, operations, timings = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
run = uuid.uuid4().hex[:8]

class Instant(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request):  # once through the loop: 100 in flight
        await asyncio.sleep(0)
        await request.aread()
        return httpx.Response(201, json={"id": "ch_1", "status": "succeeded"}, request=request)

async def operations_of(client, start, end, keyed):
    todo = iter(range(start, end))
    async def worker():
        for i in todo:
            if keyed:
                await client.post("https://pay.test/v1/charges", json=body, \
operation=f"order-{run}-{i}")
            else:
                await client.post("https://pay.test/v1/charges", json=body)
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

async def main():
    if variant == "bare":
        client = httpx.AsyncClient(transport=Instant())
    else:
        journal = samekey.Journal(journal_path, durability="process")
        client = samekey.AsyncClient(journal=journal, transport=Instant())
    async with client:  # timed from the first operation: the samples of the import are dropped
        started = time.perf_counter()
        await operations_of(client, 0, operations, variant != "bare")
        seconds = time.perf_counter() - started
    with open(timings, "w") as out:
        out.write(str(seconds))

asyncio.run(main())
"""

LOOP, JOURNAL = "event loop thread", "journal thread"


def _thread(frames: list[tuple[str, str, int]]) -> str | None:
    if any(function.endswith("JournalThread._serve") for function, _, _ in frames):
        return JOURNAL
    if frames and frames[0][0] == "<module>":
        return LOOP
    return None  # another thread (a checkpoint, anyio's workers)


def _run(variant: str, folder: str, operations: int, spy: list[str] | None) -> float:
    timings = os.path.join(folder, f"{variant}-seconds.txt")
    journal = os.path.join(folder, f"journal-{variant}-{bool(spy)}.sqlite3")
    command = [
        *(spy or []),
        sys.executable,
        "-c",
        WORKLOAD,
        variant,
        journal,
        str(operations),
        timings,
    ]
    command.append(str(CONCURRENCY))
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(
            f"the async workload failed (py-spy needs permission to trace):\n{done.stderr}"
        )
    return float(Path(timings).read_text())


def profile(operations: int) -> dict[str, Any]:
    """Per variant: µs per operation by (thread, bucket), and samekey's own functions per thread."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="samekey-profile-async-") as folder:
        for variant in ("bare", "samekey"):
            raw = os.path.join(folder, f"{variant}.txt")
            spy = [
                _py_spy(),
                "record",
                "--idle",
                "--full-filenames",
                "--format",
                "raw",
                "--rate",
                str(RATE),
            ]
            spy += ["--output", raw, "--"]
            _run(variant, folder, operations, spy)
            seconds = _run(variant, folder, operations, None)
            buckets: Counter[tuple[str, str]] = Counter()
            functions: dict[str, Counter[str]] = {LOOP: Counter(), JOURNAL: Counter()}
            lines: Counter[str] = Counter()
            for row in Path(raw).read_text().splitlines():
                stack, _, count = row.rpartition(" ")
                frames = _frames(stack)
                thread = _thread(frames)
                if thread is None or "importlib" in stack:  # another thread, or the imports
                    continue
                bucket = _bucket(frames)
                buckets[thread, bucket] += int(count)
                mine = [f for f in frames if "samekey" + os.sep in f[1]]
                if bucket == OWN and mine:
                    functions[thread][_name(mine[-1])] += int(count)
                    if thread == LOOP:
                        lines[_line(mine[-1])] += int(count)
            loop_samples = sum(c for (thread, _), c in buckets.items() if thread == LOOP) or 1
            per_op = seconds / operations * 1e6 / loop_samples  # µs per op of one sample
            out[variant] = {
                "us_per_op": seconds / operations * 1e6,
                "buckets": {f"{t}|{b}": c * per_op for (t, b), c in buckets.items()},
                "functions": {
                    t: [[f"{c * per_op:.1f}", n] for n, c in f.most_common(15)]
                    for t, f in functions.items()
                },
                "lines": [[f"{c * per_op:.1f}", n[:100]] for n, c in lines.most_common(12)],
            }
    return out


def markdown(data: dict[str, Any], operations: int) -> str:
    bare, sk = data["bare"], data["samekey"]
    rows = []
    groups = {"idle (select, lock and queue waits)": (WAITING, WAITS)}
    groups.update((bucket, (bucket,)) for bucket in BUCKETS if bucket not in (WAITING, WAITS))
    for thread in (LOOP, JOURNAL):
        for label, buckets in groups.items():
            b, s = (
                sum(v["buckets"].get(f"{thread}|{x}", 0.0) for x in buckets) for v in (bare, sk)
            )
            if b >= 0.05 or s >= 0.05:
                rows.append([thread, label, f"{b:.1f}", f"{s:.1f}"])
    rows.append(["wall", "per operation", f"{bare['us_per_op']:.1f}", f"{sk['us_per_op']:.1f}"])
    parts = [
        f"**Async: {operations} operations at concurrency {CONCURRENCY} over a transport "
        "answering at once, "
        f"py-spy at {RATE}/s** (µs per operation, from a run without py-spy; samekey "
        "durability process)",
        "",
        table(["thread", "where", "bare httpx.AsyncClient", "samekey.AsyncClient"], rows),
        "",
    ]
    for thread in (LOOP, JOURNAL):
        parts += [f"**samekey's own Python on the {thread}, by function** (µs per operation)", ""]
        parts += [table(["µs", "function"], sk["functions"][thread]), ""]
    parts += ["**samekey's own Python on the event loop thread, the costliest lines**", ""]
    parts += [table(["µs", "line"], sk["lines"]), ""]
    return "\n".join(parts)


def run(operations: int) -> dict[str, Any]:
    try:
        data = profile(operations)
    except SystemExit as exc:
        return {"operations": operations, "skipped": str(exc)}
    text = markdown(data, operations)
    print("\n" + text)
    return {"operations": operations, "data": data, "markdown": text}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--operations", type=int, default=20_000)
    run(parser.parse_args().operations)


if __name__ == "__main__":
    main()

"""What samekey's OpenTelemetry instrumentation costs a call when the application set no provider.

samekey reports to OpenTelemetry whenever opentelemetry-api is installed; without a
TracerProvider or MeterProvider the API's no-op spans and instruments do nothing. This
measures that cost on the hot path, against httpx.MockTransport (no network), side by side
in one run: the same calls with the instrumentation off (what a process without
opentelemetry-api runs: the flow is not even wrapped) and on with no provider, in blocks
taking turns in a random order, so that drift hits every variant alike. A block is timed in
this process's CPU time: other processes on a shared machine do not count (no network, and
the journal in durability "process" does not wait for its disk).

    python -m benchmarks.otel_overhead [--calls 3000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

import samekey
from samekey import instrumentation
from samekey._events import observed

from ._common import median

BLOCK = 100  # calls per variant per turn


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"id": "ch_1"})


def _variants(folder: Path) -> dict[str, tuple[Callable[[int], object], bool]]:
    """name -> (one call, whether samekey's OpenTelemetry instrumentation is on for it)."""
    keyed = samekey.Client(journal=samekey.Journal(folder / "j.sqlite3", durability="process"),
                           transport=httpx.MockTransport(_answer))  # fmt: skip
    unkeyed = samekey.Client(journal=folder / "u.sqlite3", transport=httpx.MockTransport(_answer))

    def post(n: int) -> object:
        operation = f"op-{n}-{random.random()}"  # a new one each time: claim, send, complete
        return keyed.post("https://pay.test/charges", json={"n": n}, operation=operation)

    def get(n: int) -> object:
        return unkeyed.get("https://pay.test/charges/ch_1")

    return {
        "keyed POST, off (A/A: the noise)": (post, False),
        "keyed POST, instrumentation off": (post, False),
        "keyed POST, on, no provider": (post, True),
        "unkeyed GET, instrumentation off": (get, False),
        "unkeyed GET, on, no provider": (get, True),
    }


def run(calls: int) -> dict[str, float]:
    """The CPU µs per call of each variant: the median over its blocks of a block's mean."""
    if not instrumentation.opentelemetry_enabled():
        raise SystemExit("opentelemetry-api is not installed: pip install opentelemetry-api")
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        variants = _variants(Path(folder))
        for name, (call, on) in variants.items():  # warm up: the first call imports, opens, purges
            instrumentation.set_opentelemetry(on)
            call(0)
            samples[name] = []
        for turn in range(calls // BLOCK):
            for name in random.sample(list(variants), len(variants)):
                call, on = variants[name]
                instrumentation.set_opentelemetry(on)
                started = time.process_time()
                for n in range(BLOCK):
                    call(turn * BLOCK + n)
                samples[name].append((time.process_time() - started) / BLOCK)
    instrumentation.set_opentelemetry(True)
    return {name: median(values) * 1e6 for name, values in samples.items()}


def added_work(folder: Path) -> float:
    """µs of the work the instrumentation adds to a call with no provider: `observed`, alone."""
    engine = samekey.Client(journal=folder / "timeit.sqlite3").engine
    request = httpx.Request("POST", "https://pay.test/charges")
    flow: Any = iter(())  # stands for the flow: observed returns it as it is when nothing listens
    timings = []
    for on in (False, True) * 5:
        instrumentation.set_opentelemetry(on)
        seconds = timeit.timeit(lambda: observed(engine, request, flow), number=100_000)
        timings.append((on, seconds * 10))  # µs per call
    instrumentation.set_opentelemetry(True)
    return min(t for on, t in timings if on) - min(t for on, t in timings if not on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per variant (default 3000)")
    args = parser.parse_args()
    results = run(args.calls)
    for name, micros in results.items():
        print(f"{name:<36} {micros:8.1f} µs of CPU per call (median)")
    noise = results["keyed POST, off (A/A: the noise)"] - results["keyed POST, instrumentation off"]
    for kind in ("keyed POST", "unkeyed GET"):
        added = results[f"{kind}, on, no provider"] - results[f"{kind}, instrumentation off"]
        print(f"{kind}: OpenTelemetry on with no provider adds {added:+.1f} µs per call")
    print(f"the noise: two identical variants differ by {noise:+.1f} µs per call")
    with tempfile.TemporaryDirectory() as folder:
        print(f"the added work alone (timeit): {added_work(Path(folder)):.2f} µs per call")


if __name__ == "__main__":
    main()

"""Where a samekey request's time goes, sampled by py-spy next to bare httpx.

A child process sends sequential POSTs to the loopback server (its own process), first
with bare httpx then with samekey ("process" durability), while py-spy samples its stacks
from the outside, without pausing it (``--nonblocking``): no profiler code runs in the
measured process, so Python-heavy code is not inflated the way an in-process profiler
(cProfile, pyinstrument) inflates it. Each sample of the sending thread goes in one bucket,
by the innermost frame of samekey or of the HTTP client (stdlib helpers count for the
library that called them) and the source line it is on:

    waiting for the server   a socket read/write (the network, the server's work)
    SQLite statements        a samekey line running sqlite3 (execute, commit)
    samekey waits            a samekey line sleeping or waiting on a lock or thread
    samekey's own Python     any other time under samekey's code
    httpx, httpcore, h11     the HTTP client itself (bare httpx pays it too)
    other                    the rest (the benchmark's loop, the interpreter)

A bucket's share of a variant's samples times that variant's measured mean latency is its
µs per request. samekey's own Python is then split by function (self time, with the stdlib
helpers it calls) and by the samekey functions on the stack (inclusive of the SQLite they
run), and its costliest lines follow. Needs py-spy (the bench extra) and permission to trace
a child process. Written to results/hot_path_profile.md by ``python -m benchmarks``.

    python -m benchmarks.profile [--requests 8000]
"""

from __future__ import annotations

import argparse
import linecache
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import Target, machine, report, server, stamp, table

RATES = {False: 400, True: 1000}  # samples per second (loopback, instant): each pauses the process
WAITING, SQLITE, WAITS, OWN, HTTP, OTHER = BUCKETS = (
    "waiting for the server",
    "SQLite statements",
    "samekey waits",
    "samekey's own Python",
    "httpx, httpcore, h11",
    "other",
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):(?P<line>\d+)\)$")
_SOCKET = re.compile(r"\.(recv|recv_into|send|sendall|select|poll)\(")
_SQL = re.compile(r"\.(execute|executemany|executescript|commit)\(|COMMIT|_sync_data\(")
_WAIT = re.compile(r"\.(wait|acquire|sleep|join)\(|with self\._\w*lock")
_SAMEKEY = f"{os.sep}samekey{os.sep}"
_HTTP = tuple(f"{os.sep}{lib}{os.sep}" for lib in ("httpx", "httpcore", "h11"))

WORKLOAD = """
import statistics, sys, time, uuid, httpx, samekey
url, journal_path, requests, timings = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
run = uuid.uuid4().hex[:8]

class Instant(httpx.BaseTransport):
    def handle_request(self, request):
        request.read()
        return httpx.Response(201, json={"id": "ch_1", "status": "succeeded"}, request=request)

def bare_requests(client, took):
    for i in range(requests):
        t0 = time.perf_counter()
        client.post(url, json=body)
        took.append(time.perf_counter() - t0)

def samekey_requests(client, took):
    for i in range(requests):
        t0 = time.perf_counter()
        client.post(url, json=body, operation=f"order-{run}-{i}/charge")
        took.append(time.perf_counter() - t0)

def make(**kwargs):
    if url.startswith("instant"):
        return {"transport": Instant(), **kwargs}
    return kwargs

journal = samekey.Journal(journal_path, durability="process")
with httpx.Client(**make()) as bare, samekey.Client(**make(journal=journal)) as sk:
    for i in range(300):  # warm both: connections open, caches filled
        bare.post(url, json=body)
        sk.post(url, json=body, operation=f"warm-{run}-{i}")
    time.sleep(0.2)
    bare_took, samekey_took = [], []
    cpu = time.thread_time()
    bare_requests(bare, bare_took)
    middle = time.thread_time()
    samekey_requests(sk, samekey_took)
    with open(timings, "w") as out:  # py-spy writes on stdout too
        print(sum(bare_took), sum(samekey_took), file=out)
        print(statistics.median(bare_took), statistics.median(samekey_took), file=out)
        print(middle - cpu, time.thread_time() - middle, file=out)
"""

Frame = tuple[str, str, int]


@dataclass
class Samples:
    """Sample counts of one variant: by bucket, and (samekey only) by function and line."""

    seconds: float = 0.0  # wall time of the requests (for instant: the median request's x requests)
    cpu: float = 0.0  # the sending thread's CPU time over the requests (0: not measured)
    buckets: Counter[str] = field(default_factory=Counter)
    own_functions: Counter[str] = field(default_factory=Counter)  # innermost samekey function
    inclusive: Counter[str] = field(default_factory=Counter)  # every samekey function on the stack
    own_lines: Counter[str] = field(default_factory=Counter)
    http_callers: Counter[str] = field(
        default_factory=Counter
    )  # the samekey line under httpx's time

    def us(self, count: int, requests: int, wait: bool = False) -> float:
        """µs per request of ``count`` samples: their share of the CPU samples times the CPU time
        when it was measured (another process preempting this one then costs nothing), else
        (and for waits) their share of all samples times the wall time."""
        if self.cpu and not wait:
            busy = self.buckets.total() - self.buckets[WAITING] - self.buckets[WAITS]
            return count / max(1, busy) * self.cpu / requests * 1e6
        return count / max(1, self.buckets.total()) * self.seconds / requests * 1e6


def _frames(stack: str) -> list[Frame]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        if match:
            frames.append((match["function"], match["path"], int(match["line"])))
    return frames


def _owner(frames: list[Frame]) -> Frame | None:
    """The innermost frame of samekey or of the HTTP client: the library a sample is spent for."""
    for frame in reversed(frames):
        if _SAMEKEY in frame[1] or any(lib in frame[1] for lib in _HTTP):
            return frame
    return None


def _bucket(frames: list[Frame]) -> str:
    _, path, line = frames[-1]
    if _SOCKET.search(linecache.getline(path, line)) or path.endswith(
        ("selectors.py", "socket.py")
    ):
        return WAITING
    owner = _owner(frames)
    if owner is None:
        return OTHER
    if _SAMEKEY not in owner[1]:
        return HTTP
    source = linecache.getline(owner[1], owner[2])
    if _SQL.search(source):
        return SQLITE
    if _WAIT.search(source) or _WAIT.search(linecache.getline(path, line)):
        return WAITS
    return OWN


def _name(frame: Frame) -> str:
    function, path, _ = frame
    module = path.split(_SAMEKEY, 1)[-1].removesuffix(".py").replace(os.sep, ".")
    return f"{module}.{function}"


def _count(sample: Samples, frames: list[Frame], count: int) -> None:
    bucket = _bucket(frames)
    sample.buckets[bucket] += count
    mine = [f for f in frames if _SAMEKEY in f[1]]
    if bucket == HTTP and mine:
        sample.http_callers[_line(mine[-1])] += count
    if bucket not in (OWN, SQLITE, WAITS):
        return
    for name in {_name(f) for f in mine}:
        sample.inclusive[name] += count
    if bucket == OWN:
        sample.own_functions[_name(mine[-1])] += count
        sample.own_lines[_line(mine[-1])] += count


def _line(frame: Frame) -> str:
    _, path, line = frame
    return f"{Path(path).name}:{line}  {linecache.getline(path, line).strip()}"


def _py_spy() -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return spy


def _workload(url: str, folder: str, requests: int, spy: list[str] | None) -> list[float]:
    """Run the workload (under py-spy when ``spy`` is its command).

    Returns the seconds of (bare, samekey) in all, their median seconds per request, and the
    CPU seconds of the sending thread in all.
    """
    journal = os.path.join(folder, f"journal-{len(os.listdir(folder))}.sqlite3")
    timings = os.path.join(folder, "seconds.txt")
    command = (spy or []) + [sys.executable, "-c", WORKLOAD, url, journal, str(requests), timings]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(
            f"the profiled workload failed (py-spy needs permission to trace):\n{done.stderr}"
        )
    return [float(value) for value in Path(timings).read_text().split()]


def profile(requests: int, instant: bool = False) -> dict[str, Samples]:
    """Sample counts for "bare" and "samekey", with each variant's measured seconds.

    ``instant``: the transport answers at once (no network, no server): every sample is CPU,
    and the seconds are the median request's times the requests, from a run of the same
    workload without py-spy (a median: on a shared machine, a request another process
    preempted is an outlier, not samekey's cost).
    """
    spent = {"bare": Samples(), "samekey": Samples()}
    with (
        tempfile.TemporaryDirectory(prefix="samekey-profile-") as folder,
        server("minimal", folder) as url,
    ):
        target = "instant://pay.test/v1/charges" if instant else url + "/v1/charges"
        raw = os.path.join(folder, "stacks.txt")
        spy = [_py_spy(), "record", "--idle", "--full-filenames", "--format", "raw"]
        spy += ["--rate", str(RATES[instant]), "--output", raw, "--"]
        seconds, cpu = _workload(target, folder, requests, spy)[:2], [0.0, 0.0]
        if instant:
            timings = _workload(target, folder, requests, None)
            seconds, cpu = [median * requests for median in timings[2:4]], timings[4:]
        for variant, value, busy in zip(spent, seconds, cpu, strict=True):
            spent[variant].seconds, spent[variant].cpu = value, busy
        for row in Path(raw).read_text().splitlines():
            stack, _, count = row.rpartition(" ")
            variant = (
                "samekey"
                if "samekey_requests" in stack
                else "bare"
                if "bare_requests" in stack
                else None
            )
            frames = _frames(stack)
            if variant is not None and frames:
                _count(spent[variant], frames, int(count))
    return spent


def _top(sample: Samples, counter: Counter[str], requests: int, n: int) -> list[list[str]]:
    return [[f"{sample.us(c, requests):.1f}", name[:100]] for name, c in counter.most_common(n)]


def _bucket_rows(bare: Samples, sk: Samples, requests: int) -> list[list[str]]:
    rows, total_b, total_s = [], 0.0, 0.0
    for bucket in BUCKETS:
        wait = bucket in (WAITING, WAITS)
        b, s = (
            bare.us(bare.buckets[bucket], requests, wait),
            sk.us(sk.buckets[bucket], requests, wait),
        )
        rows.append([bucket, f"{b:.1f}", f"{s:.1f}", f"{s - b:+.1f}"])
        total_b, total_s = total_b + b, total_s + s
    rows.append(["total", f"{total_b:.1f}", f"{total_s:.1f}", f"{total_s - total_b:+.1f}"])
    return rows


def run(requests: int, instant_requests: int | None = None) -> dict[str, Any]:
    """Profile both variants, over the loopback server and over a transport answering at once.

    The loopback run shows where a real request's time goes (py-spy's pauses slow both variants:
    compare the columns, not the totals with the sequential benchmark); the instant run, all
    CPU, splits samekey's own Python by function, in µs of a run without py-spy.
    """
    instant_requests = instant_requests or 3 * requests
    title = (
        f"Where the time goes: sequential POSTs, durability process, py-spy at {RATES[False]}/s "
        f"({requests} over the loopback server) and {RATES[True]}/s "
        f"({instant_requests} over a transport "
        "answering at once)"
    )
    try:
        loop = profile(requests)
        spent = profile(instant_requests, instant=True)
    except SystemExit as exc:  # no py-spy, or no permission to trace
        return report(title, ["µs per request"], [], [f"skipped: {exc}"])
    bare, sk = spent["bare"], spent["samekey"]
    lbare, lsk = loop["bare"], loop["samekey"]
    n = instant_requests
    bare_cpu = bare.cpu / n * 1e6
    own, sql, waits = (
        sk.us(sk.buckets[OWN], n),
        sk.us(sk.buckets[SQLITE], n),
        sk.us(sk.buckets[WAITS], n, True),
    )
    notes = [
        f"loopback: samekey adds {(lsk.seconds - lbare.seconds) / requests * 1e6:.0f} µs "
        "per request (means, slowed by py-spy's pauses)",
        "instant transport, no py-spy: samekey adds "
        f"{(sk.cpu - bare.cpu) / n * 1e6:.0f} µs of CPU per request: "
        f"{own:.0f} µs its own Python, {sql:.0f} µs SQLite statements, {waits:.0f} µs waits",
        f"samples of the sending thread (instant): {bare.buckets.total()} bare, "
        f"{sk.buckets.total()} samekey, {sk.buckets[OWN]} in samekey's own Python "
        f"(an item's µs is rough below ~{sk.us(10, n):.1f})",
    ]
    target = Target(
        "1b",
        "samekey's own Python per sequential POST (process, CPU)",
        own,
        25.0,
        unit="µs",
        floor=f"{own / bare_cpu:.0%} of bare httpx's CPU per request ({bare_cpu:.0f} µs) in "
        "the same run; "
        f"its SQLite statements: {sql:.0f} µs",
    )
    breakdown = {
        "instant_buckets": _bucket_rows(bare, sk, n),
        "functions": _top(sk, sk.own_functions, n, 25),
        "inclusive": _top(sk, sk.inclusive, n, 25),
        "lines": _top(sk, sk.own_lines, n, 20),
        "http_callers": _top(sk, sk.http_callers, n, 10),
    }
    headers = ["µs per request", "bare httpx", "samekey (process)", "samekey adds"]
    rows = _bucket_rows(lbare, lsk, requests)
    return report(title, headers, rows, notes, [target], breakdown=breakdown)


def markdown(section: dict[str, Any], when: str, where: str) -> str:
    """results/hot_path_profile.md: the buckets, then samekey's own Python by function and line."""
    parts = [
        "# samekey's hot path: where a sequential POST's µs go (durability process)",
        "",
        f"Measured {when} on {where}. Generated by `python -m benchmarks` (benchmarks/profile.py).",
        "",
        f"**{section['title']}**",
        "",
        table(section["headers"], section["rows"]),
        "",
        *[f"- {note}" for note in section["notes"]],
        "",
    ]
    breakdown = section.get("breakdown")
    if breakdown:
        parts += [
            "**The same, over a transport answering at once** (the sending thread's CPU "
            "time in a run "
            "without py-spy, split by the samples' shares; waits: the median request's wall time)",
            "",
            table(section["headers"], breakdown["instant_buckets"]),
            "",
            "**samekey's own Python by function** (self time, with the stdlib helpers "
            "it calls; no SQLite, no waits)",
            "",
            table(["µs", "function"], breakdown["functions"]),
            "",
            "**samekey functions on the stack** (inclusive: own Python + SQLite + waits "
            "under them)",
            "",
            table(["µs", "function"], breakdown["inclusive"]),
            "",
            "**samekey's own Python, the costliest lines**",
            "",
            table(["µs", "line"], breakdown["lines"]),
            "",
            "**httpx's time in the samekey variant, by the samekey line it runs under** "
            f"(bare httpx spends {breakdown['instant_buckets'][4][1]} µs in httpx per request)",
            "",
            table(["µs", "line"], breakdown.get("http_callers", [])),
            "",
        ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=6000, help="over the loopback server (x3 instant)"
    )
    args = parser.parse_args()
    print("\n" + markdown(run(args.requests), stamp(), machine()))


if __name__ == "__main__":
    main()

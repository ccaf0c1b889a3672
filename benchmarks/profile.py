"""Where a samekey request's time goes, sampled by py-spy next to bare httpx.

A child process sends sequential POSTs to the loopback server (its own process), first
with bare httpx then with samekey ("process" durability), while py-spy samples its
stacks from the outside: no profiler code runs in the measured process, so Python-heavy
code is not inflated the way an in-process profiler (cProfile, pyinstrument) inflates it.
py-spy pauses the process for each sample (so stacks are consistent), hence a low rate. Every sample goes in
one bucket, by the innermost frame and the source line it is on:

    waiting for the server   a socket read/write (the network, the server's work)
    SQLite statements        a journal line running sqlite3's execute
    samekey's own Python     any other line of samekey
    httpx, httpcore, h11     the HTTP client itself (bare httpx pays it too)
    other                    the rest (stdlib helpers, the loop)

A bucket's share of a variant's samples times that variant's measured mean latency is
its µs per request; the difference between the two columns is what samekey adds, bucket
by bucket. The lines of samekey's own Python that cost most follow. Needs py-spy (the bench extra)
and permission to trace a child process.

    python -m benchmarks.profile [--requests 6000]
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
from pathlib import Path

from ._common import report, server, table

RATE = 400  # samples per second: each pauses the process, so keep it low
BUCKETS = ("waiting for the server", "SQLite statements", "samekey's own Python", "httpx, httpcore, h11", "other")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):(?P<line>\d+)\)$")
_SOCKET = re.compile(r"\.(recv|recv_into|send|sendall|select|poll)\(")
_SAMEKEY = f"{os.sep}samekey{os.sep}"
_HTTP = tuple(f"{os.sep}{lib}{os.sep}" for lib in ("httpx", "httpcore", "h11"))

WORKLOAD = """
import sys, time, uuid, httpx, samekey
url, journal_path, requests, timings = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = {"amount": 1000, "currency": "eur", "source": "tok_visa"}
run = uuid.uuid4().hex[:8]

def bare_requests(client):
    for i in range(requests):
        client.post(url, json=body)

def samekey_requests(client):
    for i in range(requests):
        client.post(url, json=body, operation=f"order-{run}-{i}/charge")

with httpx.Client() as bare, samekey.Client(journal=samekey.Journal(journal_path, durability="process")) as sk:
    for i in range(300):  # warm both: connections open, caches filled
        bare.post(url, json=body)
        sk.post(url, json=body, operation=f"warm-{run}-{i}")
    time.sleep(0.2)
    started = time.perf_counter()
    bare_requests(bare)
    middle = time.perf_counter()
    samekey_requests(sk)
    with open(timings, "w") as out:  # py-spy writes on stdout too
        out.write(f"{middle - started} {time.perf_counter() - middle}")
"""


def _frames(stack: str) -> list[tuple[str, str, int]]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        if match:
            frames.append((match["function"], match["path"], int(match["line"])))
    return frames


def _bucket(frames: list[tuple[str, str, int]]) -> str:
    _, path, line = frames[-1]
    source = linecache.getline(path, line)
    if _SOCKET.search(source) or path.endswith(("selectors.py", "socket.py")):
        return BUCKETS[0]
    if _SAMEKEY in path:
        return BUCKETS[1] if ".execute(" in source or "COMMIT" in source else BUCKETS[2]
    if any(lib in path for lib in _HTTP):
        return BUCKETS[3]
    return BUCKETS[4]


def profile(requests: int) -> tuple[dict[str, dict[str, float]], Counter[str]]:
    """(µs per request by bucket, for "bare" and "samekey"), samekey's own lines by samples."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    spent = {"bare": Counter[str](), "samekey": Counter[str]()}
    own_lines: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="samekey-profile-") as folder, server("minimal", folder) as url:
        raw = os.path.join(folder, "stacks.txt")
        command = [spy, "record", "--idle", "--full-filenames", "--format", "raw"]
        command += ["--rate", str(RATE), "--output", raw, "--"]
        journal = os.path.join(folder, "journal.sqlite3")
        timings = os.path.join(folder, "seconds.txt")
        workload = [sys.executable, "-c", WORKLOAD, url + "/v1/charges", journal, str(requests), timings]
        done = subprocess.run(command + workload, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"py-spy failed (it needs permission to trace a child process):\n{done.stderr}")
        seconds = dict(zip(("bare", "samekey"), map(float, Path(timings).read_text().split()), strict=True))
        for row in Path(raw).read_text().splitlines():
            stack, _, count = row.rpartition(" ")
            variant = "samekey" if "samekey_requests" in stack else "bare" if "bare_requests" in stack else None
            frames = _frames(stack)
            if variant is None or not frames:
                continue
            bucket = _bucket(frames)
            spent[variant][bucket] += int(count)
            if variant == "samekey" and bucket == BUCKETS[2]:
                _, path, line = frames[-1]
                text = linecache.getline(path, line).strip()
                own_lines[f"{Path(path).name}:{line}  {text}"] += int(count)
    per_request = {
        variant: {bucket: counts[bucket] / max(1, counts.total()) * seconds[variant] / requests for bucket in BUCKETS}
        for variant, counts in spent.items()
    }
    return per_request, own_lines


def run(requests: int) -> dict[str, object]:
    """Profile both variants; the report dict run_all writes to latest.md."""
    title = f"Where the time goes: {requests} sequential POSTs each, py-spy at {RATE} samples/s"
    try:
        per_request, own_lines = profile(requests)
    except SystemExit as exc:  # no py-spy, or no permission to trace
        return report(title, "(not measured)", [f"skipped: {exc}"])
    bare, sk = per_request["bare"], per_request["samekey"]
    rows = [
        [bucket, f"{bare[bucket] * 1e6:.0f}", f"{sk[bucket] * 1e6:.0f}", f"{(sk[bucket] - bare[bucket]) * 1e6:+.0f}"]
        for bucket in BUCKETS
    ]
    total_b, total_s = sum(bare.values()), sum(sk.values())
    rows.append(["total", f"{total_b * 1e6:.0f}", f"{total_s * 1e6:.0f}", f"{(total_s - total_b) * 1e6:+.0f}"])
    text = table(["µs per request", "bare httpx", "samekey (process)", "samekey adds"], rows)
    samples = sum(own_lines.values()) or 1
    own = sk[BUCKETS[2]] * 1e6
    top = [[f"{count / samples * own:.1f}", line[:100]] for line, count in own_lines.most_common(10)]
    text += "\n\nsamekey's own Python, the lines that cost most (µs per request):\n\n" + table(["µs", "line"], top)
    return report(
        title,
        text,
        [
            f"samekey adds {(total_s - total_b) * 1e6:.0f} µs per request in this run "
            "(means; py-spy's pauses slow both variants, so compare shares, not absolute µs)",
            f"{sum(own_lines.values())} samples fell on samekey's own lines: a line's µs is rough below ~20",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000)
    args = parser.parse_args()
    run(args.requests)  # printed; `python -m benchmarks` puts it in results/latest.md


if __name__ == "__main__":
    main()

"""Sequential POSTs: what samekey adds to one request, next to what users would use instead.

Every variant sends to the same loopback server (its own process) in ONE run, and
the variants take turns in short blocks (in a new random order each round)
so that machine noise and drift hit them all alike. The raw fsync latency of the
journal's disk is measured in the same rounds, and so is the durable-execution peer users
would pick for durable calls: DBOS Transact, one workflow with one step doing the same POST
under the workflow id as key (benchmarks/_dbos_peer.py).

    python -m benchmarks.sequential [--requests 2000] [--server minimal|payment] [--think-ms 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import tenacity

import samekey

from ._common import FloorJournal, Target, median, new_run, percentile, report, server

BLOCK = 10  # requests per variant per turn
BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}


@dataclass
class Variant:
    name: str
    call: Callable[[int], object]
    close: Callable[[], object] = lambda: None
    samples: list[float] = field(default_factory=list)


def _durable_write(folder: str, name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    # The cheapest durable write there is: 200 bytes into a preallocated file, then fdatasync
    # (no size change, so no metadata to journal). SQLite's WAL is reused the same way.
    fd = os.open(os.path.join(folder, name), os.O_CREAT | os.O_RDWR, 0o600)
    size = 4 << 20
    os.write(fd, b"\0" * size)
    os.fsync(fd)
    offset = [0]

    def write() -> None:
        os.pwrite(fd, b"x" * 200, offset[0])
        os.fdatasync(fd)
        offset[0] = (offset[0] + 4096) % size

    return write, lambda: os.close(fd)


def _raw_fsync(folder: str) -> Variant:
    write, close = _durable_write(folder, "fsync-probe")
    return Variant(RAW_FSYNC, lambda i: write(), close)


def _bare_with_fsync(target: str, folder: str) -> Variant:
    # The physical floor of a durable client: bare httpx plus one durable write per request,
    # with no other work. An fsync also slows the request right after it (the disk and the
    # kernel are still busy); this variant pays that too, exactly as samekey's fsync mode does.
    client = httpx.Client()
    write, close_file = _durable_write(folder, "fsync-probe-http")

    def call(i: int) -> None:
        write()
        client.post(target, json=BODY).raise_for_status()

    def close() -> None:
        client.close()
        close_file()

    return Variant(FSYNC_FLOOR, call, close)


SQLITE_FLOOR = "httpx + 2 raw SQLite writes (floor)"
CLAIM_FLOOR = "httpx + the claim INSERT alone (floor)"
BY_HAND_DURABLE = "tenacity + uuid4 key + the 2 SQLite writes (by hand)"
SMALLEST_FLOOR = "httpx + the smallest SQLite write (floor, exclusive lock)"
BARE = "httpx.Client (bare)"
FSYNC_FLOOR = "httpx + one raw fsync (floor)"
RAW_FSYNC = "raw fsync (journal disk)"
DBOS = "DBOS Transact (workflow + step)"


def _journaled(
    name: str,
    target: str,
    folder: str,
    post: Callable[[str], httpx.Response],
    *,
    completion: bool = True,
    close: Callable[[], object] = lambda: None,
) -> Variant:
    # samekey's two statements around ``post(key)``, on the real schema, with none of its
    # Python: the claim INSERT before the send, the completion UPDATE after it (unless not)
    journal = FloorJournal(os.path.join(folder, f"{new_run()}.sqlite3"))
    run = new_run()
    body = b'{"amount":1000,"currency":"eur","source":"tok_visa"}'

    def call(i: int) -> None:
        operation, key, now = f"order-{run}-{i}/charge", str(uuid.uuid4()), time.time()
        journal.claim(operation, key, target, body, now)
        response = post(key)
        if completion:
            journal.complete(operation, response.content, now)

    def close_both() -> None:
        close()
        journal.close()

    return Variant(name, call, close_both)


def _bare_with_sqlite(target: str, folder: str, *, completion: bool = True) -> Variant:
    # The floor of any client that journals in SQLite the way samekey must: bare httpx plus
    # samekey's two statements. Without the completion it is the floor of the one write the
    # mission cannot do without: the key on disk before the first byte is sent.
    client = httpx.Client()

    def post(key: str) -> httpx.Response:
        # the key set on the built request, as samekey sets it: headers= would merge a copy of
        # the client's headers per request, which a floor must not pay
        request = client.build_request("POST", target, json=BODY)
        request.headers["Idempotency-Key"] = key
        return client.send(request).raise_for_status()

    name = SQLITE_FLOOR if completion else CLAIM_FLOOR
    return _journaled(name, target, folder, post, completion=completion, close=client.close)


def bare_with_smallest_write(target: str, folder: str, *, mode: str = "exclusive") -> Variant:
    # The cheapest commit SQLite makes at all: one key into a table with no index, then the
    # request carrying it. A claim also needs the operation's name, the request to resume and a
    # lease, so this is the floor of ANY client that writes its key to SQLite before sending.
    # mode "exclusive" (the default, the floor): WAL with locking_mode=EXCLUSIVE and
    # synchronous=OFF, still safe from kill -9 (the commit is in the OS's page cache when execute
    # returns; only a power cut or an OS crash can lose or corrupt it). The exclusive lock drops the
    # 6 fcntl calls and the shared-memory index of every commit (2 pwrite calls left), ~10-15 µs in
    # context, but no other process can read or write the file while it is open: samekey's
    # journal cannot run so (shared journals, the CLI), so this bound is below anything samekey
    # could do. mode "shared": samekey's own "process" settings (WAL, synchronous=NORMAL, shared
    # lock). mode "unsafe": journal_mode=OFF, exclusive, synchronous=OFF: no atomic commit at all
    # (a kill during a page split corrupts the file), the bound of SQLite as a plain file.
    pragmas = {
        "exclusive": (
            "PRAGMA locking_mode=EXCLUSIVE",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=OFF",
        ),
        "shared": ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"),
        "unsafe": (
            "PRAGMA locking_mode=EXCLUSIVE",
            "PRAGMA journal_mode=OFF",
            "PRAGMA synchronous=OFF",
        ),
    }[mode]
    conn = sqlite3.connect(os.path.join(folder, f"smallest-{mode}.sqlite3"), isolation_level=None)
    for pragma in pragmas:
        conn.execute(pragma).fetchall()
    conn.execute("CREATE TABLE keys (key TEXT NOT NULL)")
    client = httpx.Client()

    def call(i: int) -> None:
        key = str(uuid.uuid4())
        conn.execute("INSERT INTO keys (key) VALUES (?)", (key,))
        client.post(target, json=BODY, headers={"Idempotency-Key": key}).raise_for_status()

    def close() -> None:
        client.close()
        conn.close()

    return Variant(
        SMALLEST_FLOOR if mode == "exclusive" else f"{SMALLEST_FLOOR} ({mode})", call, close
    )


def variants(url: str, folder: str, peer: bool = True) -> list[Variant]:
    target = url + "/v1/charges"
    out: list[Variant] = []

    bare = httpx.Client()
    out.append(Variant(BARE, lambda i: bare.post(target, json=BODY).raise_for_status(), bare.close))

    from httpx_retries import Retry, RetryTransport

    retry = Retry(total=3, allowed_methods=["POST"], backoff_factor=0.5)
    rt = httpx.Client(transport=RetryTransport(retry=retry))
    out.append(
        Variant(
            "httpx-retries RetryTransport",
            lambda i: rt.post(target, json=BODY).raise_for_status(),
            rt.close,
        )
    )

    by_hand = httpx.Client()

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=30),
        retry=tenacity.retry_if_exception_type(httpx.TransportError),
        reraise=True,
    )
    def post_with_key(key: str) -> httpx.Response:
        response = by_hand.post(target, json=BODY, headers={"Idempotency-Key": key})
        response.raise_for_status()
        return response

    out.append(
        Variant(
            "tenacity + uuid4 key (by hand)",
            lambda i: post_with_key(str(uuid.uuid4())),
            by_hand.close,
        )
    )
    # samekey's protocol as a user would write it with the tools at hand: the same two
    # statements around a tenacity-retried POST. No replay, no lease, no mismatch check, no
    # redaction: the least a durable retrying client does, in the same run.
    out.append(_journaled(BY_HAND_DURABLE, target, folder, post_with_key))

    for durability in ("process", "fsync"):
        journal = samekey.Journal(
            os.path.join(folder, f"journal-{durability}.sqlite3"), durability=durability
        )
        client = samekey.Client(journal=journal)
        run = new_run()

        def call(i: int, client: samekey.Client = client, run: str = run) -> None:
            client.post(target, json=BODY, operation=f"order-{run}-{i}/charge").raise_for_status()

        def close(client: samekey.Client = client, journal: samekey.Journal = journal) -> None:
            client.close()
            journal.close()

        out.append(Variant(f"samekey.Client ({durability})", call, close))
    out.append(_bare_with_sqlite(target, folder))
    out.append(_bare_with_sqlite(target, folder, completion=False))
    out.append(bare_with_smallest_write(target, folder))
    out.append(_raw_fsync(folder))
    out.append(_bare_with_fsync(target, folder))
    if peer:
        from ._dbos_peer import peer as dbos_peer

        out.append(Variant(DBOS, *dbos_peer(target, folder, new_run())))
    return out


def run(
    requests: int = 2000,
    warmup: int = 50,
    server_kind: str = "minimal",
    folder: str | None = None,
    think_ms: float = 0,
    peer: bool = True,
) -> dict[str, Any]:
    server_name = f"{server_kind}, answering after {think_ms:g} ms" if think_ms else server_kind
    with (
        tempfile.TemporaryDirectory(prefix="samekey-bench-", dir=folder) as tmp,
        server(server_kind, tmp, think_ms) as url,
    ):
        vs = variants(url, tmp, peer)
        try:
            for i in range(warmup):
                for v in vs:
                    v.call(-1 - i)
            clock = time.perf_counter
            order = random.Random(1234)
            done = 0
            while done < requests:
                # Rounds of short blocks, in a new random order each round: drift hits every
                # variant alike, and each block runs in its own steady state. The first call
                # of a block is not counted: it pays for what the previous variant left
                # behind (an fsync probe slows the next request by ~0.1 ms, whoever sends it).
                block = min(BLOCK, requests - done)
                for v in order.sample(vs, len(vs)):
                    v.call(-1000 - done)  # a fresh operation, not a replay
                    for i in range(done, done + block):
                        t0 = clock()
                        v.call(i)
                        v.samples.append(clock() - t0)
                done += block
        finally:
            for v in vs:
                v.close()
    return report_run(vs, requests, server_name)


def _stats(samples: list[float]) -> dict[str, float]:
    """What a box plot needs, in ms: the whiskers at p1 and p99."""
    points = {"whislo": 1, "q1": 25, "med": 50, "q3": 75, "whishi": 99}
    return {name: percentile(samples, q) * 1e3 for name, q in points.items()}


def report_run(vs: list[Variant], requests: int, server_kind: str) -> dict[str, Any]:
    med = {v.name: median(v.samples) for v in vs}
    bare = med[BARE]
    rows = []
    for v in vs:
        raw = v.name == RAW_FSYNC
        ratio = "" if raw else f"{med[v.name] / bare:.2f}x"
        added = "" if raw else f"{(med[v.name] - bare) * 1e6:+.0f}"
        rows.append(
            [
                v.name,
                f"{med[v.name] * 1e3:.3f}",
                f"{percentile(v.samples, 99) * 1e3:.3f}",
                ratio,
                added,
            ]
        )
    process, durable = med["samekey.Client (process)"], med["samekey.Client (fsync)"]
    fsync_adds = med[FSYNC_FLOOR] - bare
    notes = [
        "bare httpx plus samekey's two SQLite statements alone = "
        f"{med[SQLITE_FLOOR] / bare:.2f}x bare "
        f"({(med[SQLITE_FLOOR] - bare) * 1e6:+.0f} µs); samekey (process) adds "
        f"{(process - med[SQLITE_FLOOR]) * 1e6:+.0f} µs of its own above that",
        f"samekey (process) / the same protocol by hand (tenacity, a uuid4 key, the same two "
        f"statements): {process / med[BY_HAND_DURABLE]:.2f}x",
        f"one raw fsync of the journal's disk: {med[RAW_FSYNC] * 1e3:.3f} ms alone, "
        f"{fsync_adds * 1e3:.3f} ms added to a bare request (its after-effect included)",
    ]
    floors = (
        f"claim INSERT alone {med[CLAIM_FLOOR] / bare:.2f}x; smallest SQLite write "
        f"{med[SMALLEST_FLOOR] / bare:.2f}x; the same protocol by hand "
        f"{med[BY_HAND_DURABLE] / bare:.2f}x"
    )
    targets = [
        Target(
            "1",
            "sequential POST, durability process / bare httpx",
            process / bare,
            1.25,
            floor=floors,
            bound=med[CLAIM_FLOOR] / bare,
        ),
        Target(
            "2",
            "(fsync - process) / what one raw fsync adds to a bare request",
            (durable - process) / fsync_adds,
            1.2,
            floor=f"one raw fsync adds {fsync_adds * 1e6:.0f} µs",
        ),
    ]
    if DBOS in med:
        targets.append(
            Target(
                "4",
                "samekey (fsync) / DBOS Transact, one workflow + one step",
                durable / med[DBOS],
                1.0,
                floor=f"DBOS {med[DBOS] / bare:.2f}x bare; samekey fsync {durable / bare:.2f}x, "
                f"process {process / bare:.2f}x",
            )
        )
    title = (
        f"Sequential: {requests} POSTs per variant, in blocks of {BLOCK} in random order, "
        f"one loopback server ({server_kind})"
    )
    headers = ["variant", "median ms", "p99 ms", "median vs bare", "added µs"]
    latency = {v.name: _stats(v.samples) for v in vs}
    medians_us = {name: value * 1e6 for name, value in med.items()}
    extra = {"latency": latency, "medians_us": medians_us, "requests": requests}
    return report(title, headers, rows, notes, targets, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 requests per variant")
    parser.add_argument("--server", choices=["minimal", "payment"], default="minimal")
    parser.add_argument(
        "--dir", default=None, help="folder for the journals (default: the system temp folder)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="the minimal server answers this late, as a real API works",
    )
    args = parser.parse_args()
    if args.think_ms and args.server != "minimal":
        parser.error("--think-ms needs --server minimal")
    run(
        300 if args.quick else args.requests,
        server_kind=args.server,
        folder=args.dir,
        think_ms=args.think_ms,
    )


if __name__ == "__main__":
    main()

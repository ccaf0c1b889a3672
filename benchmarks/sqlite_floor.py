"""Where the SQLite floor comes from: the two statements samekey's "process" mode runs.

1. The same claim INSERT and completion UPDATE in a tight loop, and right after the CPU
   idled 0.3 ms (as it does while a client waits for an answer): the second is what a
   client pays.
2. Bare httpx plus those two statements against the loopback server, on the real schema
   and on variants of it (fewer indexes, WITHOUT ROWID, smaller pages): what the schema
   costs, in blocks of 10 in random order as in sequential.py. Also the claim alone and the
   completion piggybacked on the next claim: what taking the completion off the path could save.
   And the smallest write SQLite commits at all (one key, no index): the floor of any SQLite claim,
   with an exclusive lock (the floor), with samekey's shared settings, and with no journal at all
   (unsafe: the bound of SQLite as a plain file); next to the uuid4 key header with no write.

    python -m benchmarks.sqlite_floor [--requests 2000]
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

import httpx

import samekey

from ._common import median, percentile, server
from .sequential import bare_with_smallest_write

BODY = {"amount": 1000, "currency": "eur", "source": "tok_visa"}


def _samekey_schema() -> tuple[str, str]:
    """(the schema script, the column list) of a journal samekey creates, read from the file."""
    with tempfile.TemporaryDirectory(prefix="samekey-schema-") as folder:
        path = os.path.join(folder, "schema.sqlite3")
        samekey.Journal(path, durability="process").close()
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND tbl_name = 'operations' "
                "ORDER BY type DESC, name"
            ).fetchall()  # the table first, then its indexes
            columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(operations)"))
        finally:
            conn.close()
    return ";\n".join(row[0] for row in rows) + ";\n", columns


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


_SCHEMA, _COLUMNS = _samekey_schema()
INSERT = (
    f"INSERT INTO operations ({_COLUMNS}) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, NULL, 0, NULL, NULL, NULL, NULL, ?, ?, NULL, ?) "
    "ON CONFLICT (operation) DO NOTHING"
)
UPDATE = (
    "UPDATE operations SET state = 'completed', completed_at = ?, updated_at = ?, attempts = ?, "
    "last_error = NULL, response_status = ?, response_headers = ?, response_body = ?, "
    "lease_owner = NULL, lease_expires = NULL WHERE operation = ? AND state = 'pending'"
)
HEADERS = '[["accept","*/*"],["content-type","application/json"]]'
SCHEMAS = {
    "current schema": (_SCHEMA, ()),
    "WITHOUT ROWID": (_SCHEMA.replace(");\n", ") WITHOUT ROWID;\n", 1), ()),
    "no completed-records index": (
        ";\n".join(s for s in _SCHEMA.split(";\n") if "INDEX operations_completed" not in s),
        (),
    ),
    "no indexes": (_SCHEMA.split("CREATE INDEX")[0], ()),
    "page_size 1024": (_SCHEMA, ("PRAGMA page_size=1024",)),
    # what "process" ran before it moved to NORMAL: no checkpoint fsyncs (a shorter tail), but a
    # power cut during a checkpoint could corrupt the whole journal
    "synchronous=OFF (unsafe)": (_SCHEMA, ("PRAGMA synchronous=OFF",)),
}


def _journal(path: str, schema: str, pragmas: tuple[str, ...]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(pragma)
    conn.execute("PRAGMA journal_mode=WAL")
    if "PRAGMA synchronous=OFF" not in pragmas:
        conn.execute("PRAGMA synchronous=NORMAL")  # durability "process", as samekey runs it
    _run_script(conn, schema)
    return conn


def _statements(
    conn: sqlite3.Connection, url: str
) -> tuple[Callable[[str], None], Callable[[str, bytes], None]]:
    def claim(operation: str) -> None:
        now = time.time()
        params = (
            operation,
            str(uuid.uuid4()),
            "Idempotency-Key",
            "POST",
            url,
            "0" * 64,
            HEADERS,
            b"{}",
        )
        conn.execute(INSERT, (*params, now, now, "owner", now + 60, "0" * 32))

    def complete(operation: str, body: bytes) -> None:
        now = time.time()
        conn.execute(UPDATE, (now, now, 1, 201, HEADERS, body, operation))

    return claim, complete


def idle_penalty(folder: str, n: int = 3000) -> None:
    print("\nThe same two statements, warm and right after 0.3 ms of idle CPU (medians, µs)\n")
    for label, pause in (("tight loop", 0.0), ("after 0.3 ms idle", 0.0003)):
        conn = _journal(os.path.join(folder, f"idle-{pause}.sqlite3"), _SCHEMA, ())
        claim, complete = _statements(conn, "http://127.0.0.1/v1/charges")
        inserts, updates = [], []
        for i in range(n):
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            claim(f"op-{i}")
            t1 = time.perf_counter()
            if pause:
                time.sleep(pause)
            t2 = time.perf_counter()
            complete(f"op-{i}", b'{"id":"ch_1"}')
            inserts.append(t1 - t0)
            updates.append(time.perf_counter() - t2)
        conn.close()
        claim_us, complete_us = median(inserts) * 1e6, median(updates) * 1e6
        print(f"  {label:18s} claim INSERT {claim_us:5.1f}   completion UPDATE {complete_us:5.1f}")


def schema_floors(folder: str, requests: int) -> None:
    with server("minimal", folder) as url:
        target = url + "/v1/charges"
        bare = httpx.Client()
        calls: dict[str, Callable[[int], object]] = {
            "bare httpx": lambda i: bare.post(target, json=BODY)
        }
        for n, (name, (schema, pragmas)) in enumerate(SCHEMAS.items()):
            claim, complete = _statements(
                _journal(os.path.join(folder, f"floor-{n}.sqlite3"), schema, pragmas), target
            )
            client, run = httpx.Client(), uuid.uuid4().hex[:8]

            def call(i: int, claim=claim, complete=complete, client=client, run=run) -> None:  # type: ignore[no-untyped-def]
                operation = f"order-{run}-{i}/charge"
                claim(operation)
                complete(operation, client.post(target, json=BODY).content)

            calls[name] = call
        calls.update(_deferred_completions(folder, target))
        keyed = httpx.Client()
        calls["uuid4 key header, no write"] = lambda i: keyed.post(
            target, json=BODY, headers={"Idempotency-Key": str(uuid.uuid4())}
        ).raise_for_status()
        calls["smallest write, exclusive"] = bare_with_smallest_write(target, folder).call
        calls["smallest write, shared"] = bare_with_smallest_write(
            target, folder, mode="shared"
        ).call
        calls["smallest write, no journal"] = bare_with_smallest_write(
            target, folder, mode="unsafe"
        ).call
        samples: dict[str, list[float]] = {name: [] for name in calls}
        order, done = random.Random(1234), 0
        while done < requests:
            for name in order.sample(list(calls), len(calls)):
                calls[name](
                    -1000 - done
                )  # not counted: pays for what the previous block left behind
                for i in range(done, done + 10):
                    t0 = time.perf_counter()
                    calls[name](i)
                    samples[name].append(time.perf_counter() - t0)
            done += 10
    base = median(samples["bare httpx"])
    print(
        f"\nBare httpx plus the two statements, {requests} POSTs each (median added to "
        "bare httpx's; p99)\n"
    )
    for name, values in samples.items():
        print(
            f"  {name:28s} {median(values) * 1e3:.3f} ms  {(median(values) - base) * 1e6:+5.0f} µs"
            f"   p99 {percentile(values, 99) * 1e3:.3f} ms"
        )


def _deferred_completions(folder: str, target: str) -> dict[str, Callable[[int], object]]:
    """Two ways to take the completion off a request's path, on the real schema: what they could
    save.

    - the claim alone: no completion record at all (the bound of any deferral);
    - piggyback: the completion is written in the NEXT request's claim transaction (one commit
      per request instead of two; a crash before it leaves the operation pending, not completed).
    """
    out: dict[str, Callable[[int], object]] = {}
    for kind in ("claim alone", "piggyback on next claim"):
        conn = _journal(os.path.join(folder, f"{kind}.sqlite3"), _SCHEMA, ())
        claim, complete = _statements(conn, target)
        client, run = httpx.Client(), uuid.uuid4().hex[:8]
        waiting: list[tuple[str, bytes]] = []

        def call(  # type: ignore[no-untyped-def]
            i: int,
            kind=kind,
            conn=conn,
            claim=claim,
            complete=complete,
            client=client,
            run=run,
            waiting=waiting,
        ):
            operation = f"order-{run}-{i}/charge"
            if waiting:
                conn.execute("BEGIN IMMEDIATE")
                complete(*waiting.pop())
                claim(operation)
                conn.execute("COMMIT")
            else:
                claim(operation)
            body = client.post(target, json=BODY).content
            if kind != "claim alone":
                waiting.append((operation, body))

        out[kind] = call
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="samekey-floor-") as folder:
        idle_penalty(folder)
        schema_floors(folder, args.requests)


if __name__ == "__main__":
    main()

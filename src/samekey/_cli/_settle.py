"""``samekey settle``: complete a pending operation by hand, after checking the provider.

When a key is past the server's memory (``KeyExpired``) or the code that made the
operation is gone, an operator checks the provider's dashboard and records what it says.
The operation is then completed for good: never listed as pending, never sent again; a
run of its code gets the settled answer replayed (`settled_answer`: the status, a
``Samekey-Settled: by-hand`` header and a small JSON body saying so). The store refuses
a record a live process holds (`SettlingStore.settle`); this command checks first too,
so that it can say so before asking.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TextIO

from .._contract import JournalStore, OperationRecord, SettlingStore
from .._reserve import is_reserved
from ._base import EXIT_FAILED, EXIT_OK, CliError
from ._output import human_age, iso

__all__ = ["cmd_settle"]


def cmd_settle(
    args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO, stdin: TextIO
) -> int:
    if not isinstance(store, SettlingStore):
        raise CliError(
            f"the journal {store.location} is kept by a store ({type(store).__name__}) that cannot "
            "settle operations by hand (it has no settle method): settle it where the store allows"
        )
    record = store.get(args.operation)
    refuse_unless_settleable(record, args.operation, store, time.time())
    assert record is not None
    if not args.yes:
        if not stdin.isatty():
            raise CliError(
                f"refusing to settle {record.operation!r} without confirmation: stdin is not a "
                "terminal; pass --yes"
            )
        err.write(plan(record, args.status, args.note) + "\nSettle it? [y/N] ")
        err.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            out.write(f"kept {record.operation!r} pending\n")
            return EXIT_FAILED
    now = time.time()
    result = store.settle(record.operation, args.status, args.note, now)
    if result.status != "settled":  # it changed since we looked: say what it is now
        refuse_unless_settleable(result.record, record.operation, store, now)
        raise CliError(f"operation {record.operation!r} changed meanwhile; it was not settled")
    out.write(
        f"settled {record.operation!r} by hand: HTTP {args.status} (key {record.key}); "
        "its code now gets that answer replayed, nothing is sent\n"
    )
    return EXIT_OK


def refuse_unless_settleable(
    record: OperationRecord | None, operation: str, store: JournalStore, now: float
) -> None:
    """A CliError saying why ``record`` cannot be settled at ``now``; nothing for a pending
    record whose lease is free or expired."""
    if record is None:
        raise CliError(f"operation {operation!r} is not in the journal {store.location}")
    if not record.pending:
        how = "settled by hand" if record.settled_by_hand else "completed"
        raise CliError(
            f"operation {operation!r} is already {how} (HTTP {record.response_status} at "
            f"{iso(record.completed_at)}): there is nothing to settle; samekey show {operation} "
            "shows its answer"
        )
    if is_reserved(record):
        raise CliError(
            f"operation {operation!r} holds a key reserved by key_for() and no request: nothing "
            "was sent under it, so there is nothing to settle. Run its code again (it sends with "
            f"the same key), or samekey forget {operation}"
        )
    left = (record.lease_expires or 0.0) - now
    if record.lease_owner and left > 0:
        raise CliError(
            f"operation {operation!r} is being executed right now by {record.lease_owner} "
            f"(lease for {left:.0f} s more): settling it would race the answer it is about to "
            "get. Wait for it to end, or stop that process, then settle it"
        )


def plan(record: OperationRecord, status: int, note: str) -> str:
    """What settling ``record`` does, for the operator to confirm."""
    error = f", last error: {record.last_error}" if record.last_error else ""
    noted = f" (note: {json.dumps(note, ensure_ascii=False)})" if note else ""
    return (
        f"operation {record.operation!r} is PENDING: {record.method} {record.url}, key "
        f"{record.key}, {record.attempts} attempt(s){error}, created "
        f"{human_age(time.time() - record.created_at)} ago.\n"
        f"Settling it records HTTP {status} as its final answer, by hand{noted}. It is never "
        f"sent again: a run of its code gets HTTP {status} replayed from the journal, marked "
        "by a Samekey-Settled: by-hand header. Check the provider's dashboard first."
    )

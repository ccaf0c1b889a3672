"""``samekey forget`` and ``samekey purge``: the two commands that delete records.

``forget`` asks first on a terminal (a pending record's key is gone for good); ``purge``
deletes only completed records, and ``purge --dry-run`` lists what it would delete first.
"""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from .._contract import JournalStore, OperationRecord
from .._policy import to_seconds
from ._base import EXIT_FAILED, EXIT_OK, CliError
from ._output import human_age, iso, table

__all__ = ["cmd_forget", "cmd_purge"]


def cmd_forget(
    args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO, stdin: TextIO
) -> int:
    record = store.get(args.operation)
    if record is None:
        raise CliError(f"operation {args.operation!r} is not in the journal {store.location}")
    warning = _forget_warning(record)
    if not args.yes:
        if not stdin.isatty():
            raise CliError(
                f"refusing to forget {record.operation!r} without confirmation: stdin is not a "
                "terminal; pass --yes"
            )
        err.write(warning + "\nForget it? [y/N] ")
        err.flush()
        answer = stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            out.write(f"kept {record.operation!r}\n")
            return EXIT_FAILED
    elif record.pending:
        err.write("warning: " + warning + "\n")
    if store.forget(record.operation):
        out.write(f"forgot {record.operation!r} (key {record.key})\n")
        return EXIT_OK
    raise CliError(f"operation {record.operation!r} was removed by someone else meanwhile")


def _forget_warning(record: OperationRecord) -> str:
    if not record.pending:
        status = record.response_status
        return (
            f"operation {record.operation!r} completed with HTTP {status}; its answer is dropped."
        )
    warning = (
        f"operation {record.operation!r} is PENDING with key {record.key} ({record.attempts} "
        "attempt(s)); "
        "the server may already have acted on it. Once forgotten, running it again uses a NEW key "
        "and may act twice: check the server first."
    )
    left = (record.lease_expires or 0.0) - time.time()
    if record.lease_owner and left > 0:
        warning += (
            f" It is being executed right now by {record.lease_owner} (lease for {left:.0f} s "
            "more): "
            "forgetting it under a running request loses the answer it is about to record."
        )
    return warning


def cmd_purge(args: argparse.Namespace, store: JournalStore, out: TextIO) -> int:
    older_than = to_seconds(args.older_than, "--older-than")
    now = time.time()
    if args.dry_run:
        return _purge_preview(store, older_than, now, out)
    removed = store.purge_completed(older_than, now)
    pending = len(store.records(include_completed=False, bodies=False))
    out.write(
        f"purged {removed} completed record(s) older than {human_age(older_than)}; "
        f"{pending} pending record(s) kept (pending records are never purged)\n"
    )
    return EXIT_OK


def _purge_preview(store: JournalStore, older_than: float, now: float, out: TextIO) -> int:
    """What `purge_completed(older_than, now)` would delete: completed before now - older_than."""
    records = store.records(include_completed=True, bodies=False)
    doomed = [r for r in records if not r.pending and (r.completed_at or now) < now - older_than]
    doomed.sort(key=lambda r: r.completed_at or 0.0)
    pending = sum(1 for r in records if r.pending)
    if doomed:
        rows = [
            [r.operation, str(r.response_status), iso(r.completed_at) or "-", r.key] for r in doomed
        ]
        table([["OPERATION", "STATUS", "COMPLETED AT", "KEY"], *rows], out)
    out.write(
        f"dry run: would purge {len(doomed)} completed record(s) older than "
        f"{human_age(older_than)}; "
        f"{pending} pending record(s) kept; nothing was deleted\n"
    )
    return EXIT_OK

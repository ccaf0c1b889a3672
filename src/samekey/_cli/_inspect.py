"""``samekey list`` and ``samekey show``: look, never write.

``list`` asks the store for one page (`_paging`): its filters and its keyset cursor run
in the store's SQL, on an index, so a page of a journal of a million records is read as
quickly as one of ten. On a terminal it shows the oldest DEFAULT_LIMIT matches and says
how to see the next ones; a pipe or a file gets every match unless ``--limit`` says
otherwise (a script must not lose records to a limit it never asked for). Every record
it reads comes without headers nor bodies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Literal, TextIO

from .._contract import JournalStore, ListQuery, OperationRecord
from .._sealed_store import sealed
from .._sealing import sealer_of
from .._wire import header_text
from ._base import EXIT_OK, CliError
from ._output import (
    attempt_unrecorded,
    attempts_text,
    clip,
    details,
    human_age,
    iso,
    summary,
    table,
)
from ._paging import cursor_of, page

__all__ = ["DEFAULT_LIMIT", "cmd_list", "cmd_show"]

DEFAULT_LIMIT = 100  # records `list` shows on a terminal without --limit


def query_of(args: argparse.Namespace, now: float, limit: int | None) -> ListQuery:
    """The store query of ``list``'s options; one more than ``limit``: whether more follow."""
    state: Literal["pending", "completed"] | None = None if args.all else args.state or "pending"
    return ListQuery(
        state=state,
        prefix=args.prefix or None,
        created_before=None if args.older_than is None else now - args.older_than,
        after=args.after,
        limit=None if limit is None else limit + 1,
    )


def cmd_list(
    args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO = sys.stderr
) -> int:
    now = time.time()
    limit = args.limit
    if limit is None and out.isatty():
        limit = DEFAULT_LIMIT
    records = page(store, query_of(args, now, limit))
    more = limit is not None and len(records) > limit
    records = records[:limit]
    if args.json:
        rows = [{**summary(r, now), "cursor": cursor_of(r)} for r in records]
        out.write(json.dumps(rows, indent=2) + "\n")
    elif records:
        table(_rows(records, now, with_state=args.all or args.state == "completed"), out)
    else:
        filtered = args.prefix is not None or args.older_than is not None or args.after is not None
        what = "matching " if filtered else "" if args.all else f"{args.state or 'pending'} "
        out.write(f"no {what}operations in {store.location}\n")
    if more:
        why = "--limit" if args.limit is not None else "on a terminal; --limit N shows more"
        err.write(
            f"showing the oldest {len(records)} matching operations ({why}); for the next ones, "
            f"run the same command with --after {cursor_of(records[-1])}\n"
        )
    return EXIT_OK


def _rows(records: list[OperationRecord], now: float, *, with_state: bool) -> list[list[str]]:
    head = ["OPERATION", "METHOD", "URL", "KEY", "AGE", "ATTEMPTS", "LAST ERROR"]
    rows = [
        [
            r.operation,
            r.method,
            clip(r.url, 60),
            r.key,
            human_age(now - r.created_at),
            attempts_text(r),
            clip(r.last_error, 60),
        ]
        for r in records
    ]
    if with_state:
        head.insert(1, "STATE")
        for row, r in zip(rows, records, strict=True):
            done = "settled" if r.settled_by_hand else "done"
            row.insert(1, r.state if r.pending else f"{done} {r.response_status}")
    return [head, *rows]


def cmd_show(args: argparse.Namespace, store: JournalStore, out: TextIO) -> int:
    # with $SAMEKEY_BODY_KEY, encrypted bodies are shown opened; without, said to be encrypted
    record = sealed(store, sealer_of(None), None).get(args.operation)
    if record is None:
        raise CliError(f"operation {args.operation!r} is not in the journal {store.location}")
    now = time.time()
    data = details(record, now)
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return EXIT_OK
    for name in ("operation", "state", "method", "url", "key_header", "key", "created_at",
                 "updated_at", "attempts", "last_error", "lease_owner", "lease_expires_at",
                 "fingerprint"):  # fmt: skip
        value = data[name]
        if name == "created_at":
            value = f"{value} ({human_age(now - record.created_at)} ago)"
        if name == "attempts" and attempt_unrecorded(record):
            value = "0 recorded; the first may have been sent (its outcome was never recorded)"
        out.write(f"{name + ':':<18}{'-' if value is None else value}\n")
    out.write("request headers:\n")
    for k, v in record.request_headers:
        out.write(f"  {k}: {header_text(v)}\n")
    out.write(
        f"request body ({data['request_body_encoding']}, {len(record.request_body)} bytes):\n"
    )
    out.write(f"  {data['request_body']}\n")
    if not record.pending:
        _show_response(record, data, out)
    return EXIT_OK


def _show_response(record: OperationRecord, data: dict[str, object], out: TextIO) -> None:
    out.write(f"completed_at:     {data['completed_at']}\n")
    if record.settled_note is not None:
        note = json.dumps(record.settled_note, ensure_ascii=False) if record.settled_note else "-"
        out.write(f"settled by hand:  at {iso(record.completed_at)}, note: {note}\n")
    out.write(f"response status:  {record.response_status}\nresponse headers:\n")
    for k, v in record.response_headers:
        out.write(f"  {k}: {header_text(v)}\n")
    size = len(record.response_body or b"")
    out.write(
        f"response body ({data['response_body_encoding']}, {size} bytes):\n  "
        f"{data['response_body']}\n"
    )

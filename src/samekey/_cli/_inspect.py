"""``samekey list`` and ``samekey show``: look, never write.

``list`` filters over the store's own API (its prefix, then state, age and limit here);
every record it reads comes without headers nor bodies, so 100k pending stay quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from .._contract import JournalStore, OperationRecord
from .._sealed_store import sealed
from .._sealing import sealer_of
from .._wire import header_text
from ._base import EXIT_OK, CliError
from ._output import attempt_unrecorded, attempts_text, clip, details, human_age, summary, table

__all__ = ["cmd_list", "cmd_show"]


def selected(args: argparse.Namespace, store: JournalStore, now: float) -> list[OperationRecord]:
    """The records ``list`` shows: its filters, in creation order, at most ``--limit``."""
    with_completed = args.all or args.state == "completed"
    # list shows no header nor body: reading them would slow a listing of 100k records
    records = store.records(args.prefix, include_completed=with_completed, bodies=False)
    if args.state is not None:
        records = [r for r in records if r.state == args.state]
    if args.older_than is not None:
        records = [r for r in records if now - r.created_at >= args.older_than]
    return records


def cmd_list(
    args: argparse.Namespace, store: JournalStore, out: TextIO, err: TextIO = sys.stderr
) -> int:
    now = time.time()
    records = selected(args, store, now)
    if args.limit is not None and len(records) > args.limit:
        err.write(
            f"showing the oldest {args.limit} of {len(records)} matching operations (--limit)\n"
        )
        records = records[: args.limit]
    if args.json:
        out.write(json.dumps([summary(r, now) for r in records], indent=2) + "\n")
        return EXIT_OK
    if not records:
        filtered = args.prefix is not None or args.older_than is not None
        what = "matching " if filtered else "" if args.all else f"{args.state or 'pending'} "
        out.write(f"no {what}operations in {store.location}\n")
        return EXIT_OK
    table(_rows(records, now, with_state=args.all or args.state == "completed"), out)
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
            row.insert(1, r.state if r.pending else f"done {r.response_status}")
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
    out.write(f"response status:  {record.response_status}\nresponse headers:\n")
    for k, v in record.response_headers:
        out.write(f"  {k}: {header_text(v)}\n")
    size = len(record.response_body or b"")
    out.write(
        f"response body ({data['response_body_encoding']}, {size} bytes):\n  "
        f"{data['response_body']}\n"
    )

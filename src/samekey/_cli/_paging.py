"""``samekey list`` one page at a time: the cursor it prints, and the page a store gives.

A cursor is the (created_at, operation) of the last record shown, as URL-safe base64 of
JSON: one shell word whatever the name holds, and exact (the float is kept as JSON
writes it). The store pages itself when it can (`ListingStore`: an index walk from the
cursor); another store's records are filtered here, as before it could.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json

from .._contract import JournalStore, ListingStore, ListQuery, OperationRecord

__all__ = ["cursor_argument", "cursor_of", "page"]


def cursor_of(record: OperationRecord) -> str:
    """The ``--after`` value that lists what comes after ``record``."""
    text = json.dumps([record.created_at, record.operation], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def cursor_argument(text: str) -> tuple[float, str]:
    """``--after CURSOR`` -> (created_at, operation), or a usage error that says where cursors
    come from."""
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
        created_at, operation = json.loads(raw.decode("utf-8"))
        if isinstance(created_at, (int, float)) and not isinstance(created_at, bool):
            if isinstance(operation, str):
                return float(created_at), operation
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        pass
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a cursor printed by samekey list: copy it from the line list wrote "
        "on stderr, or from the 'cursor' field of list --json"
    )


def page(store: JournalStore, query: ListQuery) -> list[OperationRecord]:
    """The records ``query`` selects, in (created_at, operation) order, headers and bodies
    empty."""
    if isinstance(store, ListingStore):
        return store.list_page(query)
    # a store that cannot page: every record of the prefix read, the rest filtered here
    records = store.records(query.prefix, include_completed=query.state != "pending", bodies=False)
    chosen = sorted(
        (r for r in records if query.matches(r)), key=lambda r: (r.created_at, r.operation)
    )
    return chosen if query.limit is None else chosen[: query.limit]

"""`key_for(operation)`: an operation's durable key, before its request exists.

Some APIs take the key in the body (Square's ``idempotency_key``) or in the path (a
``PUT /orders/{id}`` whose id the client makes): the request cannot be built before the
key is known, and the key must be on disk before the request is built, or a crash between
the two would make the re-run build the request with another key.

Theory. `key_for` writes a *reserved* record: a pending record with the key and no request
yet (method ``''``, the URL says so). It is committed (durable) and its lease freed before
`key_for` returns. Later calls return the same key: reserved, pending or completed (a
completed operation's request built again with its key is answered from the journal).

The first request sent under that operation claims the reserved record like any pending
one, and `fill` writes the request into it (``fill_reserved``, under the claim's lease) before
the first byte is sent. From then on it is an ordinary pending operation that retries, re-runs
and ``samekey resume`` send again with its key; its key's life (``key_ttl``) starts there, as
no server saw the key before. A reserved record that never got a request (the process died
between `key_for` and the send) has nothing to resume: running the code again sends it, with
the same key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator, Sequence
from typing import Any

import anyio.to_thread

from ._actions import Action
from ._contract import FillReserved, Intent, OperationRecord
from ._engine import Engine
from ._errors import JournalError, KeyExpired, SameKeyError, command
from ._plan import new_key, valid_operation

logger = logging.getLogger("samekey")

__all__ = [
    "AsyncKeyFor",
    "KeyFor",
    "fill",
    "is_reserved",
    "refuse_reserved",
    "reserve_key",
    "unreserved",
]

RESERVED_METHOD = ""  # no HTTP method is empty: a reserved record is never taken for a request
RESERVED_URL = "(key_for: no request sent yet)"  # what `samekey list` shows for it


def is_reserved(record: OperationRecord) -> bool:
    return record.pending and record.method == RESERVED_METHOD


def reserve_key(engine: Engine, operation: str) -> str:
    """The key of ``operation``: the journaled one, else a new one journaled (pending) first."""
    if not valid_operation(operation):
        raise ValueError(
            "key_for() takes the operation's name: a non-empty string of at most 512 characters "
            f"(e.g. 'order-42/charge'), got {operation!r}"
        )
    journal = engine.journal
    if not callable(getattr(journal, "fill_reserved", None)):
        raise TypeError(
            "key_for() needs a journal store with fill_reserved(intent, owner, now); "
            f"{type(journal).__name__} has none. Use samekey.Journal or samekey.PostgresJournal, "
            "or add that method to your store."
        )
    record = journal.get(operation)
    if record is None:
        now = engine.clock()
        intent = Intent(
            operation=operation, key=new_key(engine.config), key_header=engine.key_header,
            method=RESERVED_METHOD, url=RESERVED_URL, fingerprint="",
            request_headers=(), request_body=b"",
        )  # fmt: skip
        owner = engine.owners.new()
        claim = journal.claim(intent, owner, engine.config.lease, now)
        if claim.status in ("created", "claimed"):  # a lease is only for sending: free it at once
            journal.release(operation, owner, claim.record.attempts, None, engine.clock())
        record = claim.record
    if record.pending and not is_reserved(record):
        age = engine.clock() - record.created_at
        if age > engine.config.key_ttl:
            raise KeyExpired(operation, record.key, age, engine.config.key_ttl)
    return record.key


def fill(
    engine: Engine, intent: Intent, owner: str, record: OperationRecord
) -> Generator[Action, Any, OperationRecord]:
    """The flow's step for a claimed reserved record: journal the request, before it is sent."""
    now = engine.clock()
    # the reserved record's key, which its checksum
    # covers (and the store checks it is still that one)
    intent = dataclasses.replace(intent, key=record.key, key_header=record.key_header)
    filled = yield FillReserved(intent, owner, now)
    if not filled:
        raise JournalError(
            getattr(engine.journal, "location", "(journal)"),
            f"operation {intent.operation!r} lost its reserved key while its request was being "
            "recorded (it was forgotten or taken over meanwhile). Nothing was sent.",
            "Run it again: it is sent with the key the journal holds for it then.",
        )
    return dataclasses.replace(
        record, method=intent.method, url=intent.url, fingerprint=intent.fingerprint,
        request_headers=intent.request_headers, request_body=intent.request_body,
        created_at=now, updated_at=now,
    )  # fmt: skip


def refuse_reserved(record: OperationRecord) -> None:
    """`resume` of a reserved record: there is no request to send again."""
    if is_reserved(record):
        raise SameKeyError(
            f"operation {record.operation!r} has a key from key_for() ({record.key}) but no "
            "request was sent under it: there is nothing to resume. Run the code that sends it "
            "again: it gets the same key from key_for(). If it is no longer needed, "
            f"`{command('forget', record.operation)}`."
        )


def unreserved(records: Sequence[OperationRecord]) -> list[OperationRecord]:
    """The records a bulk resume may send: reserved ones have no request (see `refuse_reserved`)."""
    kept = []
    for record in records:
        if is_reserved(record):
            logger.info(
                "samekey resume skipped %s: a key from key_for(), no request sent yet",
                record.operation,
            )
        else:
            kept.append(record)
    return kept


class KeyFor:
    """``key_for`` for the sync clients and transports."""

    engine: Engine

    def key_for(self, operation: str) -> str:
        """The durable key of ``operation``, for a body field or a URL, before the request is built.

        A new operation gets a new key, journaled as pending before this returns; a pending or
        completed one returns its journaled key. Send the request under the same operation
        (``operation=`` or ``with samekey.operation(...)``): it carries this key too.
        Raises `KeyExpired` for a pending key older than ``key_ttl`` that was already sent.
        """
        return reserve_key(self.engine, operation)


class AsyncKeyFor:
    """``await key_for(...)`` for the async client and transport: the journal off the loop."""

    engine: Engine

    async def key_for(self, operation: str) -> str:
        """The async twin of `Client.key_for`."""
        return await anyio.to_thread.run_sync(reserve_key, self.engine, operation)

"""The journal contract: what a store keeps, the calls the flow makes on it, and the lease rule.

A record is *pending* from `claim` until `complete`; a pending record carries a lease
(owner, expiry) so that one caller at a time sends it, and a caller that was killed loses
the lease when it expires. Completed records keep the server's answer for replay.

The flow speaks to a store only through the typed calls below (`Claim`, `Complete`, ...),
each a value that knows which store method runs it. A store that can run several calls in
one transaction (SQLite's group commit) says so by implementing `BatchingStore`.
All times are epoch seconds, given by the caller, so that every store decides alike.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

__all__ = [
    "BatchingStore",
    "Claim",
    "ClaimResult",
    "Complete",
    "FillReserved",
    "Intent",
    "JournalCall",
    "JournalStore",
    "ListQuery",
    "ListingStore",
    "OperationRecord",
    "PurgeCompleted",
    "RecordAttempt",
    "Release",
    "QueueingStore",
    "ReservingStore",
    "SettleResult",
    "SettlingStore",
    "build",
    "lease_decision",
    "new_record",
    "settle_result",
    "settled_answer",
    "with_lease",
]


_Frozen = TypeVar("_Frozen")


def build(cls: type[_Frozen], **fields: Any) -> _Frozen:
    """A frozen dataclass made without its ``__init__``, which pays one ``object.__setattr__``
    per field: for the values every request makes. A field left out takes its default."""
    made = object.__new__(cls)
    made.__dict__.update(fields)
    return made


@dataclass(frozen=True)
class Intent:
    """What a caller wants to record before sending (everything but the lease)."""

    operation: str
    key: str
    key_header: str
    method: str
    url: str
    fingerprint: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes


@dataclass(frozen=True)
class OperationRecord:
    operation: str
    key: str
    key_header: str
    method: str
    url: str
    fingerprint: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes
    state: Literal["pending", "completed"]
    created_at: float  # wall clock, seconds since the epoch
    updated_at: float
    completed_at: float | None
    attempts: int
    last_error: str | None
    response_status: int | None
    response_headers: tuple[tuple[str, str], ...]
    response_body: bytes | None
    lease_owner: str | None
    lease_expires: float | None
    settled_note: str | None = None  # None unless settled by hand (`settle`); "" without a note
    # set by the client reading it back through its body_key: fields of request_body were
    # never stored
    body_redacted: bool = False

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    @property
    def settled_by_hand(self) -> bool:
        return self.settled_note is not None


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of `claim`: what the store found and whether the caller now holds it.

    ``status`` is ``"created"`` (new record, lease held), ``"claimed"`` (existing
    pending record, lease held), ``"busy"`` (pending, another owner's lease is live)
    or ``"completed"`` (the stored answer is in ``record``).
    """

    status: Literal["created", "claimed", "busy", "completed"]
    record: OperationRecord


def lease_decision(
    record: OperationRecord, owner: str, now: float
) -> Literal["completed", "busy", "claimed"]:
    """What a claim of an existing record by ``owner`` at ``now`` finds: the one lease rule."""
    if record.state == "completed":
        return "completed"
    lease_free = (
        record.lease_owner is None or record.lease_expires is None or record.lease_expires <= now
    )
    if not lease_free and record.lease_owner != owner:
        return "busy"
    return "claimed"


def new_record(intent: Intent, owner: str, now: float, expires: float) -> OperationRecord:
    """The record a claim creates: pending, leased to ``owner`` until ``expires``."""
    return build(
        OperationRecord,
        operation=intent.operation, key=intent.key, key_header=intent.key_header,
        method=intent.method, url=intent.url, fingerprint=intent.fingerprint,
        request_headers=intent.request_headers, request_body=intent.request_body,
        state="pending", created_at=now, updated_at=now, completed_at=None,
        attempts=0, last_error=None, response_status=None, response_headers=(),
        response_body=None,
        lease_owner=owner, lease_expires=expires,
    )  # fmt: skip


def with_lease(record: OperationRecord, owner: str, expires: float, now: float) -> OperationRecord:
    """``record`` as a claim that took its lease leaves it."""
    return dataclasses.replace(record, lease_owner=owner, lease_expires=expires, updated_at=now)


class JournalStore(Protocol):
    """The interface a journal store implements.

    Writes that must survive a crash before sending (`claim` creating a record) are
    durable when they return; the others may be cheaper (losing them only means a
    re-run sends the same key again, which the server answers by replay).
    """

    @property
    def location(self) -> str:
        """A printable name without secrets (read only: a plain attribute or a property)."""
        ...

    def claim(
        self, intent: Intent, owner: str, lease_seconds: float, now: float
    ) -> ClaimResult: ...

    def record_attempt(
        self,
        operation: str,
        owner: str,
        attempts: int,
        error: str | None,
        lease_seconds: float,
        now: float,
    ) -> None: ...

    def complete(
        self,
        operation: str,
        owner: str,
        attempts: int,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> None: ...

    def release(
        self, operation: str, owner: str, attempts: int, error: str | None, now: float
    ) -> None: ...

    def get(self, operation: str) -> OperationRecord | None: ...

    def records(
        self, prefix: str | None = None, *, include_completed: bool = True, bodies: bool = True
    ) -> list[OperationRecord]:
        """Records in creation order; ``bodies=False`` leaves headers and bodies empty."""
        ...

    def forget(self, operation: str) -> bool: ...

    def purge_completed(self, older_than: float, now: float, limit: int | None = None) -> int: ...

    def close(self) -> None: ...


# -- the calls the flow makes -------------------------------------------------------------
# Slotted values, not frozen ones: a frozen dataclass's __init__ pays an object.__setattr__
# per field (~0.1 µs each), and every request makes three of these.


@dataclass(slots=True)
class Claim:
    intent: Intent
    owner: str
    lease_seconds: float
    now: float

    def run(self, store: JournalStore) -> ClaimResult:
        return store.claim(self.intent, self.owner, self.lease_seconds, self.now)


@dataclass(slots=True)
class RecordAttempt:
    operation: str
    owner: str
    attempts: int
    error: str | None
    lease_seconds: float
    now: float

    def run(self, store: JournalStore) -> None:
        store.record_attempt(
            self.operation, self.owner, self.attempts, self.error, self.lease_seconds, self.now
        )


@dataclass(slots=True)
class Complete:
    operation: str
    owner: str
    attempts: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    now: float

    def run(self, store: JournalStore) -> None:
        store.complete(
            self.operation,
            self.owner,
            self.attempts,
            self.status,
            self.headers,
            self.body,
            self.now,
        )


@dataclass(slots=True)
class Release:
    operation: str
    owner: str
    attempts: int
    error: str | None
    now: float

    def run(self, store: JournalStore) -> None:
        store.release(self.operation, self.owner, self.attempts, self.error, self.now)


@dataclass(slots=True)
class PurgeCompleted:
    older_than: float
    now: float
    limit: int | None

    def run(self, store: JournalStore) -> int:
        return store.purge_completed(self.older_than, self.now, self.limit)


@dataclass(slots=True)
class FillReserved:
    intent: Intent
    owner: str
    now: float

    def run(self, store: JournalStore) -> bool:
        # only a record key_for() reserved is filled, and key_for() needs a ReservingStore
        return cast(ReservingStore, store).fill_reserved(self.intent, self.owner, self.now)


JournalCall = Claim | RecordAttempt | Complete | Release | PurgeCompleted | FillReserved
Outcome = tuple[Any, BaseException | None]


@runtime_checkable
class BatchingStore(JournalStore, Protocol):
    """A store that runs several calls at once, their writes in one transaction (one commit)."""

    def run_batch(self, calls: Sequence[JournalCall]) -> list[Outcome]:
        """(result, error) per call, in order; one call's error does not fail the others."""
        ...


@runtime_checkable
class QueueingStore(JournalStore, Protocol):
    """A store whose `complete` only queues the write and returns at once (written with its next
    write, see `_deferred`): cheap enough for the async drivers to call on the event loop."""

    completes_later: bool


class ReservingStore(JournalStore, Protocol):
    """A store that can hold a key before its request exists (`key_for`)."""

    def fill_reserved(self, intent: Intent, owner: str, now: float) -> bool:
        """Write the request into a record `key_for` reserved (method ''), under ``owner``'s lease,
        durably; its ``created_at`` becomes ``now``. False when there is no such record."""
        ...


# -- optional capabilities of the operator's command (`samekey list`, `samekey settle`) ------


@dataclass(frozen=True)
class ListQuery:
    """The records `samekey list` shows, one page at a time: keyset paging on
    (created_at, operation), so that page 1000 of a million records costs what page 1 does.

    ``state`` None means both states; ``created_before`` keeps records created at or before
    it; ``after`` is the (created_at, operation) of the last record already seen; ``limit``
    None means every match.
    """

    state: Literal["pending", "completed"] | None = "pending"
    prefix: str | None = None
    created_before: float | None = None
    after: tuple[float, str] | None = None
    limit: int | None = None

    def matches(self, record: OperationRecord) -> bool:
        """Whether ``record`` is one of the query's matches (``limit`` aside), as a store's SQL
        decides it."""
        return (
            (self.state is None or record.state == self.state)
            and (not self.prefix or record.operation.startswith(self.prefix))
            and (self.created_before is None or record.created_at <= self.created_before)
            and (self.after is None or (record.created_at, record.operation) > self.after)
        )


@runtime_checkable
class ListingStore(JournalStore, Protocol):
    """A store that pages through its records itself (`samekey list` on a big journal)."""

    def list_page(self, query: ListQuery) -> list[OperationRecord]:
        """The records ``query`` matches, in (created_at, operation) order, at most ``query.limit``;
        their headers and bodies empty, as ``records(bodies=False)`` gives them."""
        ...


@dataclass(frozen=True)
class SettleResult:
    """The outcome of `settle`: ``"settled"`` (``record`` is the settled record), ``"busy"``
    (a live lease: another process is executing it), ``"completed"`` (it already was: ``record``
    as found) or ``"missing"`` (no such operation, ``record`` None)."""

    status: Literal["settled", "busy", "completed", "missing"]
    record: OperationRecord | None


@runtime_checkable
class SettlingStore(JournalStore, Protocol):
    """A store in which an operator can settle a pending operation by hand (`samekey settle`)."""

    def settle(self, operation: str, status: int, note: str, now: float) -> SettleResult:
        """Complete a pending operation whose lease is free or expired with the answer
        `settled_answer` builds, ``note`` kept in ``settled_note``; durable when it returns."""
        ...


SETTLED_HEADER = "samekey-settled"


def settled_answer(status: int, note: str, now: float) -> tuple[list[tuple[str, str]], bytes]:
    """The answer a settled operation replays: ``status``, a ``Samekey-Settled: by-hand`` header,
    and a small JSON body saying so (none for 204 and 205, which carry no body)."""
    headers = [(SETTLED_HEADER, "by-hand")]
    if status in (204, 205):
        return headers, b""
    settled_at = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    body = {"settled_by_hand": True, "status": status, "settled_at": settled_at, "note": note}
    return [("content-type", "application/json"), *headers], json.dumps(body).encode()


def settle_result(changed: bool, record: OperationRecord | None, now: float) -> SettleResult:
    """What a store's guarded settle UPDATE (``changed``: it matched a row) and the record read
    after it mean: the one rule every store applies."""
    if record is None:
        return SettleResult("missing", None)
    if changed:
        return SettleResult("settled", record)
    # unchanged: it is completed, or its lease is live at ``now`` ("claimed" here: it raced a claim)
    done = lease_decision(record, "", now) == "completed"
    return SettleResult("completed" if done else "busy", record)

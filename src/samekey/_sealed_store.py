"""A store seen through the client's body protection: redacted fields out, bodies sealed in.

Between the flow and any store (SQLite, PostgreSQL, a user's), so all of them get it and
none changes: a request body is redacted (`_bodies`) and sealed (`_sealing`) on its way
in (claim, fill_reserved), a response body on completion; every record read back is
opened, so the flow, replay and resume see plain bodies. ``body_redacted`` on a record
read back tells that fields of its request body were never stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ._bodies import BodyRedactor
from ._contract import (
    BatchingStore,
    Claim,
    ClaimResult,
    Complete,
    FillReserved,
    Intent,
    JournalCall,
    JournalStore,
    OperationRecord,
)
from ._sealing import Sealer, was_redacted

__all__ = ["SealedStore", "sealed"]


def _content_type(headers: Sequence[tuple[str, str]]) -> str:
    return next((value for name, value in headers if name.lower() == "content-type"), "")


class SealedStore:
    """``inner`` with bodies redacted and sealed on the way in, opened on the way out."""

    def __init__(self, inner: JournalStore, sealer: Sealer, redactor: BodyRedactor | None) -> None:
        self.inner, self.sealer, self.redactor = inner, sealer, redactor

    def __getattr__(self, name: str) -> Any:  # path, pending(), ...: the store's own
        return getattr(self.inner, name)

    @property
    def location(self) -> str:
        return self.inner.location

    # -- in ---------------------------------------------------------------------------------

    def seal_intent(self, intent: Intent) -> Intent:
        body, redacted = self._redact(intent.request_body, intent.request_headers)
        return dataclasses.replace(
            intent, request_body=self.sealer.seal(body, intent.operation, redacted=redacted)
        )

    def seal_answer(self, operation: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        kept, redacted = self._redact(body, headers)
        return self.sealer.seal(kept, operation, redacted=redacted)

    def _redact(self, body: bytes, headers: Sequence[tuple[str, str]]) -> tuple[bytes, bool]:
        if self.redactor is None:
            return body, False
        return self.redactor.redact(body, _content_type(headers))

    # -- out --------------------------------------------------------------------------------

    def open_record(self, record: OperationRecord) -> OperationRecord:
        op = record.operation
        return dataclasses.replace(
            record,
            request_body=self.sealer.open(record.request_body, op),
            response_body=None
            if record.response_body is None
            else self.sealer.open(record.response_body, op),
            body_redacted=was_redacted(record.request_body),
        )

    def _opened(self, claim: ClaimResult) -> ClaimResult:
        return ClaimResult(claim.status, self.open_record(claim.record))

    # -- JournalStore -----------------------------------------------------------------------

    def claim(self, intent: Intent, owner: str, lease_seconds: float, now: float) -> ClaimResult:
        return self._opened(self.inner.claim(self.seal_intent(intent), owner, lease_seconds, now))

    def fill_reserved(self, intent: Intent, owner: str, now: float) -> bool:
        return bool(self.inner.fill_reserved(self.seal_intent(intent), owner, now))  # type: ignore[attr-defined]

    def record_attempt(
        self,
        operation: str,
        owner: str,
        attempts: int,
        error: str | None,
        lease_seconds: float,
        now: float,
    ) -> None:
        self.inner.record_attempt(operation, owner, attempts, error, lease_seconds, now)

    def complete(
        self, operation: str, owner: str, attempts: int, status: int, headers: list[tuple[str,
        str]], body: bytes,
        now: float,
    ) -> None:  # fmt: skip
        self.inner.complete(
            operation,
            owner,
            attempts,
            status,
            headers,
            self.seal_answer(operation, headers, body),
            now,
        )

    def release(
        self, operation: str, owner: str, attempts: int, error: str | None, now: float
    ) -> None:
        self.inner.release(operation, owner, attempts, error, now)

    def get(self, operation: str) -> OperationRecord | None:
        record = self.inner.get(operation)
        return None if record is None else self.open_record(record)

    def records(
        self, prefix: str | None = None, *, include_completed: bool = True, bodies: bool = True
    ) -> list[OperationRecord]:
        found = self.inner.records(prefix, include_completed=include_completed, bodies=bodies)
        return [self.open_record(record) for record in found] if bodies else found

    def forget(self, operation: str) -> bool:
        return self.inner.forget(operation)

    def purge_completed(self, older_than: float, now: float, limit: int | None = None) -> int:
        return self.inner.purge_completed(older_than, now, limit)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"SealedStore({self.inner!r})"


class SealedBatchingStore(SealedStore):
    """A `SealedStore` over a `BatchingStore`: its calls sealed the same way, run in one batch."""

    inner: BatchingStore

    def run_batch(self, calls: Sequence[JournalCall]) -> list[tuple[Any, BaseException | None]]:
        outcomes = self.inner.run_batch([self._sealed_call(call) for call in calls])
        return [
            (self._opened(res) if isinstance(res, ClaimResult) else res, error)
            for res, error in outcomes
        ]

    def _sealed_call(self, call: JournalCall) -> JournalCall:
        if isinstance(call, (Claim, FillReserved)):
            return dataclasses.replace(call, intent=self.seal_intent(call.intent))
        if isinstance(call, Complete):
            return dataclasses.replace(
                call, body=self.seal_answer(call.operation, call.headers, call.body)
            )
        return call


def sealed(
    store: JournalStore, sealer: Sealer | None, redactor: BodyRedactor | None
) -> JournalStore:
    """``store`` as the client uses it: itself without a key, else seen through the sealing."""
    if sealer is None:
        return store
    if isinstance(store, BatchingStore):
        return SealedBatchingStore(store, sealer, redactor)
    return SealedStore(store, sealer, redactor)

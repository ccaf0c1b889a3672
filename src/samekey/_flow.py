"""The decision core, shared by the sync and the async driver; it performs no I/O.

A request passes through one generator, `operation_flow`, that *decides* and yields the
I/O it needs as actions (see `_actions`). A keyed operation's journal record moves
through these states (h11 style):

    (none)  --claim-->  PENDING --definitive answer-->  COMPLETED --re-run--> replay
                          |  ^
       retryable answer,  |  |  same key, next attempt / next run / resume
       401/407 challenge  v  |
                        PENDING (lease released, key kept)

A PENDING record is never given a new key; a COMPLETED one is never sent again.
This module takes the operation to its first attempt (purge, claim, wait for a holder,
checks of a resumed record); `_attempts` sends until a definitive answer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from typing import Any

import httpx

from ._actions import Action, Flow, Sleep, Step
from ._attempts import attempts
from ._contract import Claim, ClaimResult, Intent, OperationRecord, PurgeCompleted, Release
from ._engine import Engine
from ._errors import JournalLocked, KeyExpired, OperationInProgress, OperationMismatch
from ._events import observed
from ._plan import Plan, as_first_sent, mismatch
from ._reserve import fill, is_reserved
from ._wire import OPERATION_EXTENSION, replay, settled

__all__ = ["operation_flow"]

logger = logging.getLogger("samekey")

# records one lazy purge deletes at most (a few ms), so no request stalls on a backlog
PURGE_BATCH = 1000


def operation_flow(engine: Engine, request: httpx.Request) -> Flow:
    """Decide everything about one request; yield the I/O. Returns the final response."""
    return observed(engine, request, _decided(engine, request))  # on_end hooks, OpenTelemetry


def _decided(engine: Engine, request: httpx.Request) -> Flow:
    plan = engine.plan(request)
    if plan is None:
        return (yield from attempts(engine, request, None, None))
    if OPERATION_EXTENSION not in request.extensions:
        # named here (auto:, key:): an auth flow answering a 401 challenge sends this same
        # request again, and that is this operation, not a new one leaving this one pending
        request.extensions[OPERATION_EXTENSION] = plan.intent.operation
    owner = engine.owners.new()
    now = engine.clock()
    if engine.purges.due(now):
        yield from _purge(engine, now)
    claim = yield from _claim(engine, plan, owner, engine.lease_for(request))
    record = claim.record
    if claim.status == "completed":
        # as when it was sent: httpx follows a replayed 307/308 with this request's headers,
        # and without the key the follow-up would be a new payment
        request.headers[engine.key_header] = record.key
        return settled(request, replay(record), engine.key_header)
    if claim.status == "claimed":
        yield from _resumed(engine, request, record, owner)
    request.headers[engine.key_header] = record.key
    return (yield from attempts(engine, request, record, owner))


def _purge(engine: Engine, now: float) -> Step:
    """Delete completed records past the retention (never a pending one), a batch at a time."""
    try:
        removed = yield PurgeCompleted(engine.config.retention, now, PURGE_BATCH)
        if removed >= PURGE_BATCH:
            engine.purges.soon(now)  # more to do: the next request after a short pause takes it
    except (
        Exception
    ) as exc:  # housekeeping never fails a payment; the claim reports a broken journal
        engine.purges.soon(now)
        logger.warning("samekey could not purge old completed records: %s", exc)


def _claim(
    engine: Engine, plan: Plan, owner: str, lease: float
) -> Generator[Action, Any, ClaimResult]:
    """Claim the operation until this owner holds it or it is found completed."""
    polls = 0
    while True:
        now = engine.clock()
        claim = yield from _claim_once(engine, plan.intent, owner, lease, now)
        if claim.status == "claimed" and is_reserved(
            claim.record
        ):  # a key from key_for(): see _reserve
            claim = ClaimResult(
                "claimed", (yield from fill(engine, plan.intent, owner, claim.record))
            )
        if claim.status != "created":  # else its record was made from this very plan
            yield from _refuse_mismatch(engine, plan, claim, owner)
        if claim.status != "busy":
            return claim
        record = claim.record
        if engine.owners.is_dead(record.lease_owner):
            # killed on this host (kill -9, OOM): no need to wait out its lease
            logger.info(
                "samekey taking over operation=%s from dead owner %s",
                record.operation,
                record.lease_owner,
            )
            yield Release(record.operation, record.lease_owner, record.attempts, None, now)  # type: ignore[arg-type]
            continue
        polls += 1
        yield _wait_for_holder(engine, record, now, polls)


def _claim_once(
    engine: Engine, intent: Intent, owner: str, lease: float, now: float
) -> Generator[Action, Any, ClaimResult]:
    try:
        claim: ClaimResult = yield Claim(intent, owner, lease, now)
    except (GeneratorExit, JournalLocked):  # locked out: nothing was written, no lease is held
        raise
    except BaseException:
        # interrupted (a cancelled task, Ctrl-C) or failed after the claim may have committed:
        # free a lease this owner may hold, or the operation is stuck until the lease expires
        with contextlib.suppress(Exception):
            yield Release(intent.operation, owner, 0, None, engine.clock())
        raise
    return claim


def _refuse_mismatch(engine: Engine, plan: Plan, claim: ClaimResult, owner: str) -> Step:
    record = claim.record
    why = mismatch(plan, record)
    if why is None:
        return
    if claim.status == "claimed":  # this owner holds its lease: free it before refusing
        yield Release(record.operation, owner, record.attempts, None, engine.clock())
    raise OperationMismatch(record.operation, why, pending=record.pending)


def _wait_for_holder(engine: Engine, record: OperationRecord, now: float, polls: int) -> Sleep:
    """The wait before the next claim of an operation another caller holds (or an error)."""
    expires_in = (record.lease_expires or now) - now
    if engine.config.on_busy == "raise":
        raise OperationInProgress(record.operation, record.lease_owner, expires_in)
    logger.debug("samekey waiting operation=%s held by %s", record.operation, record.lease_owner)
    return Sleep(
        max(0.001, min(0.02 * 1.5 ** min(polls, 10), 0.5, expires_in))
    )  # 1.5**polls overflows


def _resumed(engine: Engine, request: httpx.Request, record: OperationRecord, owner: str) -> Step:
    """Checks of a pending record this run takes over: its key still valid, its first bytes."""
    age = engine.clock() - record.created_at
    if age > engine.config.key_ttl:
        yield Release(record.operation, owner, record.attempts, None, engine.clock())
        raise KeyExpired(record.operation, record.key, age, engine.config.key_ttl)
    logger.info(
        "samekey resuming operation=%s key=%s after %d earlier attempt(s)",
        record.operation, record.key, record.attempts,
        extra={"operation": record.operation, "key": record.key, "attempt": record.attempts},
    )  # fmt: skip
    if record.request_body != request.content:
        as_first_sent(request, record)

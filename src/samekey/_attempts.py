"""Sending one request until a definitive answer, and journaling what happened.

When to retry and how long to wait is tenacity's `Retrying.iter()` fed one outcome at a
time, so the policy's strategies decide the same way for both drivers. Most requests
succeed at once: tenacity is brought in only by the first retryable outcome (its clock
starting from the first attempt), so a success costs one classification.

The ``on_retry`` hooks are called here, right before a retry's Sleep, so both drivers call
them once per retry; never for a first attempt, nor when the flow gives up. An attempt's
outcome is journaled (``RecordAttempt``) before the wait, the answer (``Complete``) after
the last attempt; an interruption or an error frees the lease and keeps the key pending.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator
from typing import Any

import httpx
import tenacity

from ._actions import Action, Discard, Flow, Read, Send, Sleep, Step
from ._contract import Complete, OperationRecord, RecordAttempt, Release
from ._engine import Engine
from ._errors import AnswerNotRecorded, JournalError, JournalLocked, RetriesExhausted, command
from ._hooks import RetryDetails, run_hooks
from ._policy import RetryPolicy, _Exhausted, server_wait
from ._wire import INFO_EXTENSION, OperationInfo, settled

__all__ = ["NOT_ACTED_ON", "attempts"]

logger = logging.getLogger("samekey")

# Refused before the server acted on the request: its key stays pending (not completed), so
# httpx's auth flow (Digest) or a re-run with fixed credentials sends the same key again.
NOT_ACTED_ON = frozenset({401, 407})


class _Run:
    """One request's attempts in this run: what the steps share."""

    __slots__ = (
        "begun", "earlier", "engine", "key", "last_error", "operation", "owner", "policy",
        "record", "request", "retrying", "started", "state", "taken", "tries", "waited",
    )  # fmt: skip

    def __init__(
        self,
        engine: Engine,
        request: httpx.Request,
        record: OperationRecord | None,
        owner: str | None,
    ):
        self.engine, self.request, self.record, self.owner = engine, request, record, owner
        self.policy: RetryPolicy = engine.policy
        self.operation = record.operation if record else None
        self.key = record.key if record else None
        self.earlier = record.attempts if record else 0  # attempts made by earlier runs
        self.started = time.monotonic()
        self.retrying: tenacity.Retrying | None = None
        self.state: tenacity.RetryCallState | None = None  # made by the first retryable outcome
        self.taken = 0.0  # retry-budget tokens this request took
        self.tries = 1  # attempts made by this run
        self.begun = 0  # attempts this run has begun to send: an interrupted wait is no attempt
        self.waited = 0.0  # seconds this run has waited between attempts, for on_retry hooks
        # the last attempt's outcome, kept if an interruption follows
        self.last_error: str | None = None

    @property
    def journaled(self) -> bool:
        return self.record is not None and self.owner is not None

    @property
    def attempt(self) -> int:
        return self.earlier + self.tries

    def log_extra(self, attempt: int) -> dict[str, Any]:
        return {"operation": self.operation, "key": self.key, "attempt": attempt}


def attempts(
    engine: Engine, request: httpx.Request, record: OperationRecord | None, owner: str | None
) -> Flow:
    """Send until a definitive answer; journal the outcome when ``record`` is given."""
    run = _Run(engine, request, record, owner)
    try:
        response = yield from _until_definitive(run)
    except GeneratorExit:
        raise
    except BaseException as exc:
        # a non-retryable error, or an interruption (a cancelled task, Ctrl-C): keep the key
        # pending, free the lease so that a retry can go on at once
        if run.journaled and not isinstance(exc, RetriesExhausted):
            yield from _free_lease(run, exc)
        raise
    return (yield from _deliver(run, response))


def _until_definitive(run: _Run) -> Generator[Action, Any, httpx.Response]:
    while True:
        response, exc = yield from _send_once(run)
        decision = _decide(run, response, exc)
        if decision is None:
            return response  # type: ignore[return-value]  # an error not to retry was raised
        if isinstance(decision, str):
            return (yield from _give_up(run, response, exc, decision))
        yield from _before_retry(run, response, exc, decision)


def _send_once(run: _Run) -> Generator[Action, Any, tuple[httpx.Response | None, Exception | None]]:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "samekey attempt operation=%s key=%s attempt=%d %s %s",
            run.operation, run.key, run.attempt, run.request.method,
            run.engine.redactor.url(run.request.url),
            extra=run.log_extra(run.attempt),
        )  # fmt: skip
    run.begun = run.tries
    try:
        # an answer that is not journaled is handed on still streaming, as bare httpx does
        response: httpx.Response = yield Send(run.request, buffer=run.record is not None)
    except Exception as error:  # the driver threw the transport's error in
        return None, error
    # the client sets it on what it returns; RetriesExhausted and AnswerNotRecorded carry an
    # answer past the client: .url and .raise_for_status() need it too
    response.request = run.request
    return response, None


def _decide(
    run: _Run, response: httpx.Response | None, exc: Exception | None
) -> float | str | None:
    """None: definitive (an error not to retry is
    raised); a wait: retry after it; a text: give up, why."""
    policy = run.policy
    if run.state is None:
        retry = (
            policy.should_retry_exception(exc)
            if exc is not None
            else policy.should_retry_response(response)  # type: ignore[arg-type]
        )
        if not retry:
            if exc is not None:
                raise exc
            return None
        run.retrying = policy.retrying()
        run.retrying.begin()
        run.state = tenacity.RetryCallState(run.retrying, fn=None, args=(), kwargs={})
        run.state.start_time = run.started
    state = run.state
    if exc is not None:
        state.set_exception((type(exc), exc, exc.__traceback__))
    else:
        state.set_result(response)
    do = run.retrying.iter(state)  # type: ignore[union-attr]
    if isinstance(do, _Exhausted):
        if state.attempt_number >= policy.attempts_allowed():
            return "max_attempts reached"
        return _deadline_reason(policy, state.upcoming_sleep, response)
    if not isinstance(do, tenacity.DoSleep):
        return None  # tenacity says definitive: ``do`` is the response (an error was raised)
    return _take_budget(run, exc, float(do))


def _take_budget(run: _Run, exc: Exception | None, wait: float) -> float | str:
    budget = run.policy.active_budget()
    if budget is None:
        return wait
    cost = budget.try_acquire(isinstance(exc, httpx.TimeoutException))
    if cost is None:
        return "the client's retry budget is empty (the server looks unhealthy)"
    run.taken += cost
    return wait


def _deadline_reason(policy: RetryPolicy, wait: float, response: httpx.Response | None) -> str:
    asked = server_wait(response)
    if (
        asked is not None and min(asked, policy.max_retry_after) >= wait
    ):  # the server's wait, not the backoff's
        capped = (
            f", capped at max_retry_after={policy.max_retry_after:g} s"
            if asked > policy.max_retry_after
            else ""
        )
        return (
            f"the server asked to wait {asked:g} s (Retry-After{capped}), past the "
            f"{policy.deadline:g} s deadline"
        )
    return f"the next wait would pass the {policy.deadline:g} s deadline"


def _before_retry(
    run: _Run, response: httpx.Response | None, exc: Exception | None, wait: float
) -> Step:
    attempt = run.attempt
    reason = run.last_error = run.engine.describe(exc, response, run.request)
    logger.warning(
        "samekey retry operation=%s key=%s attempt=%d failed (%s); next in %.2f s",
        run.operation, run.key, attempt, reason, wait, extra=run.log_extra(attempt),
    )  # fmt: skip
    if run.journaled:
        yield from _record_attempt(run, attempt, reason, wait)
    elif response is not None:
        yield Discard(response)  # streaming and not handed on: give its connection back
    run.state.prepare_for_next_attempt()  # type: ignore[union-attr]
    run.tries = run.state.attempt_number  # type: ignore[union-attr]
    if run.engine.config.on_retry:
        run_hooks(
            run.engine.config.on_retry, _retry_details(run, response, exc, attempt, reason, wait)
        )
    yield Sleep(wait)
    run.waited += wait


def _record_attempt(run: _Run, attempt: int, reason: str | None, wait: float) -> Step:
    record, owner, engine = run.record, run.owner, run.engine
    assert record is not None and owner is not None
    # the lease covers the wait and the next attempt: a Retry-After or backoff longer than
    # the lease must not let another caller take the operation over meanwhile
    hold = wait + engine.lease_for(run.request)
    try:
        yield RecordAttempt(record.operation, owner, attempt, reason, hold, engine.clock())
    except Exception as exc:  # the journal's own "nothing was sent" would be untrue here
        raise _not_recorded_attempt(engine, exc, record, attempt, reason) from exc


def _retry_details(
    run: _Run,
    response: httpx.Response | None,
    exc: Exception | None,
    attempt: int,
    reason: str | None,
    wait: float,
) -> RetryDetails:
    asked = run.policy.retry_after(response)
    return RetryDetails(
        operation=run.operation, key=run.key, method=run.request.method,
        url=run.engine.redactor.url(run.request.url), attempt=attempt, next_wait=wait,
        waited_so_far=run.waited, reason=reason or "",
        status_code=None if response is None else response.status_code,
        error_type=None if response is not None or exc is None else type(exc).__name__,
        from_retry_after=asked is not None and asked >= wait,
    )  # fmt: skip


def _free_lease(run: _Run, exc: BaseException) -> Step:
    record, owner = run.record, run.owner
    assert record is not None and owner is not None
    # an interruption says nothing about the server: the last attempt's outcome stays
    if isinstance(exc, Exception) or run.last_error is None:
        outcome = run.engine.describe(exc, None, run.request)
    else:
        outcome = run.last_error
    with contextlib.suppress(Exception):  # a broken journal: report the first error, not this one
        yield Release(record.operation, owner, run.earlier + run.begun, outcome, run.engine.clock())


def _deliver(run: _Run, response: httpx.Response) -> Flow:
    """The definitive answer: budget refunded on a 2xx, journaled, marked, handed on."""
    attempts = run.attempt
    budget = run.policy.active_budget()
    if budget is not None and response.is_success:
        # only a 2xx shows the server healthy: a server
        # answering 4xx to everything must not keep it full
        budget.refund(run.taken)
    if run.journaled:
        yield from _journal_answer(run, attempts, response)
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "samekey done operation=%s key=%s attempt=%d status=%d",
            run.operation, run.key, attempts, response.status_code, extra=run.log_extra(attempts),
        )  # fmt: skip
    response.extensions[INFO_EXTENSION] = OperationInfo(
        run.operation, run.key, attempts, replayed=False
    )
    return settled(run.request, response, run.engine.key_header)


def _journal_answer(run: _Run, attempts: int, response: httpx.Response) -> Step:
    record, owner, engine = run.record, run.owner, run.engine
    assert record is not None and owner is not None
    try:
        yield from _record_answer(engine, record, owner, attempts, response)
    except (GeneratorExit, Exception):
        raise
    except BaseException:
        # interrupted (a cancelled task, Ctrl-C) while the answer was being recorded: the write
        # may never have run (a worker-thread call cancelled before it began is dropped), so
        # free the lease, or no retry could go on until it expires; after a completion, a no-op
        with contextlib.suppress(Exception):
            interrupted = f"HTTP {response.status_code}: interrupted before the answer was recorded"
            yield Release(record.operation, owner, attempts, interrupted, engine.clock())
        raise


def _record_answer(
    engine: Engine, record: OperationRecord, owner: str, attempts: int, response: httpx.Response
) -> Step:
    """Journal a definitive answer as completed; a 401/407 only frees the lease, its key kept."""
    if response.status_code in NOT_ACTED_ON:
        refused = (
            f"HTTP {response.status_code}: credentials refused, the server did not act; the "
            "key is kept"
        )
        yield Release(record.operation, owner, attempts, refused, engine.clock())
        return
    headers = engine.redactor.response_headers(response.headers)
    body = b"".join(response.stream)  # type: ignore[arg-type]  # the raw body: drivers buffer it in a ByteStream
    try:
        yield Complete(
            record.operation, owner, attempts, response.status_code, headers, body, engine.clock()
        )
    except Exception as exc:  # a full disk, a lost database: the server HAS acted, say so
        if not isinstance(
            exc, JournalLocked
        ):  # locked out: freeing the lease would wait as long again
            with contextlib.suppress(Exception):  # free the lease if the journal still can
                unrecorded = f"HTTP {response.status_code}: the answer could not be recorded"
                yield Release(record.operation, owner, attempts, unrecorded, engine.clock())
        response.read()  # in memory already: `error.response.json()` works at once
        raise _not_recorded(engine, exc, record, response) from exc


def _journal_failure(engine: Engine, exc: Exception) -> tuple[str, str]:
    """(the journal's location, what went wrong) of a failed journal call, from any store."""
    if isinstance(exc, JournalError):
        return exc.path, exc.problem
    return getattr(engine.journal, "location", "(journal)"), f"{type(exc).__name__}: {exc}"


def _not_recorded(
    engine: Engine, exc: Exception, record: OperationRecord, response: httpx.Response
) -> AnswerNotRecorded:
    path, problem = _journal_failure(engine, exc)
    return AnswerNotRecorded(
        path, problem, operation=record.operation, key=record.key, response=response
    )


def _not_recorded_attempt(
    engine: Engine, exc: Exception, record: OperationRecord, attempt: int, error_text: str | None
) -> JournalError:
    path, problem = _journal_failure(engine, exc)
    return JournalError(
        path,
        f"operation {record.operation!r} was sent (attempt {attempt}, {error_text}), "
        f"but recording the attempt failed: {problem}",
        f"The key {record.key} stays pending: once the journal works again, run the same "
        "operation again "
        f"(or `{command('resume', record.operation)}`) to send it with the same key. Do "
        "not start it under a new "
        "operation name: that would be a new key, and the server could act twice.",
    )


def _give_up(
    run: _Run, response: httpx.Response | None, exc: BaseException | None, reason: str
) -> Generator[Action, Any, httpx.Response]:
    record = run.record
    attempts = run.attempt
    error = run.engine.describe(exc, response, run.request)
    if run.journaled:
        yield Release(record.operation, run.owner, attempts, error, run.engine.clock())  # type: ignore[union-attr, arg-type]
    elif response is not None:
        yield Read(response)  # still streaming: read it whole for RetriesExhausted.last_response
    if response is not None:
        # in memory by now: `last_response.json()` works without a read() of the caller's
        response.read()
    raise RetriesExhausted(
        operation=record.operation if record else "(unkeyed request)",
        key=record.key if record else None,
        attempts=attempts,
        this_run=run.tries,
        last_response=response,
        last_exception=exc,
        reason=reason,
        last_error=error,  # credentials hidden, as journaled
    )

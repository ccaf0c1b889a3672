"""A call's lifecycle, read off its flow: the ``on_end`` hooks and the instrumentation's input.

`observed` wraps `operation_flow` in one more generator that passes every action and every
result through unchanged, and takes note on the way (sans-IO, so both drivers share it):

    Claim -> its record       the operation, its key, the attempts of earlier runs
    Send -> answer or error   one attempt (its span is current while the driver sends it)
    then RecordAttempt, Discard or Sleep
                              that attempt is retried; any other action ends it
    Sleep before any Send     a wait for another caller's lease
    any JournalCall           timed from its yield to its result (the driver's journal call)
    the flow's end            a response or an error: the outcome, `EndDetails`, the hooks

A flow ends once, whichever way: returned, raised, or closed at a yield (an interruption
whose release failed). With no ``on_end`` hook and no instrumentation on, the flow is
returned as it is: nothing is added to the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import httpx

from . import instrumentation
from ._actions import Action, Discard, Flow, Send, Sleep
from ._contract import Claim, ClaimResult, JournalCall, RecordAttempt
from ._engine import Engine
from ._errors import AnswerNotRecorded, RetriesExhausted
from ._hooks import CallTracker, EndDetails, Outcome, run_end_hooks
from ._wire import operation_info

__all__ = ["observed"]

_RETRYING = (RecordAttempt, Discard, Sleep)  # what a flow yields after an attempt it retries
_JOURNAL_CALLS = JournalCall.__args__  # the union's classes


class _Call:
    """What one call's flow has shown so far."""

    def __init__(self, engine: Engine, request: httpx.Request, tracker: CallTracker | None) -> None:
        self.engine, self.request, self.tracker = engine, request, tracker
        self.started = time.perf_counter()
        self.operation: str | None = None
        self.key: str | None = None
        self.earlier = 0  # attempts made by earlier runs
        self.sent = 0  # attempts this call has begun to send
        self.answer: tuple[int | None, str | None] | None = None  # an open attempt: (status, error)
        self.last_status: int | None = None
        self.interruption: BaseException | None = None

    def before(self, action: Action) -> None:
        if self.answer is not None:  # the attempt before this action: retried or not
            self._end_attempt(isinstance(action, _RETRYING))
        if isinstance(action, Send):
            self.sent += 1
            self.answer = None, None  # open until its answer comes: a flow closed meanwhile ends it
            if self.tracker is not None:
                self.tracker.attempt_started(self.earlier + self.sent)
        elif isinstance(action, Sleep) and self.sent == 0 and self.tracker is not None:
            self.tracker.lease_waited()
        elif isinstance(action, Claim):
            self.operation, self.key = action.intent.operation, action.intent.key

    def after(self, action: Action, result: Any, error: BaseException | None, began: float) -> None:
        if isinstance(action, Send):
            if isinstance(result, httpx.Response):
                self.last_status = result.status_code
                self.answer = result.status_code, None
            else:
                self.answer = None, type(error).__name__
            if not isinstance(error, Exception) and error is not None:
                self._end_attempt(False)  # interrupted on the wire
        elif isinstance(action, _JOURNAL_CALLS):
            if isinstance(result, ClaimResult):
                self.key, self.earlier = result.record.key, result.record.attempts
            if self.tracker is not None:
                self.tracker.journal_call(type(action).__name__, time.perf_counter() - began)

    def _end_attempt(self, retried: bool) -> None:
        status, error_type = self.answer or (None, None)
        self.answer = None
        if self.tracker is not None:
            self.tracker.attempt_ended(status, error_type, retried)

    def end(self, response: httpx.Response | None, error: BaseException | None) -> None:
        if self.answer is not None:
            self._end_attempt(False)
        details = self._details(response, error)
        if self.engine.config.on_end:
            run_end_hooks(self.engine.config.on_end, details)
        if self.tracker is not None:
            self.tracker.ended(details)

    def _details(self, response: httpx.Response | None, error: BaseException | None) -> EndDetails:
        attempts, this_run, status = self.earlier + self.sent, self.sent, self.last_status
        reason = None
        if response is not None:
            info = operation_info(response)
            status = response.status_code
            if info is not None and info.replayed:
                outcome: Outcome = "replayed"
                attempts, this_run = info.attempts, 0
            else:
                outcome = "refused" if 400 <= status < 500 else "completed"
                attempts = info.attempts if info is not None else attempts
        else:
            outcome, reason = self._failure(error)
            if isinstance(error, RetriesExhausted):
                attempts, this_run = error.attempts, self.sent
                status = None if error.last_response is None else error.last_response.status_code
            elif isinstance(error, AnswerNotRecorded) and error.response is not None:
                status = error.response.status_code
        # closed after an interruption whose release failed: the interruption, not the GeneratorExit
        raised = self.interruption if outcome == "interrupted" and self.interruption else error
        return EndDetails(
            operation=self.operation, key=self.key, method=self.request.method,
            url=self.engine.redactor.url(self.request.url), outcome=outcome, status_code=status,
            attempts=attempts, this_run=this_run, duration=time.perf_counter() - self.started,
            error_type=None if raised is None else type(raised).__name__, reason=reason,
        )  # fmt: skip

    def _failure(self, error: BaseException | None) -> tuple[Outcome, str | None]:
        describe = self.engine.describe
        if isinstance(error, RetriesExhausted):
            last = describe(error.last_exception, error.last_response, self.request) or "no answer"
            return "gave_up", f"{error.reason} (last: {last})"
        if isinstance(error, Exception):
            return "failed", describe(error, None, self.request)
        return "interrupted", describe(self.interruption or error, None, self.request)


def observed(engine: Engine, request: httpx.Request, flow: Flow) -> Flow:
    """``flow``, watched if something listens (``on_end`` hooks, instrumentation), else itself."""
    tracker = instrumentation.track(engine, request)
    if tracker is None and not engine.config.on_end:
        return flow
    return _watch(flow, _Call(engine, request, tracker))


def _watch(flow: Flow, call: _Call) -> Generator[Action, Any, httpx.Response]:
    try:
        action = next(flow)
        while True:
            call.before(action)
            began = time.perf_counter()
            try:
                result = yield action
            except GeneratorExit:
                flow.close()  # a driver gave up on the flow mid-way (its release failed)
                raise
            except BaseException as exc:  # an error or an interruption: the flow's to handle
                if not isinstance(exc, Exception):
                    call.interruption = exc
                call.after(action, None, exc, began)
                action = flow.throw(exc)
            else:
                call.after(action, result, None, began)
                action = flow.send(result)
    except StopIteration as done:
        response: httpx.Response = done.value
        call.end(response, None)
        return response
    except BaseException as exc:
        call.end(None, exc)
        raise

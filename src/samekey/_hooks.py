"""Lifecycle hooks, for metrics and alerting: ``on_retry=`` (each retry) and ``on_end=`` (each end).

Modelled on stamina's instrumentation: a hook is any callable taking one frozen details
value, `RetryDetails` or `EndDetails`. The decision core calls them (`_attempts` once per
retry, `_events` once per call), so the sync and the async driver share them.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "EndDetails", "EndHook", "Outcome", "RetryDetails", "RetryHook",
    "hooks_from", "run_end_hooks", "run_hooks",
]  # fmt: skip

logger = logging.getLogger("samekey")


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """One retry, as an ``on_retry`` hook sees it: frozen, with no credential in it.

    ``url`` is the URL as the journal stores it (no ``user:password@``, secret query values
    ``REDACTED``) and ``reason`` the failed attempt's outcome as logged, credentials hidden.
    """

    operation: str | None  # None: a GET/PUT/DELETE/... retried without a key (no operation=)
    key: str | None  # the Idempotency-Key every attempt carries; None with no operation
    method: str
    url: str
    # the attempt that just failed, 1-based, counting earlier runs (as OperationInfo.attempts)
    attempt: int
    next_wait: float  # seconds before the next attempt
    waited_so_far: (
        float  # seconds this call has already waited between its attempts, next_wait excluded
    )
    reason: str  # e.g. "HTTP 503", "ReadError (ConnectionResetError: ...)"
    status_code: int | None  # the answer's status, None when the attempt got no answer (an error)
    error_type: (
        str | None
    )  # that error's class name ("ReadTimeout", "ConnectError"); None with an answer
    from_retry_after: bool  # next_wait is the server's Retry-After (capped), not the backoff


class RetryHook(Protocol):
    """What ``on_retry=`` takes: called with the details of each retry, before its wait."""

    # positional-only: a hook may name its parameter
    # as it likes (``def count(d)``, ``calls.append``)
    def __call__(self, details: RetryDetails, /) -> None: ...


def hooks_from(given: object, option: str = "on_retry") -> tuple[Any, ...]:
    """``given`` as a tuple of hooks (None: none); a clear TypeError for anything but hooks."""
    details, example = _OPTIONS[option]
    if given is None:
        return ()
    if callable(given):
        hooks: tuple[object, ...] = (given,)
    elif isinstance(given, Sequence) and not isinstance(given, (str, bytes)):
        hooks = tuple(given)
    else:
        raise TypeError(
            f"{option} must be a function taking a samekey.{details}, or a list of them, "
            f"e.g. {option}={example} or {option}=[{example}, log_it], got {given!r}"
        )
    for hook in hooks:
        if not callable(hook):
            raise TypeError(
                f"{option} hooks must be callables taking a samekey.{details}, got "
                f"{hook!r} in {given!r}"
            )
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(hook.__call__):
            # it would return a coroutine nobody awaits: the hook would silently never run
            raise TypeError(
                f"{option} hooks are called without await, so {hook_name(hook)} (async "
                "def) would never run: "
                "make it a plain def (hand slow work to a queue or a task)"
            )
    return hooks


_OPTIONS = {"on_retry": ("RetryDetails", "count_retry"), "on_end": ("EndDetails", "count_end")}


def hook_name(hook: object) -> str:
    """``module.qualname`` of a function, or of a callable object's class."""
    if isinstance(hook, functools.partial):
        return f"functools.partial({hook_name(hook.func)})"
    named = hook if hasattr(hook, "__qualname__") else type(hook)
    qualname = getattr(named, "__qualname__", None)
    if not isinstance(qualname, str):
        return repr(hook)
    module = getattr(named, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def run_hooks(hooks: tuple[RetryHook, ...], details: RetryDetails) -> None:
    """Call each hook; one that raises is logged and skipped: it must not abort the retry."""
    for hook in hooks:
        try:
            hook(details)
        except Exception:  # an interruption (Ctrl-C, a cancelled task) still goes through
            logger.exception(
                "samekey on_retry hook %s raised (operation=%s key=%s attempt=%d); the "
                "retry goes on",
                hook_name(hook), details.operation, details.key, details.attempt,
                extra={"operation": details.operation, "key": details.key,
                "attempt": details.attempt},
            )  # fmt: skip


Outcome = Literal["completed", "replayed", "refused", "gave_up", "failed", "interrupted"]


@dataclass(frozen=True, slots=True)
class EndDetails:
    """How one call ended, as an ``on_end`` hook sees it: frozen, with no credential in it.

    ``outcome`` is one of:

    - ``"completed"``: the server gave a definitive answer that is no 4xx (a 2xx, a 3xx, or
      a 5xx the policy does not retry); it is journaled as completed.
    - ``"replayed"``: completed earlier; answered from the journal, nothing was sent.
    - ``"refused"``: the definitive answer is a 4xx the policy does not retry (a declined
      card's 402, a 400, a 409, a 401/407, whose key stays pending).
    - ``"gave_up"``: the policy stopped before a definitive answer: `RetriesExhausted`.
    - ``"failed"``: another error was raised (an error the policy does not retry,
      `OperationMismatch`, `KeyExpired`, `OperationInProgress`, a `JournalError`,
      `AnswerNotRecorded`); ``error_type`` names it.
    - ``"interrupted"``: a cancelled task, Ctrl-C: the key stays pending, its lease freed.

    ``url`` is the URL as the journal stores it and ``reason`` the error's text, credentials
    hidden, as in `RetryDetails`.
    """

    operation: str | None  # None: a request retried without a key (no operation=)
    key: str | None
    method: str
    url: str
    outcome: Outcome
    status_code: int | None  # the last answer's status (a replay's journaled one); None: none came
    attempts: int  # attempts made, counting earlier runs (as OperationInfo.attempts)
    this_run: int  # attempts this call sent: 0 for a replay
    duration: float  # seconds this call spent in samekey, its journal calls and waits included
    error_type: str | None  # the raised error's class name ("RetriesExhausted", "CancelledError")
    reason: str | None  # why it gave up, failed or was interrupted; None with an answer


class EndHook(Protocol):
    """What ``on_end=`` takes: called once per call with how it ended, before it returns/raises."""

    def __call__(self, details: EndDetails, /) -> None: ...


def run_end_hooks(hooks: tuple[EndHook, ...], details: EndDetails) -> None:
    """Call each ``on_end`` hook; one that raises is logged and skipped: the result stands."""
    for hook in hooks:
        try:
            hook(details)
        except Exception:
            logger.exception(
                "samekey on_end hook %s raised (operation=%s key=%s outcome=%s); the call goes on",
                hook_name(hook), details.operation, details.key, details.outcome,
                extra={
                    "operation": details.operation, "key": details.key, "attempt": details.attempts,
                    "outcome": details.outcome,
                },
            )  # fmt: skip


class CallTracker(Protocol):
    """What an instrumentation is told about one call (see `samekey.instrumentation`)."""

    def attempt_started(self, number: int) -> None: ...
    def attempt_ended(self, status: int | None, error_type: str | None, retried: bool) -> None: ...
    def lease_waited(self) -> None: ...
    def journal_call(self, name: str, seconds: float) -> None: ...
    def ended(self, details: EndDetails) -> None: ...

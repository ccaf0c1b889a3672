"""Retry hooks: ``on_retry=`` callables told about each retry, for metrics and alerting.

Modelled on stamina's instrumentation: a hook is any callable taking one frozen
`RetryDetails`. The decision core (`_attempts`) calls them, once per retry, so the
sync and the async driver share them.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RetryDetails", "RetryHook", "hooks_from", "run_hooks"]

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
    attempt: int  # the attempt that just failed, 1-based, counting earlier runs (as OperationInfo.attempts)
    next_wait: float  # seconds before the next attempt
    waited_so_far: float  # seconds this call has already waited between its attempts, next_wait excluded
    reason: str  # e.g. "HTTP 503", "ReadError (ConnectionResetError: ...)"
    status_code: int | None  # the answer's status, None when the attempt got no answer (an error)
    error_type: str | None  # that error's class name ("ReadTimeout", "ConnectError"); None with an answer
    from_retry_after: bool  # next_wait is the server's Retry-After (capped), not the backoff


class RetryHook(Protocol):
    """What ``on_retry=`` takes: called with the details of each retry, before its wait."""

    # positional-only: a hook may name its parameter as it likes (``def count(d)``, ``calls.append``)
    def __call__(self, details: RetryDetails, /) -> None: ...


def hooks_from(on_retry: object) -> tuple[RetryHook, ...]:
    """``on_retry`` as a tuple of hooks (None: none); a clear TypeError for anything that is not one."""
    if on_retry is None:
        return ()
    if callable(on_retry):
        hooks: tuple[object, ...] = (on_retry,)
    elif isinstance(on_retry, Sequence) and not isinstance(on_retry, (str, bytes)):
        hooks = tuple(on_retry)
    else:
        raise TypeError(
            "on_retry must be a function taking a samekey.RetryDetails, or a list of them, "
            f"e.g. on_retry=count_retry or on_retry=[count_retry, log_retry], got {on_retry!r}"
        )
    for hook in hooks:
        if not callable(hook):
            raise TypeError(
                f"on_retry hooks must be callables taking a samekey.RetryDetails, got {hook!r} in {on_retry!r}"
            )
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(hook.__call__):
            # it would return a coroutine nobody awaits: the hook would silently never run
            raise TypeError(
                f"on_retry hooks are called without await, so {hook_name(hook)} (async def) would never run: "
                "make it a plain def (hand slow work to a queue or a task)"
            )
    return hooks  # type: ignore[return-value]


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
                "samekey on_retry hook %s raised (operation=%s key=%s attempt=%d); the retry goes on",
                hook_name(hook), details.operation, details.key, details.attempt,
                extra={"operation": details.operation, "key": details.key, "attempt": details.attempt},
            )  # fmt: skip

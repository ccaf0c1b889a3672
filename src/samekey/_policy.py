"""RetryPolicy: when to retry and how long to wait, expressed as tenacity strategies.

The policy is pure configuration. `RetryPolicy.retrying()` turns it into a
`tenacity.Retrying` whose `iter()` the decision core (`_attempts.py`) drives one step at
a time, so the same strategies serve the sync and the async client.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import ssl
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import httpx
import tenacity
from tenacity.wait import wait_base

__all__ = ["RetryBudget", "RetryPolicy", "set_testing"]

Seconds = float | int | timedelta

# Every 5xx but the two that say the server cannot do this at all (501 Not Implemented, 505 HTTP
# Version Not Supported): a gateway's 520-524 (origin unreachable or timed out), a 507, a 599 do
# not say the server did not act, and recorded as the answer they would be replayed forever.
# stripe-python retries every 5xx too.
DEFAULT_RETRY_STATUSES = frozenset({408, 409, 425, 429} | set(range(500, 600)) - {501, 505})
DEFAULT_RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,  # connect, read, write and pool timeouts
    httpx.NetworkError,  # connect errors, resets, broken pipes
    httpx.RemoteProtocolError,  # server closed the connection without a full response
    # the proxy's 502/503/504 to CONNECT (nothing reached the server); not its 403/407
    httpx.ProxyError,
)


def to_seconds(value: Seconds, name: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be seconds (a number) or a timedelta, got {value!r}")
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        need = "a positive" if not allow_zero else "a non-negative"
        raise ValueError(f"{name} must be {need} duration, got {value!r}")
    return seconds


# -- testing mode -----------------------------------------------------------------------

_testing_lock = threading.Lock()
_testing: list[
    _TestingMode
] = []  # stack of active testing modes (each holds its attempts cap, or None)


def testing_attempts_cap() -> tuple[bool, int | None]:
    """(testing mode on, attempts cap) for the innermost active testing mode."""
    stack = _testing
    if not stack:
        return False, None
    return True, stack[-1]._attempts


class _TestingMode:
    def __init__(self, on: bool, attempts: int | None) -> None:
        self._on = on
        self._attempts = attempts
        self._ended = False
        self._saved: list[
            _TestingMode
        ] = []  # what an 'off' cleared: put back when it is used as `with`
        if on:
            with _testing_lock:
                _testing.append(self)
        else:
            with _testing_lock:
                self._saved = list(_testing)
                _testing.clear()

    def __enter__(self) -> _TestingMode:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._on:
            with (
                _testing_lock
            ):  # the modes it turned off, unless they ended meanwhile, under any begun since
                _testing[:0] = [mode for mode in self._saved if not mode._ended]
                self._saved = []
            return
        with _testing_lock:
            self._ended = True
            # its own entry, wherever it is: scopes of threads or tasks may end out of order
            for i in range(len(_testing) - 1, -1, -1):
                if _testing[i] is self:
                    del _testing[i]
                    break


def set_testing(
    on: bool = True, *, attempts: int | None = None
) -> contextlib.AbstractContextManager[object]:
    """Turn off real waiting between retries, for your own test suite.

    ``samekey.set_testing(True)`` stays on until ``set_testing(False)``; used as
    ``with samekey.set_testing(True, attempts=2): ...`` it is undone on exit (and
    ``with samekey.set_testing(False): ...`` turns back on what it turned off).
    ``attempts`` optionally caps the attempts of every policy while it is on.
    """
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise ValueError(f"attempts must be a whole number >= 1, got {attempts!r}")
    return _TestingMode(on, attempts)


# -- retry budget -----------------------------------------------------------------------


class RetryBudget:
    """A client-wide token bucket that throttles retries when the server is down.

    In the spirit of the AWS SDKs' standard mode: a retry costs ``retry_cost``
    tokens (``timeout_cost`` after a timeout); a success (a 2xx answer) refunds
    ``success_refund`` (or the tokens its own retries took), any other answer refunds
    nothing. First attempts are never throttled.
    """

    def __init__(
        self,
        capacity: float = 500.0,
        *,
        retry_cost: float = 5.0,
        timeout_cost: float = 10.0,
        success_refund: float = 1.0,
    ) -> None:
        for name, value in (
            ("capacity", capacity),
            ("retry_cost", retry_cost),
            ("timeout_cost", timeout_cost),
            ("success_refund", success_refund),
        ):
            if (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0
            ):  # NaN too
                raise ValueError(f"RetryBudget {name} must be a non-negative number, got {value!r}")
        self.capacity = float(capacity)
        self.retry_cost = float(retry_cost)
        self.timeout_cost = float(timeout_cost)
        self.success_refund = float(success_refund)
        self._tokens = float(capacity)
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def try_acquire(self, timeout: bool) -> float | None:
        """Take the cost of one retry and return it
        (0.0 when retries are free); None means: do not retry."""
        cost = self.timeout_cost if timeout else self.retry_cost
        with self._lock:
            if self._tokens < cost:
                return None
            self._tokens -= cost
            return cost

    def refund(self, taken: float) -> None:
        if not taken and self._tokens >= self.capacity:  # the common case: nothing to give back
            return
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + (taken or self.success_refund))

    def __repr__(self) -> str:
        return f"RetryBudget(capacity={self.capacity}, tokens={self._tokens:.0f})"


# -- the policy -------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        # ASCII digits only: "²" (a stray 0xB2 byte
        # read as latin-1) is a digit to isdigit(), not to float()
        return float(value) if value.isascii() else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # a date without zone is UTC, as urllib3 reads it
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


# The connection dropped during the handshake: transient, like any reset.
_TLS_CUT_SHORT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_refused(exc: BaseException) -> bool:
    """A connect that failed in TLS itself (a certificate that does not verify, https:// to a plain
    port, no common protocol): nothing was sent, and retrying cannot fix it (stripe-python does not
    retry SSL errors either). httpx raises these as ConnectError chained from the ssl error."""
    if not isinstance(exc, httpx.ConnectError):
        return False
    cause: BaseException = exc
    for _ in range(8):  # httpx.ConnectError <- httpcore.ConnectError <- ssl.SSLError
        below = cause.__cause__ or cause.__context__
        if below is None:
            return False
        cause = below
        if isinstance(cause, ssl.SSLError):
            return not isinstance(cause, _TLS_CUT_SHORT)
    return False


def _proxy_refused(exc: BaseException) -> bool:
    """A proxy that would not open the tunnel for a reason retrying cannot fix: its 403 (a policy)
    or 407 (its credentials), a SOCKS refusal. Only its 5xx (it could not reach the server, or is
    overloaded) is passing; httpcore raises ProxyError("<status> <reason>") for a refused
    CONNECT."""
    return isinstance(exc, httpx.ProxyError) and _PROXY_UNAVAILABLE.match(str(exc)) is None


_PROXY_UNAVAILABLE = re.compile(r"5\d\d\b")


def server_wait(response: httpx.Response | None) -> float | None:
    """The wait the server's Retry-After asks for (uncapped), None without a valid one."""
    if response is None:
        return None
    # several Retry-After headers (a proxy and the app) are joined by headers.get() into
    # neither form: read each one, and wait the longest
    values = response.headers.get_list("Retry-After")
    if not values:
        return None
    parsed = [s for s in map(parse_retry_after, values) if s is not None]
    return max(parsed) if parsed else None


def _response_of(retry_state: tenacity.RetryCallState) -> httpx.Response | None:
    outcome = retry_state.outcome
    if outcome is None or outcome.failed:
        return None
    result = outcome.result()
    return result if isinstance(result, httpx.Response) else None


class RetryPolicy:
    """How samekey retries: exponential backoff with full jitter, bounded twice.

    Attempt ``n`` (n >= 1) that fails waits ``uniform(0, min(max_delay,
    initial_delay * multiplier ** (n - 1)))`` before attempt ``n + 1``, or the
    server's Retry-After (capped at ``max_retry_after``) if that is longer. The
    policy stops after ``max_attempts`` attempts, or before a wait that would end
    past ``deadline`` seconds since the first attempt, whichever comes first.
    Durations take seconds or a ``timedelta``; they read back as float seconds.
    """

    def __init__(
        self,
        max_attempts: int = 8,
        initial_delay: Seconds = 0.5,
        max_delay: Seconds = 30.0,
        multiplier: float = 2.0,
        deadline: Seconds = 120.0,
        *,
        max_retry_after: Seconds = 60.0,
        retry_statuses: Iterable[int] = DEFAULT_RETRY_STATUSES,
        retry_exceptions: Iterable[type[BaseException]] = DEFAULT_RETRY_EXCEPTIONS,
        verdict_header: str | None = "Stripe-Should-Retry",
        budget: RetryBudget | bool | None = True,
    ) -> None:
        self.max_attempts = _max_attempts(max_attempts)
        self.multiplier = _multiplier(multiplier)
        self.initial_delay = to_seconds(initial_delay, "initial_delay")
        self.max_delay = to_seconds(max_delay, "max_delay")
        self.deadline = to_seconds(deadline, "deadline", allow_zero=False)
        self.max_retry_after = to_seconds(max_retry_after, "max_retry_after")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay:g} s) must not be below initial_delay "
                f"({self.initial_delay:g} s)"
            )
        self.retry_statuses = _statuses(retry_statuses)
        self.retry_exceptions = _exception_classes(retry_exceptions)
        self.verdict_header = _verdict_header(verdict_header)
        self._default_budget: RetryBudget | None = None  # see active_budget
        if budget is True:
            budget = self._default_budget = RetryBudget()
        elif budget is False:
            budget = None
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(
                "budget must be a samekey.RetryBudget, True (a default one) or None "
                f"(off), got {budget!r}"
            )
        self.budget: RetryBudget | None = budget
        self._retrying: tuple[tuple[object, ...], tenacity.Retrying] | None = None

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, initial_delay={self.initial_delay:g}, "
            f"max_delay={self.max_delay:g}, multiplier={self.multiplier:g}, "
            f"deadline={self.deadline:g}, "
            f"max_retry_after={self.max_retry_after:g}, budget={self.budget!r})"
        )

    # -- classification -------------------------------------------------------------

    def should_retry_response(self, response: httpx.Response) -> bool:
        """True when retrying could change this answer. A 2xx never: the server acted."""
        if 200 <= response.status_code < 300:
            return False
        if self.verdict_header is not None:
            verdict = str(response.headers.get(self.verdict_header, "")).strip().lower()
            if verdict in ("true", "false"):
                return verdict == "true"
        return response.status_code in self.retry_statuses

    def should_retry_exception(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, self.retry_exceptions)
            and not _tls_refused(exc)
            and not _proxy_refused(exc)
        )

    def retry_after(self, response: httpx.Response | None) -> float | None:
        """The server's requested wait, capped at max_retry_after."""
        seconds = server_wait(response)
        return None if seconds is None else min(seconds, self.max_retry_after)

    def backoff_ceiling(self, attempt: int) -> float:
        """Upper bound of the jittered wait after failed attempt number ``attempt``."""
        exp = self.initial_delay * self.multiplier ** max(attempt - 1, 0)
        return min(self.max_delay, exp)

    # -- tenacity ---------------------------------------------------------------------

    def active_budget(self) -> RetryBudget | None:
        """The budget retries draw on. The default one (budget=True) is off while a testing mode is
        on: a suite's tests share a module-level policy's bucket, and the order they ran in would
        decide which of them may still retry. A RetryBudget passed in stays on (to test it)."""
        budget = self.budget
        return None if _testing and budget is self._default_budget else budget

    def attempts_allowed(self) -> int:
        """max_attempts, or less while a testing mode with an attempts cap is on."""
        _, cap = testing_attempts_cap()
        return self.max_attempts if cap is None else min(self.max_attempts, cap)

    def retrying(self) -> tenacity.Retrying:
        """The tenacity controller for this policy (and the current testing mode).

        Built once and reused: a call's own state lives in its RetryCallState, and
        what `Retrying.iter()` keeps between steps is per thread and reset each step.
        """
        testing, _ = testing_attempts_cap()
        # everything the strategies were built from: a changed attribute or testing mode rebuilds
        key = (
            testing,
            self.attempts_allowed(),
            self.deadline,
            self.initial_delay,
            self.max_delay,
            self.multiplier,
        )
        cached = self._retrying
        if cached is not None and cached[0] == key:
            return cached[1]
        retrying = self._build_retrying(testing)
        self._retrying = (key, retrying)
        return retrying

    def _build_retrying(self, testing: bool) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts_allowed())
            | tenacity.stop_before_delay(self.deadline),
            wait=_WaitBackoffOrRetryAfter(self, testing),
            retry=_RetryWhenChangeable(self),
            retry_error_callback=_Exhausted,
            sleep=_never_sleep,  # the drivers sleep; tenacity only decides
        )


def _never_sleep(seconds: float) -> None:  # pragma: no cover - tenacity never calls it here
    raise AssertionError("samekey drives tenacity with iter(); it must not sleep itself")


class _Exhausted:
    """What tenacity returns when the stop strategy fires (``retry_error_callback``)."""

    def __init__(self, retry_state: tenacity.RetryCallState) -> None:
        self.retry_state = retry_state
        self.attempts = retry_state.attempt_number


class _RetryWhenChangeable(tenacity.retry_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None:
            return False
        if outcome.failed:
            exc = outcome.exception()
            return exc is not None and self.policy.should_retry_exception(exc)
        result: object = outcome.result()
        return isinstance(result, httpx.Response) and self.policy.should_retry_response(result)


class _WaitBackoffOrRetryAfter(wait_base):
    def __init__(self, policy: RetryPolicy, testing: bool) -> None:
        self.policy = policy
        self.testing = testing
        self.jittered = tenacity.wait_random_exponential(
            multiplier=policy.initial_delay, max=policy.max_delay, exp_base=policy.multiplier
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if self.testing:
            return 0.0
        delay = float(self.jittered(retry_state))
        server = self.policy.retry_after(_response_of(retry_state))
        return delay if server is None else max(delay, server)


def _statuses(retry_statuses: Iterable[int]) -> frozenset[int]:
    if retry_statuses is None or isinstance(retry_statuses, (int, str, bytes)):
        raise TypeError(
            f"retry_statuses must be a collection of status codes, e.g. {{503}}, got "
            f"{retry_statuses!r} "
            "(set() to retry none)"
        )
    statuses = frozenset(retry_statuses)
    bad = sorted((s for s in statuses if not isinstance(s, int) or not 100 <= s <= 599), key=str)
    if bad:
        raise ValueError(f"retry_statuses must be HTTP status codes 100-599, got {bad}")
    if any(200 <= s < 300 for s in statuses):
        raise ValueError("retry_statuses must not contain 2xx: a success is always definitive")
    return statuses


def _exception_classes(
    retry_exceptions: Iterable[type[BaseException]],
) -> tuple[type[BaseException], ...]:
    if isinstance(retry_exceptions, type):
        raise TypeError(
            "retry_exceptions must be a tuple of exception classes, "
            f"e.g. ({retry_exceptions.__name__},), got the bare class {retry_exceptions!r}"
        )
    if retry_exceptions is None:
        raise TypeError(
            "retry_exceptions must be a tuple of exception classes, e.g. (httpx.TransportError,), "
            "got None (() to retry none)"
        )
    excs = tuple(retry_exceptions)
    if not all(isinstance(e, type) and issubclass(e, BaseException) for e in excs):
        raise TypeError(f"retry_exceptions must be exception classes, got {excs!r}")
    return excs


def _max_attempts(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"max_attempts must be a whole number >= 1 (1 means no retries), got {value!r}"
        )
    return value


def _multiplier(value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 1:  # NaN
        raise ValueError(f"multiplier must be a number >= 1, got {value!r}")
    return float(value)


def _verdict_header(value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"verdict_header must be a header name or None, got {value!r}")
    return value

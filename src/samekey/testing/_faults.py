"""Faults and the plan that decides which request gets which fault.

One vocabulary for the three places a fault can be injected: inside the
`PaymentServer`, in the `FaultProxy` between client and server, and in a
`FaultTransport` under an httpx client. A `FaultPlan` is the single decider all
three consult once per request: a fixed schedule first, then seeded chance.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FAULT_KINDS", "Fault", "FaultPlan"]

FAULT_KINDS = ("drop_after", "reset_before", "status", "slow")


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    ============== ==================================================================
    kind           what happens to the request
    ============== ==================================================================
    "drop_after"   the server acts (charges), then the answer is lost: the
                   connection closes without a response
    "reset_before" the connection is reset before the request reaches the server
    "status"       ``status`` is answered without reaching the server (with a
                   ``Retry-After: retry_after`` header if given): 503, 429, ...
    "slow"         the server acts, the answer is held ``delay`` seconds: past the
                   client's read timeout it is a timeout, else a slow answer
    ============== ==================================================================

    The constructors read better in tests: ``Fault.lost_response()``,
    ``Fault.reset()``, ``Fault.http(503)``, ``Fault.rate_limited("1")``,
    ``Fault.slow_answer(2.0)``.
    """

    kind: str
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"Fault kind must be one of {', '.join(FAULT_KINDS)}; got {self.kind!r}"
            )
        if self.kind == "status" and not (
            isinstance(self.status, int) and 100 <= self.status <= 599
        ):
            raise ValueError(
                f"Fault status must be an HTTP status code 100-599, got {self.status!r}"
            )
        if self.kind == "slow" and not (isinstance(self.delay, (int, float)) and self.delay > 0):
            raise ValueError(
                "a 'slow' Fault needs delay=SECONDS > 0 (how long the answer is held), "
                f"got {self.delay!r}"
            )

    @classmethod
    def lost_response(cls) -> Fault:
        return cls("drop_after")

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset_before")

    @classmethod
    def http(cls, status: int, retry_after: str | None = None) -> Fault:
        return cls("status", status=status, retry_after=retry_after)

    @classmethod
    def rate_limited(cls, retry_after: str = "1") -> Fault:
        return cls("status", status=429, retry_after=retry_after)

    @classmethod
    def slow_answer(cls, delay: float) -> Fault:
        return cls("slow", delay=delay)

    @property
    def label(self) -> str:
        """A short name for counting: the kind, or ``status_503`` and the like."""
        return f"status_{self.status}" if self.kind == "status" else self.kind


class FaultPlan:
    """Which fault (if any) hits the next request: by schedule, then by seeded chance.

    ``schedule`` is consumed first, one entry per request (None: no fault). After it,
    each request gets a fault with probability ``rate``, drawn from ``kinds`` with a
    ``random.Random(seed)``: the same seed gives the same sequence of decisions.
    ``max_faults`` bounds the chance-drawn faults (None: unbounded). ``injected``
    counts what was handed out, by `Fault.label`. Safe to share between threads.
    """

    def __init__(
        self,
        schedule: Sequence[Fault | None] = (),
        *,
        rate: float = 0.0,
        kinds: Sequence[Fault] = (Fault("drop_after"), Fault("reset_before"), Fault("status", 503)),
        seed: int = 0,
        max_faults: int | None = None,
    ) -> None:
        if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be a probability between 0 and 1, got {rate!r}")
        if rate and not kinds:
            raise ValueError("kinds must name at least one Fault when rate > 0")
        if any(f is not None and not isinstance(f, Fault) for f in schedule):
            raise TypeError("schedule entries must be samekey.testing.Fault or None")
        self._schedule = list(schedule)
        self._rate = float(rate)
        self._kinds = list(kinds)
        self._random = random.Random(seed)
        self._max_faults = max_faults
        self._drawn = 0
        self._lock = threading.Lock()
        self.decisions = 0
        self.injected: Counter[str] = Counter()

    def next(self) -> Fault | None:
        """The fault for the next request, or None; counted in ``injected``."""
        with self._lock:
            self.decisions += 1
            fault = self._decide()
            if fault is not None:
                self.injected[fault.label] += 1
            return fault

    def _decide(self) -> Fault | None:
        if self._schedule:
            return self._schedule.pop(0)
        if not self._rate or (self._max_faults is not None and self._drawn >= self._max_faults):
            return None
        # draw both numbers every time so the sequence depends only on the seed
        hit, pick = self._random.random(), self._random.randrange(len(self._kinds))
        if hit >= self._rate:
            return None
        self._drawn += 1
        return self._kinds[pick]

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def __repr__(self) -> str:
        return (
            f"FaultPlan(rate={self._rate}, scheduled={len(self._schedule)}, "
            f"injected={dict(self.injected)})"
        )

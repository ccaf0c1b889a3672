"""Fault-injecting httpx transports, to put under your own client in your own tests.

``FaultTransport(httpx.HTTPTransport(), [Fault.lost_response()])`` lets the first
request reach the server and then loses its answer, exactly the moment where a
naive retry pays twice. One decider (`_Decider`, no I/O) says what to do with a
request; the sync and the async transport only carry it out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import httpx

from ._faults import Fault, FaultPlan

__all__ = ["AsyncFaultTransport", "FaultTransport"]

FaultsArg = FaultPlan | Sequence[Fault | None] | None
RequestFilter = Callable[[httpx.Request], bool]


@dataclass(frozen=True)
class _Decision:
    fault: Fault | None = None
    error_before: Exception | None = None  # raise without calling the wrapped transport
    answer: httpx.Response | None = None  # answer without calling the wrapped transport
    error_after: Exception | None = None  # call it, read and drop its answer, then raise
    wait: float = 0.0  # call it, then wait this long before returning its answer


class _Decider:
    """Turns the plan's next fault into what a driver must do; counts what it decided."""

    def __init__(self, faults: FaultsArg, only: RequestFilter | None) -> None:
        self.plan = faults if isinstance(faults, FaultPlan) else FaultPlan(faults or ())
        self.only = only
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, *what: str) -> None:
        with self._lock:
            self.counts.update(what)

    def decide(self, request: httpx.Request) -> _Decision:
        fault = self.plan.next() if self.only is None or self.only(request) else None
        if fault is None:
            self._count("requests", "passed")
            return _Decision()
        reaches_server = fault.kind in ("drop_after", "slow")
        self._count("requests", fault.label, *(("passed",) if reaches_server else ()))
        where = f"{request.method} {request.url}"
        if fault.kind == "reset_before":
            reset = httpx.ConnectError(
                f"[samekey.testing] connection reset before {where} was sent", request=request
            )
            return _Decision(fault, error_before=reset)
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            answer = httpx.Response(
                fault.status,
                headers=headers,
                json={"error": "injected by samekey.testing"},
                request=request,
            )
            return _Decision(fault, answer=answer)
        if fault.kind == "drop_after":
            lost = httpx.RemoteProtocolError(
                f"[samekey.testing] {where} reached the server, which answered; the "
                "answer was lost",
                request=request,
            )
            return _Decision(fault, error_after=lost)
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        if read_timeout is not None and fault.delay >= read_timeout:
            # the answer would arrive after the client stopped waiting: no need to really wait
            late = httpx.ReadTimeout(
                f"[samekey.testing] {where} reached the server; its answer took {fault.delay:g} s, "
                f"past the {read_timeout:g} s read timeout",
                request=request,
            )
            return _Decision(fault, error_after=late)
        return _Decision(fault, wait=fault.delay)


class _Deciding:
    """What both fault transports expose of their shared decider."""

    _decider: _Decider

    @property
    def plan(self) -> FaultPlan:
        return self._decider.plan

    @property
    def counts(self) -> Counter[str]:
        return self._decider.counts


class FaultTransport(httpx.BaseTransport, _Deciding):
    """Wraps a transport and injects `Fault`s: by schedule, or by seeded chance with a `FaultPlan`.

    - ``drop_after``: the wrapped transport is called (the server acts), its answer
      is read and dropped, then ``httpx.RemoteProtocolError`` is raised.
    - ``reset_before``: ``httpx.ConnectError``; the wrapped transport is not called.
    - ``status``: that status (and ``Retry-After``) is answered; not called.
    - ``slow``: called; if ``delay`` reaches the request's read timeout,
      ``httpx.ReadTimeout`` is raised at once (no real waiting), else the answer is
      returned after ``delay`` seconds.

    ``only`` limits faults to the requests it accepts (e.g. ``lambda r: r.method ==
    "POST"``). ``counts`` holds ``requests``, ``passed`` (reached the wrapped
    transport) and one entry per fault label.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        faults: FaultsArg = None,
        *,
        only: RequestFilter | None = None,
    ) -> None:
        self.inner = transport if transport is not None else httpx.HTTPTransport()
        self._decider = _Decider(faults, only)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        decision = self._decider.decide(request)
        if decision.error_before is not None:
            raise decision.error_before
        if decision.answer is not None:
            return decision.answer
        response = self.inner.handle_request(request)
        if decision.error_after is not None:
            try:
                response.read()
            finally:
                response.close()
            raise decision.error_after
        if decision.wait:
            time.sleep(decision.wait)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncFaultTransport(httpx.AsyncBaseTransport, _Deciding):
    """The async twin of `FaultTransport`: the same decisions, awaited I/O."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        faults: FaultsArg = None,
        *,
        only: RequestFilter | None = None,
    ) -> None:
        self.inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._decider = _Decider(faults, only)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        decision = self._decider.decide(request)
        if decision.error_before is not None:
            raise decision.error_before
        if decision.answer is not None:
            return decision.answer
        response = await self.inner.handle_async_request(request)
        if decision.error_after is not None:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise decision.error_after
        if decision.wait:
            await anyio.sleep(decision.wait)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

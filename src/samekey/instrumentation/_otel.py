"""OpenTelemetry: a span per call with a child span per attempt, and samekey's metrics.

Spans and instruments come from the API's global providers (a proxy follows a provider the
application sets later). The call's span is started when its flow is made and ended by
`_events` on every path: returned, raised, interrupted. An attempt's span is the current
span while the driver sends it, so an instrumented transport's span nests under it. No
attribute holds a credential: the URL is the journal's (secrets redacted), error texts are
the redacted ones, and no exception is recorded on a span (its message may quote a token).
Metric attributes take few values (a method, an outcome, a status, an error class), never a
key or an operation name.
"""

from __future__ import annotations

import httpx
from opentelemetry import context, metrics, trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.util.types import AttributeValue

from .._engine import Engine
from .._hooks import EndDetails
from .._version import __version__

__all__ = ["tracker"]

_tracer = trace.get_tracer("samekey", __version__)
_meter = metrics.get_meter("samekey", __version__)

_counter, _histogram = _meter.create_counter, _meter.create_histogram
OPERATIONS = _counter("samekey.operations", "{operation}", "Calls ended, by samekey.outcome")
DURATION = _histogram("samekey.operation.duration", "s", "A call's time, by samekey.outcome")
ATTEMPTS = _counter("samekey.attempts", "{attempt}", "Attempts sent")
RETRIES = _counter("samekey.retries", "{retry}", "Attempts retried, by error.type")
GIVE_UPS = _counter("samekey.give_ups", "{operation}", "Calls given up (RetriesExhausted)")
REPLAYS = _counter("samekey.replays", "{operation}", "Calls answered from the journal")
LEASE_WAITS = _counter("samekey.lease.waits", "{wait}", "Waits for another caller's lease")
JOURNAL = _histogram("samekey.journal.duration", "s", "Journal calls, by samekey.journal.call")

_FAILED = {"refused", "gave_up", "failed", "interrupted"}


class _Tracker:
    """One call's span, and the metrics of what happens in it."""

    __slots__ = ("_attempt", "_method", "_span", "_token")

    def __init__(self, method: str, url: str) -> None:
        self._method = {"http.request.method": method}
        attributes = {"http.request.method": method, "url.full": url}
        self._span = _tracer.start_span(f"samekey {method}", attributes=attributes)
        self._attempt: trace.Span | None = None
        self._token: object = None

    def attempt_started(self, number: int) -> None:
        ATTEMPTS.add(1, self._method)
        if not self._span.is_recording():
            return
        parent = trace.set_span_in_context(self._span)
        attributes = {"samekey.attempt": number}
        self._attempt = _tracer.start_span("samekey attempt", parent, attributes=attributes)
        self._token = context.attach(trace.set_span_in_context(self._attempt))

    def attempt_ended(self, status: int | None, error_type: str | None, retried: bool) -> None:
        if retried:
            RETRIES.add(1, {"error.type": error_type or str(status)})
        span, self._attempt = self._attempt, None
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
        span.set_attribute("samekey.attempt.outcome", "retried" if retried else "final")
        if trace.get_current_span() is span:  # not when a collected task's flow is closed elsewhere
            context.detach(self._token)  # type: ignore[arg-type]
        span.end()

    def lease_waited(self) -> None:
        LEASE_WAITS.add(1)
        self._span.add_event("samekey.lease_wait")

    def journal_call(self, name: str, seconds: float) -> None:
        JOURNAL.record(seconds, {"samekey.journal.call": name})

    def ended(self, details: EndDetails) -> None:
        outcome = {**self._method, "samekey.outcome": details.outcome}
        OPERATIONS.add(1, outcome)
        DURATION.record(details.duration, outcome)
        if details.outcome == "gave_up":
            GIVE_UPS.add(1, self._method)
        elif details.outcome == "replayed":
            REPLAYS.add(1, self._method)
        span = self._span
        if span.is_recording():
            span.set_attributes(_span_attributes(details))
            if details.outcome in _FAILED:
                span.set_status(trace.StatusCode.ERROR, details.reason or details.outcome)
        span.end()


def _span_attributes(details: EndDetails) -> dict[str, AttributeValue]:
    refused = details.outcome == "refused"
    found: dict[str, AttributeValue | None] = {
        "samekey.operation": details.operation,
        "samekey.key": details.key,
        "samekey.outcome": details.outcome,
        "samekey.attempts": details.attempts,
        "samekey.this_run": details.this_run,
        "http.response.status_code": details.status_code,
        # as HTTP client spans have it: a 4xx's status, else the error's class
        "error.type": str(details.status_code) if refused else details.error_type,
    }
    return {name: value for name, value in found.items() if value is not None}


try:  # the API's stand-in until the application sets a MeterProvider
    from opentelemetry.metrics import _internal as _metrics_api
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _NO_METERS: tuple[type, ...] = (NoOpMeterProvider, _ProxyMeterProvider)
except ImportError:  # another version of the API: count on its no-op instruments
    _metrics_api = metrics  # type: ignore[misc]
    _NO_METERS = ()
_NO_TRACERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def _none_set() -> bool:
    """No provider set yet. The API's getters look ``os.environ`` up on every call (~2 µs a
    call, every request); its globals, read first, say so at once. Providers named by
    environment variables were loaded by the get_tracer/get_meter calls above, at import."""
    if getattr(trace, "_TRACER_PROVIDER", False) is None and (
        getattr(_metrics_api, "_METER_PROVIDER", False) is None
    ):
        return True
    return isinstance(trace.get_tracer_provider(), _NO_TRACERS) and isinstance(
        metrics.get_meter_provider(), _NO_METERS
    )


def tracker(engine: Engine, request: httpx.Request) -> _Tracker | None:
    """The tracker of one call; None while the application has set no provider (nothing to do)."""
    if _none_set():
        return None
    return _Tracker(request.method, engine.redactor.url(request.url))

"""OpenTelemetry: the spans and metrics an application's providers receive, read back in memory.

The providers are set once for the process, as an application sets them (OpenTelemetry
allows one global provider each); every test reads what its own calls added.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import samekey
from client_helpers import NeverAnswers, cancelled_once_sent
from samekey import instrumentation

URL = "https://acct:url-secret-1@pay.example/charges?api_key=sk_live_url2&amount=5"
SHOWN_URL = "https://pay.example/charges?api_key=REDACTED&amount=5"
SECRETS = ("url-secret-1", "acct:", "sk_live_url2", "sk_live_header3")
HEADERS = {"Authorization": "Bearer sk_live_header3"}
NO_BACKOFF = samekey.RetryPolicy(initial_delay=0, max_delay=0, budget=None)


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def counts(self) -> Counter[tuple[str, frozenset[tuple[str, Any]]]]:
        """Each metric's total (a counter's sum, a histogram's count), by its attributes."""
        totals: Counter[tuple[str, frozenset[tuple[str, Any]]]] = Counter()
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = point.count if isinstance(point, HistogramDataPoint) else point
                        value = value.value if isinstance(value, NumberDataPoint) else value
                        totals[metric.name, frozenset((point.attributes or {}).items())] += int(
                            value
                        )
        return totals


_PROCESS: Otel | None = None


@pytest.fixture
def otel() -> Iterator[Otel]:
    global _PROCESS
    if _PROCESS is None:
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _PROCESS = Otel(exporter, reader)
    _PROCESS.spans.clear()
    yield _PROCESS
    _PROCESS.spans.clear()


def _by_name(otel: Otel) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in otel.spans.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def _no_secret_in(spans: list[ReadableSpan]) -> None:
    for span in spans:
        text = repr(span.to_json())
        for secret in SECRETS:
            assert secret not in text, (secret, span.name)


def _answers(*answers: httpx.Response | Exception) -> httpx.MockTransport:
    pending = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        current = trace.get_current_span()  # what an instrumented transport's span would nest under
        seen_current.append(getattr(current, "name", None))
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    seen_current: list[str | None] = []
    transport = httpx.MockTransport(handler)
    transport.current = seen_current  # type: ignore[attr-defined]
    return transport


def _check_completed_after_a_retry(otel: Otel, key: str) -> None:
    spans = _by_name(otel)
    [call] = spans["samekey POST"]
    attempts = sorted(spans["samekey attempt"], key=lambda s: s.start_time or 0)
    assert dict(call.attributes or {}) == {
        "samekey.operation": "order-1/charge", "samekey.key": key, "samekey.outcome": "completed",
        "samekey.attempts": 2, "samekey.this_run": 2, "http.request.method": "POST",
        "url.full": SHOWN_URL,
        "http.response.status_code": 201,
    }  # fmt: skip
    assert call.status.status_code == trace.StatusCode.UNSET
    assert [dict(a.attributes or {}) for a in attempts] == [
        {
            "samekey.attempt": 1,
            "http.response.status_code": 503,
            "samekey.attempt.outcome": "retried",
        },
        {
            "samekey.attempt": 2,
            "http.response.status_code": 201,
            "samekey.attempt.outcome": "final",
        },
    ]
    assert call.context is not None
    assert all(a.parent is not None and a.parent.span_id == call.context.span_id for a in attempts)
    _no_secret_in([call, *attempts])


def test_a_span_per_call_and_one_per_attempt(otel: Otel, journal_path: Path) -> None:
    transport = _answers(httpx.Response(503), httpx.Response(201))
    with samekey.Client(journal=journal_path, policy=NO_BACKOFF, transport=transport) as client:
        response = client.post(URL, json={}, operation="order-1/charge", headers=HEADERS)
    info = samekey.operation_info(response)
    assert info is not None and info.key is not None
    _check_completed_after_a_retry(otel, info.key)
    assert transport.current == ["samekey attempt"] * 2  # type: ignore[attr-defined]  # current while sent


def test_the_async_client_reports_alike(otel: Otel, journal_path: Path) -> None:
    transport = _answers(httpx.Response(503), httpx.Response(201))

    async def story() -> httpx.Response:
        async with samekey.AsyncClient(
            journal=journal_path, policy=NO_BACKOFF, transport=transport
        ) as client:
            return await client.post(URL, json={}, operation="order-1/charge", headers=HEADERS)

    info = samekey.operation_info(asyncio.run(story()))
    assert info is not None and info.key is not None
    _check_completed_after_a_retry(otel, info.key)
    assert transport.current == ["samekey attempt"] * 2  # type: ignore[attr-defined]


def test_a_cancelled_call_ends_its_spans(otel: Otel, journal_path: Path) -> None:
    async def story() -> None:
        transport = NeverAnswers()
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            await cancelled_once_sent(client, transport, URL, json={}, headers=HEADERS)
            assert (
                trace.get_current_span() is trace.INVALID_SPAN
            )  # the attempt's span is current no more

    asyncio.run(story())
    spans = _by_name(otel)
    [call], [attempt] = spans["samekey POST"], spans["samekey attempt"]
    assert call.attributes is not None and attempt.attributes is not None
    assert (
        call.attributes["samekey.outcome"] == "interrupted"
        and call.attributes["error.type"] == "CancelledError"
    )
    assert call.status.status_code == trace.StatusCode.ERROR
    assert dict(attempt.attributes) == {
        "samekey.attempt": 1, "error.type": "CancelledError", "samekey.attempt.outcome": "final",
    }  # fmt: skip
    _no_secret_in([call, attempt])


def test_each_outcome_on_the_span_and_in_the_metrics(
    otel: Otel, journal_path: Path, no_sleep: None
) -> None:
    before = otel.counts()
    transport = _answers(
        httpx.Response(201),
        httpx.Response(402),
        httpx.ReadTimeout("slow"),
        httpx.Response(503),
        httpx.Response(503),
    )
    policy = samekey.RetryPolicy(max_attempts=3)
    with samekey.Client(journal=journal_path, transport=transport, policy=policy) as client:
        assert client.post(URL, json={}, operation="paid", headers=HEADERS).status_code == 201
        assert (
            client.post(URL, json={}, operation="paid", headers=HEADERS).status_code == 201
        )  # replayed
        assert client.post(URL, json={}, operation="declined", headers=HEADERS).status_code == 402
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={}, operation="busy", headers=HEADERS)
        with pytest.raises(samekey.OperationMismatch):
            client.post(URL, json={"other": 1}, operation="paid", headers=HEADERS)
    calls = sorted(_by_name(otel)["samekey POST"], key=lambda s: s.start_time or 0)
    shown = [(s.attributes or {}).get("samekey.outcome") for s in calls]
    assert shown == ["completed", "replayed", "refused", "gave_up", "failed"]
    errors = [(s.attributes or {}).get("error.type") for s in calls]
    assert errors == [None, None, "402", "RetriesExhausted", "OperationMismatch"]
    assert [s.status.status_code == trace.StatusCode.ERROR for s in calls] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert calls[3].status.description == "max_attempts reached (last: HTTP 503)"
    _no_secret_in(list(otel.spans.get_finished_spans()))

    added = otel.counts() - before
    post = frozenset({("http.request.method", "POST")})
    assert (
        added["samekey.attempts", post] == 5
    )  # 201, 402, the timeout, 503, 503: none for a replay
    assert added["samekey.retries", frozenset({("error.type", "ReadTimeout")})] == 1
    assert added["samekey.retries", frozenset({("error.type", "503")})] == 1
    assert added["samekey.give_ups", post] == 1 and added["samekey.replays", post] == 1
    for outcome in ("completed", "replayed", "refused", "gave_up", "failed"):
        assert added["samekey.operations", post | {("samekey.outcome", outcome)}] == 1
        assert added["samekey.operation.duration", post | {("samekey.outcome", outcome)}] == 1
    journal_calls = {
        dict(attrs)["samekey.journal.call"]: n
        for (name, attrs), n in added.items()
        if "journal" in name
    }
    assert (
        journal_calls["Claim"] == 5
        and journal_calls["Complete"] == 2
        and journal_calls["RecordAttempt"] == 2
    )
    labels = {
        name for _, attrs in otel.counts() for name, _ in attrs
    }  # few values each: no key, no operation
    assert labels == {
        "http.request.method",
        "samekey.outcome",
        "error.type",
        "samekey.journal.call",
    }


def test_a_wait_for_another_callers_lease_is_counted(otel: Otel, journal_path: Path) -> None:
    before = otel.counts()

    async def story() -> list[httpx.Response]:
        release = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(201)

        async with samekey.AsyncClient(
            journal=journal_path, transport=httpx.MockTransport(handler)
        ) as client:
            first = asyncio.create_task(client.post(URL, json={}, operation="order-1/charge"))
            await asyncio.sleep(0.05)  # the first holds the lease, on the wire
            second = asyncio.create_task(client.post(URL, json={}, operation="order-1/charge"))
            await asyncio.sleep(0.1)
            release.set()
            return [await first, await second]

    _first, second = asyncio.run(story())
    info = samekey.operation_info(second)
    assert info is not None and info.replayed  # it waited, then found the answer
    waits = (otel.counts() - before)["samekey.lease.waits", frozenset()]
    assert waits >= 1
    [waited] = [s for s in _by_name(otel)["samekey POST"] if s.events]
    assert {e.name for e in waited.events} == {"samekey.lease_wait"}


def test_set_opentelemetry_turns_it_off_and_on(otel: Otel, journal_path: Path) -> None:
    assert instrumentation.opentelemetry_enabled()
    transport = _answers(httpx.Response(201), httpx.Response(201))
    with samekey.Client(journal=journal_path, transport=transport) as client:
        instrumentation.set_opentelemetry(False)
        try:
            assert not instrumentation.opentelemetry_enabled()
            client.post("https://pay.example/charges", json={}, operation="off")
            assert otel.spans.get_finished_spans() == ()
        finally:
            instrumentation.set_opentelemetry(True)
        client.post("https://pay.example/charges", json={}, operation="on")
    assert [s.name for s in otel.spans.get_finished_spans()] == ["samekey attempt", "samekey POST"]
    with pytest.raises(TypeError, match="set_opentelemetry takes True or False, got 'no'"):
        instrumentation.set_opentelemetry("no")  # type: ignore[arg-type]


def _python(code: str, tmp_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


CALL = """
    import httpx, samekey
    from samekey import instrumentation
    client = samekey.Client(journal="j.sqlite3", transport=httpx.MockTransport(lambda r: \
httpx.Response(201)))
    def call(n):
        return client.post("https://pay.example/charges", json={}, operation=f"op-{n}").status_code
"""


def test_on_by_itself_once_the_application_sets_a_provider(tmp_path: Path) -> None:
    # a fresh process: no provider yet (nothing to do), then one set after the client was made
    out = _python(
        CALL
        + """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    assert instrumentation.track(client.engine, httpx.Request("POST", "https://x")) is None
    print(call(1))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    print(call(2), [s.name for s in exporter.get_finished_spans()])
    """,
        tmp_path,
    )
    assert out.splitlines() == ["201", "201 ['samekey attempt', 'samekey POST']"]


def test_without_opentelemetry_installed_samekey_works_as_before(tmp_path: Path) -> None:
    out = _python(
        """
    import sys
    sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
    """
        + CALL
        + """
    print(call(1), instrumentation.opentelemetry_enabled(), "opentelemetry.trace" in sys.modules)
    """,
        tmp_path,
    )
    assert out == "201 False False"


def test_a_flow_closed_mid_send_ends_its_spans(otel: Otel, journal_path: Path) -> None:
    from samekey._actions import Send
    from samekey._contract import JournalCall
    from samekey._flow import operation_flow

    with samekey.Client(journal=journal_path) as client:
        request = client.build_request(
            "POST", URL, json={}, extensions={samekey.OPERATION_EXTENSION: "op"}
        )
        flow = operation_flow(client.engine, request)
        action = next(flow)
        while isinstance(action, JournalCall):
            action = flow.send(action.run(client.engine.journal))
        assert isinstance(action, Send) and trace.get_current_span().name == "samekey attempt"  # type: ignore[attr-defined]
        flow.close()
    assert trace.get_current_span() is trace.INVALID_SPAN
    spans = _by_name(otel)
    [call], [attempt] = spans["samekey POST"], spans["samekey attempt"]
    assert (call.attributes or {})["samekey.outcome"] == "interrupted"
    assert (attempt.attributes or {})["samekey.attempt.outcome"] == "final"

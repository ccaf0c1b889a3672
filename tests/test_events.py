"""on_end hooks: one call per request with how it
ended, the same from the sync and the async client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import samekey
from client_helpers import NeverAnswers, cancelled_once_sent
from samekey import EndDetails

URL = "https://pay.example/charges"
NO_BACKOFF = samekey.RetryPolicy(initial_delay=0, max_delay=0, max_retry_after=0.01, budget=None)
Handler = Callable[[httpx.Request], Any]


def _answers(*answers: httpx.Response | BaseException) -> Handler:
    pending = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = pending.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return handler


def _post(
    kind: str,
    journal: Path,
    handler: Handler,
    ends: list[EndDetails],
    policy: samekey.RetryPolicy = NO_BACKOFF,
) -> httpx.Response:
    """One POST of order-1/charge from a sync or an
    async samekey client with ``on_end=ends.append``."""
    options: dict[str, Any] = {"journal": journal, "policy": policy, "on_end": ends.append}
    if kind == "sync":
        with samekey.Client(transport=httpx.MockTransport(handler), **options) as client:
            return client.post(URL, json={"amount": 1}, operation="order-1/charge")

    async def story() -> httpx.Response:
        async with samekey.AsyncClient(transport=httpx.MockTransport(handler), **options) as client:
            return await client.post(URL, json={"amount": 1}, operation="order-1/charge")

    return asyncio.run(story())


def _key(journal: Path, operation: str = "order-1/charge") -> str:
    with samekey.Journal(journal, read_only=True) as store:
        record = store.get(operation)
    assert record is not None
    return record.key


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_completed_then_replayed(kind: str, journal_path: Path) -> None:
    ends: list[EndDetails] = []
    handler = _answers(httpx.Response(503), httpx.Response(201, json={"id": "ch_1"}))
    assert _post(kind, journal_path, handler, ends).status_code == 201
    assert _post(kind, journal_path, handler, ends).status_code == 201  # answered from the journal
    key = _key(journal_path)
    first, again = ends
    common = {
        "operation": "order-1/charge",
        "key": key,
        "method": "POST",
        "url": URL,
        "status_code": 201,
    }
    assert first == EndDetails(
        **common,
        outcome="completed",
        attempts=2,
        this_run=2,
        duration=first.duration,
        error_type=None,
        reason=None,
    )
    assert again == EndDetails(
        **common,
        outcome="replayed",
        attempts=2,
        this_run=0,
        duration=again.duration,
        error_type=None,
        reason=None,
    )
    assert 0 < first.duration < 5 and 0 < again.duration < 5


@KINDS
def test_a_definitive_4xx_is_refused(kind: str, journal_path: Path) -> None:
    ends: list[EndDetails] = []
    declined = httpx.Response(402, json={"error": "card_declined"})
    assert _post(kind, journal_path, _answers(declined), ends).status_code == 402
    [end] = ends
    assert (end.outcome, end.status_code, end.attempts, end.error_type, end.reason) == (
        "refused",
        402,
        1,
        None,
        None,
    )


@KINDS
def test_gave_up_says_why_and_the_attempts_of_every_run(kind: str, journal_path: Path) -> None:
    ends: list[EndDetails] = []
    policy = samekey.RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0, budget=None)
    handler = _answers(
        httpx.Response(503), httpx.Response(503), httpx.Response(503), httpx.ReadTimeout("slow")
    )
    for _run in range(2):
        with pytest.raises(samekey.RetriesExhausted):
            _post(kind, journal_path, handler, ends, policy)
    first, second = ends
    assert (first.outcome, first.attempts, first.this_run, first.status_code) == (
        "gave_up",
        2,
        2,
        503,
    )
    assert (
        first.error_type == "RetriesExhausted"
        and first.reason == "max_attempts reached (last: HTTP 503)"
    )
    assert (second.attempts, second.this_run, second.status_code) == (
        4,
        2,
        None,
    )  # the next run: attempts 3, 4
    assert second.reason == "max_attempts reached (last: ReadTimeout: slow)"
    assert first.key == second.key == _key(journal_path)


@KINDS
def test_an_error_not_to_retry_failed(kind: str, journal_path: Path) -> None:
    ends: list[EndDetails] = []
    with pytest.raises(httpx.UnsupportedProtocol):
        _post(kind, journal_path, _answers(httpx.UnsupportedProtocol("no such scheme")), ends)
    [end] = ends
    assert (end.outcome, end.error_type, end.reason) == (
        "failed",
        "UnsupportedProtocol",
        "UnsupportedProtocol: no such scheme",
    )
    assert (end.attempts, end.this_run, end.status_code, end.key) == (
        1,
        1,
        None,
        _key(journal_path),
    )


def test_a_reused_operation_name_failed_before_any_attempt(journal_path: Path) -> None:
    ends: list[EndDetails] = []
    transport = httpx.MockTransport(_answers(httpx.Response(201)))
    with samekey.Client(journal=journal_path, transport=transport, on_end=ends.append) as client:
        client.post(URL, json={"amount": 1}, operation="order-1/charge")
        with pytest.raises(samekey.OperationMismatch):
            client.post(URL, json={"amount": 2}, operation="order-1/charge")
    assert [e.outcome for e in ends] == ["completed", "failed"]
    assert (ends[1].error_type, ends[1].this_run, ends[1].key) == (
        "OperationMismatch",
        0,
        _key(journal_path),
    )


def test_a_cancelled_async_call_is_interrupted_once(journal_path: Path) -> None:
    ends: list[EndDetails] = []

    async def story() -> None:
        transport = NeverAnswers()
        async with samekey.AsyncClient(
            journal=journal_path, transport=transport, on_end=[ends.append]
        ) as client:
            await cancelled_once_sent(client, transport, URL, json={"amount": 1})

    asyncio.run(story())
    [end] = ends
    assert (end.outcome, end.error_type, end.attempts, end.this_run, end.status_code) == (
        "interrupted", "CancelledError", 1, 1, None,
    )  # fmt: skip
    assert end.key == _key(journal_path)
    with samekey.Journal(journal_path, read_only=True) as store:
        record = store.get("order-1/charge")
    assert (
        record is not None and record.pending and record.lease_owner is None
    )  # the key kept, its lease freed


def test_ctrl_c_during_a_sync_call_is_interrupted(journal_path: Path) -> None:
    ends: list[EndDetails] = []
    with pytest.raises(KeyboardInterrupt):
        _post("sync", journal_path, _answers(KeyboardInterrupt()), ends)
    [end] = ends
    assert (end.outcome, end.error_type, end.this_run) == ("interrupted", "KeyboardInterrupt", 1)


@KINDS
def test_a_request_without_operation_ends_without_a_key(kind: str, journal_path: Path) -> None:
    ends: list[EndDetails] = []
    handler = _answers(httpx.Response(502), httpx.Response(200))
    if kind == "sync":
        with samekey.Client(
            journal=journal_path,
            policy=NO_BACKOFF,
            transport=httpx.MockTransport(handler),
            on_end=ends.append,
        ) as client:
            client.get(URL)
    else:

        async def story() -> None:
            transport = httpx.MockTransport(handler)
            async with samekey.AsyncClient(
                journal=journal_path, policy=NO_BACKOFF, transport=transport, on_end=ends.append
            ) as client:
                await client.get(URL)

        asyncio.run(story())
    [end] = ends
    assert (end.operation, end.key, end.method, end.outcome, end.attempts, end.status_code) == (
        None, None, "GET", "completed", 2, 200,
    )  # fmt: skip


def test_transports_under_plain_httpx_clients_take_on_end(journal_path: Path) -> None:
    ends: list[EndDetails] = []
    transport = samekey.SameKeyTransport(
        httpx.MockTransport(_answers(httpx.Response(201))), journal=journal_path, on_end=ends.append
    )
    with httpx.Client(transport=transport) as client:
        client.post(URL, json={}, extensions={samekey.OPERATION_EXTENSION: "order-1/charge"})
    assert [e.outcome for e in ends] == ["completed"]


def test_a_hook_that_raises_is_logged_and_the_answer_stands(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def broken_metrics(details: EndDetails) -> None:
        raise RuntimeError("metrics backend down")

    def tamper(details: EndDetails) -> None:
        details.outcome = "failed"  # type: ignore[misc]  # frozen: raises, so nothing changes

    caplog.set_level(logging.ERROR, logger="samekey")
    hooks = [broken_metrics, tamper, lambda details: seen.append(details.outcome)]
    transport = httpx.MockTransport(_answers(httpx.Response(201)))
    with samekey.Client(journal=journal_path, transport=transport, on_end=hooks) as client:
        assert client.post(URL, json={}, operation="op").status_code == 201
    assert seen == ["completed"]
    failures = [r for r in caplog.records if r.name == "samekey" and r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in failures if r.exc_info] == [
        RuntimeError,
        dataclasses.FrozenInstanceError,
    ]
    message = failures[0].getMessage()
    assert (
        "on_end hook" in message and "broken_metrics" in message and "outcome=completed" in message
    )


def test_secrets_in_the_url_headers_or_error_text_do_not_reach_a_hook(journal_path: Path) -> None:
    def server(
        request: httpx.Request,
    ) -> httpx.Response:  # an error quoting the request's credential
        raise httpx.UnsupportedProtocol(f"bad header {request.headers['Authorization']!r}")

    ends: list[EndDetails] = []
    url = "https://acct:url-secret-1@pay.example/charges?api_key=sk_live_url2&amount=5"
    with samekey.Client(
        journal=journal_path, transport=httpx.MockTransport(server), on_end=ends.append
    ) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            client.post(
                url, json={}, operation="op", headers={"Authorization": "Bearer sk_live_header3"}
            )
    [end] = ends
    assert end.url == "https://pay.example/charges?api_key=REDACTED&amount=5"
    assert end.reason == "UnsupportedProtocol: bad header 'REDACTED'"
    for secret in ("url-secret-1", "acct:", "sk_live_url2", "sk_live_header3"):
        assert secret not in repr(end)


@pytest.mark.parametrize(
    "make",
    [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport, samekey.AsyncSameKeyTransport],
)
def test_something_that_is_not_an_end_hook_is_refused_by_name(
    journal_path: Path, make: Any
) -> None:
    async def async_hook(details: EndDetails) -> None: ...

    with pytest.raises(
        TypeError, match=r"on_end must be a function taking a samekey.EndDetails.*got 3"
    ):
        make(journal=journal_path, on_end=3)
    with pytest.raises(TypeError, match=r"on_end hooks must be callables.*got 'count'"):
        make(journal=journal_path, on_end=[print, "count"])
    with pytest.raises(
        TypeError, match=r"async_hook \(async def\) would never run: make it a plain def"
    ):
        make(journal=journal_path, on_end=async_hook)
    assert not journal_path.exists()  # refused before the journal was opened


def test_a_flow_closed_mid_send_still_ends_once(journal_path: Path) -> None:
    # a driver dropping its flow at a Send (no interruption thrown in): closed, it still ends
    from samekey._actions import Send
    from samekey._contract import JournalCall
    from samekey._flow import operation_flow

    ends: list[EndDetails] = []
    with samekey.Client(journal=journal_path, on_end=ends.append) as client:
        request = client.build_request(
            "POST", URL, json={}, extensions={samekey.OPERATION_EXTENSION: "op"}
        )
        flow = operation_flow(client.engine, request)
        action = next(flow)
        while isinstance(action, JournalCall):
            action = flow.send(action.run(client.engine.journal))
        assert isinstance(action, Send)
        flow.close()
    [end] = ends
    assert (end.outcome, end.error_type, end.this_run, end.operation) == (
        "interrupted",
        "GeneratorExit",
        1,
        "op",
    )

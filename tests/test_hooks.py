"""on_retry hooks: one call per retry with its details, from every client and transport."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import samekey
from samekey import RetryDetails

URL = "https://pay.example/charges"
# no backoff: a Retry-After (whole seconds) is capped to 10 ms, so every wait is known exactly
NO_BACKOFF = samekey.RetryPolicy(initial_delay=0, max_delay=0, max_retry_after=0.01, budget=None)


def _busy(retry_after: str | None = None) -> httpx.Response:
    return httpx.Response(503, headers={"Retry-After": retry_after} if retry_after else {})


def _sequence(*answers: httpx.Response | Exception) -> httpx.MockTransport:
    """A server answering ``answers`` in order; it keeps every request in ``.seen``."""
    pending = list(answers)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def _seen(transport: httpx.MockTransport) -> list[httpx.Request]:
    return transport.seen  # type: ignore[attr-defined, no-any-return]


def _check_two_retries(
    calls: list[RetryDetails], response: httpx.Response, seen: list[httpx.Request]
) -> None:
    info = samekey.operation_info(response)
    assert response.status_code == 200 and info is not None and info.attempts == 3
    key = seen[0].headers["Idempotency-Key"]
    assert [r.headers["Idempotency-Key"] for r in seen] == [key] * 3
    assert calls == [
        RetryDetails(
            operation="order-1/charge", key=key, method="POST", url=URL, attempt=1, next_wait=0.01,
            waited_so_far=0.0, reason="HTTP 503", status_code=503, error_type=None,
            from_retry_after=True,
        ),
        RetryDetails(
            operation="order-1/charge", key=key, method="POST", url=URL, attempt=2, next_wait=0.0,
            waited_so_far=0.01, reason="HTTP 503", status_code=503, error_type=None,
            from_retry_after=False,
        ),
    ]  # fmt: skip


def test_one_call_per_retry_with_its_details(journal_path: Path) -> None:
    calls: list[RetryDetails] = []
    server = _sequence(_busy("1"), _busy(), httpx.Response(200))
    with samekey.Client(
        journal=journal_path, policy=NO_BACKOFF, transport=server, on_retry=calls.append
    ) as client:
        response = client.post(URL, json={"amount": 1}, operation="order-1/charge")
        _check_two_retries(calls, response, _seen(server))
        # the success is no retry, nor is a replay: nothing more
        assert client.post(URL, json={"amount": 1}, operation="order-1/charge").status_code == 200
    assert len(calls) == 2


def test_async_client_calls_its_hooks_alike(journal_path: Path) -> None:
    calls: list[RetryDetails] = []
    server = _sequence(_busy("1"), _busy(), httpx.Response(200))

    def handler(request: httpx.Request) -> httpx.Response:
        return server.handle_request(request)

    async def story() -> httpx.Response:
        async with samekey.AsyncClient(
            journal=journal_path,
            policy=NO_BACKOFF,
            transport=httpx.MockTransport(handler),
            on_retry=[calls.append],
        ) as client:
            return await client.post(URL, json={"amount": 1}, operation="order-1/charge")

    _check_two_retries(calls, asyncio.run(story()), _seen(server))


def test_transports_under_plain_httpx_clients_take_on_retry(journal_path: Path) -> None:
    calls: list[RetryDetails] = []
    name = {samekey.OPERATION_EXTENSION: "order-1/charge"}
    sync_server = _sequence(_busy("1"), _busy(), httpx.Response(200))
    transport = samekey.SameKeyTransport(
        sync_server, journal=journal_path, policy=NO_BACKOFF, on_retry=calls.append
    )
    with httpx.Client(transport=transport) as client:
        response = client.post(URL, json={"amount": 1}, extensions=name)
    _check_two_retries(calls, response, _seen(sync_server))

    calls.clear()
    async_server = _sequence(_busy("1"), _busy(), httpx.Response(200))

    async def handler(request: httpx.Request) -> httpx.Response:
        return async_server.handle_request(request)

    async def story() -> httpx.Response:
        journal = journal_path.with_name("async.sqlite3")
        wrapped = samekey.AsyncSameKeyTransport(
            httpx.MockTransport(handler),
            journal=journal,
            policy=NO_BACKOFF,
            on_retry=(calls.append,),
        )
        async with httpx.AsyncClient(transport=wrapped) as client:
            return await client.post(URL, json={"amount": 1}, extensions=name)

    _check_two_retries(calls, asyncio.run(story()), _seen(async_server))


@respx.mock
def test_an_error_has_its_text_as_reason_and_no_status(journal_path: Path, no_sleep: None) -> None:
    respx.post(URL).mock(
        side_effect=[httpx.ReadError("connection reset by peer"), httpx.Response(201)]
    )
    calls: list[RetryDetails] = []
    with samekey.Client(journal=journal_path, on_retry=calls.append) as client:
        assert client.post(URL, json={}, operation="op").status_code == 201
    [details] = calls
    assert details.status_code is None and details.reason == "ReadError: connection reset by peer"
    assert details.error_type == "ReadError"  # a bounded label for metrics; reason's text varies
    assert details.next_wait == 0.0 and not details.from_retry_after  # set_testing: no waits


@respx.mock
def test_a_request_without_operation_is_reported_without_one(
    journal_path: Path, no_sleep: None
) -> None:
    respx.get(URL).mock(side_effect=[httpx.Response(502), httpx.Response(200)])
    calls: list[RetryDetails] = []
    with samekey.Client(journal=journal_path, on_retry=calls.append) as client:
        assert client.get(URL).status_code == 200
    [details] = calls
    assert (details.operation, details.key, details.method, details.reason) == (
        None,
        None,
        "GET",
        "HTTP 502",
    )


@respx.mock
def test_not_called_when_giving_up_and_attempts_count_across_runs(
    journal_path: Path, no_sleep: None
) -> None:
    respx.post(URL).mock(side_effect=[_busy(), _busy(), _busy(), httpx.Response(201)])
    calls: list[RetryDetails] = []
    policy = samekey.RetryPolicy(max_attempts=2)
    with samekey.Client(journal=journal_path, policy=policy, on_retry=calls.append) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={}, operation="op")
        assert [d.attempt for d in calls] == [
            1
        ]  # attempt 2 failed too: that is giving up, no retry
        assert (
            client.post(URL, json={}, operation="op").status_code == 201
        )  # the next run: attempts 3 and 4
    assert [d.attempt for d in calls] == [1, 3]
    assert len({d.key for d in calls}) == 1


@respx.mock
def test_a_hook_that_raises_is_logged_and_the_operation_completes(
    journal_path: Path, no_sleep: None, caplog: pytest.LogCaptureFixture
) -> None:
    route = respx.post(URL).mock(side_effect=[_busy(), _busy(), httpx.Response(201)])
    counts: Counter[str] = Counter()

    def broken_metrics(details: RetryDetails) -> None:
        raise RuntimeError("metrics backend down")

    def tamper(details: RetryDetails) -> None:
        details.next_wait = 3600.0  # type: ignore[misc]  # frozen: raises, so nothing changes

    def count(details: RetryDetails) -> None:
        counts[details.reason] += 1

    caplog.set_level(logging.ERROR, logger="samekey")
    with samekey.Client(journal=journal_path, on_retry=[broken_metrics, tamper, count]) as client:
        response = client.post(URL, json={}, operation="op")
    assert response.status_code == 201 and route.call_count == 3
    assert len({call.request.headers["Idempotency-Key"] for call in route.calls}) == 1
    assert counts == {"HTTP 503": 2}  # the hooks after a broken one still ran, at every retry
    failures = [r for r in caplog.records if r.name == "samekey" and r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in failures if r.exc_info] == [
        RuntimeError, dataclasses.FrozenInstanceError, RuntimeError,
        dataclasses.FrozenInstanceError,
    ]  # fmt: skip
    message = failures[0].getMessage()
    assert "broken_metrics" in message and "operation=op" in message and "attempt=1" in message
    assert getattr(failures[0], "operation", None) == "op"


def test_secrets_in_the_url_headers_or_error_text_do_not_reach_a_hook(
    journal_path: Path, no_sleep: None
) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if len(calls) == 0:  # an error that quotes the request's credential, as h11's may
            raise httpx.ReadError(f"bad header {request.headers['Authorization']!r}")
        return httpx.Response(201)

    calls: list[RetryDetails] = []
    url = "https://acct:url-secret-1@pay.example/charges?api_key=sk_live_url2&amount=5"
    with samekey.Client(
        journal=journal_path, transport=httpx.MockTransport(server), on_retry=calls.append
    ) as client:
        client.post(
            url, json={}, operation="op", headers={"Authorization": "Bearer sk_live_header3"}
        )
    [details] = calls
    assert details.url == "https://pay.example/charges?api_key=REDACTED&amount=5"
    assert details.reason == "ReadError: bad header 'REDACTED'"
    for secret in ("url-secret-1", "acct:", "sk_live_url2", "sk_live_header3"):
        assert secret not in repr(details)


@pytest.mark.parametrize(
    "make",
    [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport, samekey.AsyncSameKeyTransport],
)
def test_something_that_is_not_a_hook_is_refused_by_name(journal_path: Path, make: Any) -> None:
    async def async_hook(details: RetryDetails) -> None: ...

    with pytest.raises(
        TypeError, match=r"on_retry must be a function taking a samekey.RetryDetails.*got 3"
    ):
        make(journal=journal_path, on_retry=3)
    with pytest.raises(TypeError, match=r"on_retry hooks must be callables.*got 'count'"):
        make(journal=journal_path, on_retry=[print, "count"])
    with pytest.raises(
        TypeError, match=r"async_hook \(async def\) would never run: make it a plain def"
    ):
        make(journal=journal_path, on_retry=async_hook)
    assert not journal_path.exists()  # refused before the journal was opened

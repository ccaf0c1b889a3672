"""samekey.Client unit behaviour, on respx (no network)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httpx
import pytest
import respx

import samekey

URL = "https://pay.example/charges"


def _keys(route: respx.Route, header: str = "Idempotency-Key") -> list[str | None]:
    return [call.request.headers.get(header) for call in route.calls]


def _client(journal_path: Path, **kwargs: object) -> samekey.Client:
    return samekey.Client(journal=journal_path, **kwargs)  # type: ignore[arg-type]


@respx.mock
def test_one_uuid4_key_per_operation_identical_on_every_attempt(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(503), httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(201)]
    )
    with _client(journal_path) as client:
        response = client.post(URL, json={"amount": 100}, operation="order-1/charge")
    assert response.status_code == 201
    keys = _keys(route)
    assert len(keys) == 4 and len(set(keys)) == 1
    key = keys[0]
    assert key is not None and uuid.UUID(key).version == 4 and key == str(uuid.UUID(key))
    info = samekey.operation_info(response)
    assert info == samekey.OperationInfo("order-1/charge", key, 4, replayed=False)


@respx.mock
def test_two_operations_get_two_keys(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201))
    with _client(journal_path) as client:
        client.post(URL, json={"n": 1}, operation="a")
        client.post(URL, json={"n": 1}, operation="b")
        client.post(URL, json={"n": 1})  # no operation: still keyed, new key
    assert len(set(_keys(route))) == 3


@respx.mock
def test_completed_operation_is_replayed_without_a_network_call(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201, json={"id": "ch_1"}, headers={"X-Req": "1"}))
    with _client(journal_path) as client:
        first = client.post(URL, json={"amount": 5}, operation="op")
    with _client(journal_path) as client:  # a new run of the program
        again = client.post(URL, json={"amount": 5}, operation="op")
    assert route.call_count == 1
    assert again.status_code == 201 and again.json() == {"id": "ch_1"} and again.headers["X-Req"] == "1"
    info = samekey.operation_info(again)
    assert info is not None and info.replayed and info.key == _keys(route)[0]
    assert samekey.operation_info(first) is not None and not samekey.operation_info(first).replayed  # type: ignore[union-attr]


@respx.mock
def test_gzip_body_replays_decoded(journal_path: Path) -> None:
    import gzip

    body = gzip.compress(b'{"ok": true}')
    respx.post(URL).mock(return_value=httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"}))
    with _client(journal_path) as client:
        assert client.post(URL, operation="gz").json() == {"ok": True}
        assert client.post(URL, operation="gz").json() == {"ok": True}


@respx.mock
def test_same_operation_different_body_is_a_mismatch_and_nothing_is_sent(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201))
    with _client(journal_path) as client:
        client.post(URL, json={"amount": 100}, operation="op")
        with pytest.raises(samekey.OperationMismatch, match=r"different body.*new operation name.*samekey forget op"):
            client.post(URL, json={"amount": 200}, operation="op")
        with pytest.raises(samekey.OperationMismatch, match=r"was POST .*, now PUT"):
            client.put(URL, json={"amount": 100}, operation="op")
    assert route.call_count == 1


@respx.mock
def test_mismatch_on_a_pending_operation_keeps_it_resumable(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    policy = samekey.RetryPolicy(max_attempts=2)
    with _client(journal_path, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={"amount": 1}, operation="op")
        # "give it a new operation name" alone would pay twice if the server acted on the first
        with pytest.raises(samekey.OperationMismatch, match=r"still pending.*may have acted.*samekey resume op"):
            client.post(URL, json={"amount": 2}, operation="op")
        route.mock(return_value=httpx.Response(201))
        assert client.post(URL, json={"amount": 1}, operation="op").status_code == 201  # not blocked by a lease
    assert len(set(_keys(route))) == 1


@respx.mock
def test_caller_supplied_key_is_respected_and_journaled(journal_path: Path) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(500), httpx.Response(201)])
    with samekey.set_testing(True), _client(journal_path) as client:
        client.post(URL, json={}, headers={"Idempotency-Key": "my-key-1"}, operation="op")
        record = client.journal.get("op")
    assert _keys(route) == ["my-key-1", "my-key-1"]
    assert record is not None and record.key == "my-key-1"


@respx.mock
def test_caller_key_without_operation_is_remembered_by_key(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201, json={"id": 1}))
    with _client(journal_path) as client:
        client.post(URL, json={}, headers={"Idempotency-Key": "k-77"})
        again = client.post(URL, json={}, headers={"Idempotency-Key": "k-77"})
    assert route.call_count == 1 and samekey.operation_info(again).replayed  # type: ignore[union-attr]


@respx.mock
def test_pending_key_is_never_replaced_by_a_different_caller_key(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    with _client(journal_path, policy=samekey.RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={}, operation="op")
        with pytest.raises(samekey.OperationMismatch, match="its key is"):
            client.post(URL, json={}, headers={"Idempotency-Key": "other"}, operation="op")
    assert route.call_count == 1


@respx.mock
def test_structured_field_key_format_and_custom_header(journal_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(201))
    with _client(journal_path, key_format="structured", key_header="X-Idem") as client:
        client.post(URL, json={}, operation="op")
    (key,) = _keys(route, "X-Idem")
    assert key is not None and key.startswith('"') and key.endswith('"') and uuid.UUID(key.strip('"')).version == 4
    assert "Idempotency-Key" not in route.calls[0].request.headers


@respx.mock
def test_reads_and_idempotent_methods_are_retried_without_a_key(journal_path: Path, no_sleep: None) -> None:
    get = respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    put = respx.put(URL).mock(side_effect=[httpx.ConnectError("x"), httpx.Response(200)])
    with _client(journal_path) as client:
        assert client.get(URL).status_code == 200
        assert client.put(URL, json={}).status_code == 200
        assert client.journal.records() == []
    assert _keys(get) == [None, None] and _keys(put) == [None, None]


@respx.mock
def test_a_method_that_is_not_idempotent_is_keyed_without_operation(journal_path: Path, no_sleep: None) -> None:
    route = respx.route(method="LOCK", url=URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    with _client(journal_path) as client:
        assert client.request("LOCK", URL, content=b"<lockinfo/>").status_code == 200
        (record,) = client.journal.records()
    keys = _keys(route)
    assert record.operation.startswith("auto:") and keys[0] is not None and keys == [record.key, record.key]


@respx.mock
def test_any_method_with_operation_is_keyed(journal_path: Path) -> None:
    route = respx.delete(URL).mock(return_value=httpx.Response(204))
    with _client(journal_path) as client:
        client.delete(URL, operation="cancel-9")
    assert _keys(route)[0] is not None


@respx.mock
@pytest.mark.parametrize("status", [400, 402, 403, 404, 422, 501])
def test_definitive_4xx_is_returned_and_recorded_not_raised(journal_path: Path, status: int) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(status, json={"error": "declined"}))
    with _client(journal_path) as client:
        response = client.post(URL, json={}, operation="op")
        record = client.journal.get("op")
    assert response.status_code == status and route.call_count == 1
    assert record is not None and record.state == "completed" and record.response_status == status


@respx.mock
@pytest.mark.parametrize("status", [520, 522, 524, 507])
def test_a_gateway_5xx_is_retried_with_the_key_and_never_recorded_as_the_answer(
    journal_path: Path, no_sleep: None, status: int
) -> None:
    # Cloudflare's 520-524: the origin was unreachable or too slow, the charge may be running.
    # Recorded as completed, that error would be replayed to every re-run; it is retried instead
    route = respx.post(URL).mock(side_effect=[httpx.Response(status), httpx.Response(201, json={"id": "ch_1"})])
    with _client(journal_path) as client:
        assert client.post(URL, json={}, operation="op").status_code == 201
    keys = _keys(route)
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]


@respx.mock
def test_a_5xx_that_outlasts_the_retries_leaves_the_key_pending(journal_path: Path, no_sleep: None) -> None:
    respx.post(URL).mock(return_value=httpx.Response(522))
    with _client(journal_path, policy=samekey.RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={}, operation="op")
        record = client.journal.get("op")
    assert record is not None and record.state == "pending"


def test_digest_auth_challenge_is_answered_with_the_same_key(journal_path: Path) -> None:
    # httpx's DigestAuth sends, gets a 401 challenge, and sends again with credentials.
    seen: list[tuple[str | None, str | None]] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers.get("Authorization"), request.headers.get("Idempotency-Key")))
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Digest realm="pay", nonce="n1", qop="auth"'})
        return httpx.Response(201, json={"id": "ch_1"})

    transport = httpx.MockTransport(server)
    with _client(journal_path, transport=transport, auth=httpx.DigestAuth("user", "pass")) as client:
        response = client.post(URL, json={"amount": 100}, operation="order-1/charge")
        record = client.journal.get("order-1/charge")
    assert response.status_code == 201, "the challenge must not be replayed as the operation's answer"
    assert [auth is None for auth, _ in seen] == [True, False]
    assert seen[0][1] is not None and seen[0][1] == seen[1][1]
    assert record is not None and record.state == "completed" and record.response_status == 201


@respx.mock
@pytest.mark.parametrize("status", [401, 407])
def test_refused_credentials_keep_the_key_pending_for_a_rerun(journal_path: Path, status: int) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(status, json={"error": "bad key"}), httpx.Response(201)])
    with _client(journal_path, headers={"Authorization": "Bearer sk_wrong"}) as client:
        first = client.post(URL, json={"amount": 100}, operation="op")
        record = client.journal.get("op")
    assert first.status_code == status, "the caller sees the refusal"
    assert record is not None and record.state == "pending" and f"HTTP {status}" in (record.last_error or "")
    with _client(journal_path, headers={"Authorization": "Bearer sk_right"}) as client:
        second = client.post(URL, json={"amount": 100}, operation="op")
        record = client.journal.get("op")
    assert second.status_code == 201 and route.call_count == 2
    assert record is not None and record.state == "completed"
    assert _keys(route) == [record.key, record.key]


@respx.mock
@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_with_the_same_key(journal_path: Path, no_sleep: None, status: int) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(status), httpx.Response(201)])
    with _client(journal_path) as client:
        assert client.post(URL, json={}, operation="op").status_code == 201
    assert route.call_count == 2 and len(set(_keys(route))) == 1


@respx.mock
def test_server_verdict_header_overrides_status(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(500, headers={"Stripe-Should-Retry": "false"}))
    with _client(journal_path) as client:
        assert client.post(URL, json={}, operation="a").status_code == 500
    assert route.call_count == 1
    route.reset()
    route.mock(side_effect=[httpx.Response(400, headers={"Stripe-Should-Retry": "true"}), httpx.Response(201)])
    with _client(journal_path) as client:
        assert client.post(URL, json={}, operation="b").status_code == 201
    assert route.call_count == 2
    route.reset()
    # a success is definitive whatever the header says: the server acted, a retry could only replay
    route.mock(return_value=httpx.Response(201, headers={"Stripe-Should-Retry": "true"}))
    with _client(journal_path) as client:
        assert client.post(URL, json={}, operation="c").status_code == 201
        assert client.journal.get("c").state == "completed"  # type: ignore[union-attr]
    assert route.call_count == 1


def _reset_by_peer() -> httpx.ReadError:
    """A reset as httpx's async transport raises it: no message, the reason three errors down."""
    try:
        try:
            try:
                raise anyio.BrokenResourceError from ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            except anyio.BrokenResourceError as exc:
                raise httpcore.ReadError(exc) from None  # as httpcore's connection pool re-raises it
        except httpcore.ReadError as exc:
            raise httpx.ReadError(str(exc)) from exc
    except httpx.ReadError as exc:
        return exc


def _bare_read_error() -> httpx.ReadError:
    error = httpx.ReadError("")
    error.__cause__ = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    return error


RESET_TEXT = f"ReadError (ConnectionResetError: [Errno {errno.ECONNRESET}] Connection reset by peer)"


def _raising(*errors: Exception) -> httpx.MockTransport:
    # not respx: it re-raises a side effect `from` its own SideEffectError, replacing the cause
    queue = list(errors)

    def handler(request: httpx.Request) -> httpx.Response:
        raise queue.pop(0)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("make_error", [_reset_by_peer, _bare_read_error])
def test_an_empty_read_error_is_reported_with_its_cause(journal_path: Path, no_sleep: None, make_error: Any) -> None:
    # the async transport raises a reset as ReadError(''): last_error said "ReadError", the error "ReadError: "
    async def story() -> tuple[samekey.RetriesExhausted, httpx.ReadError]:
        transport = _raising(make_error(), make_error())
        policy = samekey.RetryPolicy(max_attempts=2)
        async with samekey.AsyncClient(journal=journal_path, transport=transport, policy=policy) as client:
            with pytest.raises(samekey.RetriesExhausted) as exhausted:
                await client.post(URL, json={"amount": 1}, operation="exhausted")
        # not retried: the error itself reaches the caller, and the journal says why
        transport, policy = _raising(make_error()), samekey.RetryPolicy(retry_exceptions=())
        async with samekey.AsyncClient(journal=journal_path, transport=transport, policy=policy) as client:
            with pytest.raises(httpx.ReadError) as raised:
                await client.post(URL, json={"amount": 2}, operation="raised")
        return exhausted.value, raised.value

    exhausted, raised = asyncio.run(story())
    assert f"last error {RESET_TEXT})" in str(exhausted)
    assert str(raised) == ""  # the caller's error is the transport's own, untouched
    with samekey.Journal(journal_path) as journal:
        for operation, attempts in (("exhausted", 2), ("raised", 1)):
            record = journal.get(operation)
            assert record is not None and record.state == "pending" and record.attempts == attempts
            assert record.last_error == RESET_TEXT


def test_a_cause_quoting_a_credential_is_journaled_redacted(journal_path: Path) -> None:
    error = httpx.ReadError("")
    error.__cause__ = OSError("peer refused header b'Bearer sk_live_in_the_cause'")
    policy = samekey.RetryPolicy(retry_exceptions=())
    headers = {"Authorization": "Bearer sk_live_in_the_cause"}
    with _client(journal_path, transport=_raising(error), policy=policy, headers=headers) as client:
        with pytest.raises(httpx.ReadError):
            client.post(URL, json={"amount": 1}, operation="op")
        record = client.journal.get("op")
    assert record is not None and record.last_error == "ReadError (OSError: peer refused header b'REDACTED')"


def test_gave_up_on_an_error_quoting_a_credential_says_so_without_the_credential(
    journal_path: Path, no_sleep: None
) -> None:
    # services log RetriesExhausted: its message must not carry the token the journal keeps off disk
    quoting = [httpx.ReadError("peer refused header b'Bearer sk_live_quoted'") for _ in range(2)]
    policy = samekey.RetryPolicy(max_attempts=2)
    headers = {"Authorization": "Bearer sk_live_quoted"}
    with _client(journal_path, transport=_raising(*quoting), policy=policy, headers=headers) as client:
        with pytest.raises(samekey.RetriesExhausted) as exhausted:
            client.post(URL, json={"amount": 1}, operation="op")
    message = str(exhausted.value)
    assert "sk_live" not in message
    assert "last error ReadError: peer refused header b'REDACTED'" in message, message
    assert exhausted.value.last_exception is quoting[1]  # the original, for code that needs it


def test_an_empty_error_with_no_message_below_names_the_deepest_cause(journal_path: Path) -> None:
    # a clean close mid-answer: ReadError('') from httpcore's ReadError from EndOfStream, no message anywhere
    below, alone = httpx.ReadError(""), httpx.ReadError("")
    below.__cause__ = httpcore.ReadError(anyio.EndOfStream())
    below.__cause__.__cause__ = anyio.EndOfStream()
    policy = samekey.RetryPolicy(retry_exceptions=())
    with _client(journal_path, transport=_raising(below, alone), policy=policy) as client:
        for operation in ("below", "alone"):
            with pytest.raises(httpx.ReadError):
                client.post(URL, json={"amount": 1}, operation=operation)
        records = [client.journal.get(operation) for operation in ("below", "alone")]
    assert [r.last_error for r in records if r is not None] == ["ReadError (EndOfStream)", "ReadError"]


@respx.mock
def test_exhaustion_raises_with_details_and_the_rerun_reuses_the_key(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    with _client(journal_path, policy=samekey.RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.post(URL, json={"amount": 1}, operation="order-7")
        err = caught.value
        assert err.operation == "order-7" and err.attempts == 3
        assert err.last_response is not None and err.last_response.status_code == 503
        assert err.key == _keys(route)[0]
        assert "still pending" in str(err) and "samekey resume order-7" in str(err)
        record = client.journal.get("order-7")
        assert record is not None and record.state == "pending" and record.attempts == 3
        assert record.last_error == "HTTP 503" and record.lease_owner is None
    route.mock(return_value=httpx.Response(201))
    with _client(journal_path) as client:  # the next run
        response = client.post(URL, json={"amount": 1}, operation="order-7")
    assert response.status_code == 201
    assert set(_keys(route)) == {err.key}
    assert samekey.operation_info(response).attempts == 4  # type: ignore[union-attr]


@respx.mock
def test_exhaustion_after_exceptions_carries_the_exception(journal_path: Path, no_sleep: None) -> None:
    respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with _client(journal_path, policy=samekey.RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(samekey.RetriesExhausted, match="ConnectError: refused") as caught:
            client.post(URL, json={}, operation="op")
    assert isinstance(caught.value.last_exception, httpx.ConnectError)


@respx.mock
def test_non_retryable_error_propagates_and_keeps_the_key_pending(journal_path: Path) -> None:
    respx.post(URL).mock(side_effect=httpx.UnsupportedProtocol("nope"))
    with _client(journal_path) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            client.post(URL, json={}, operation="op")
        record = client.journal.get("op")
    assert record is not None and record.state == "pending" and record.lease_owner is None


@respx.mock
def test_retry_after_is_slept_and_capped_by_the_deadline(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("samekey._transport.time.sleep", slept.append)
    route = respx.post(URL).mock(side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(201)])
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01)
    with _client(journal_path, policy=policy) as client:
        assert client.post(URL, json={}, operation="a").status_code == 201
    assert slept == [7.0] and route.call_count == 2
    # a Retry-After that would end past the deadline stops at once instead of sleeping
    route.reset()
    route.mock(return_value=httpx.Response(503, headers={"Retry-After": "50"}))
    slept.clear()
    with _client(journal_path, policy=samekey.RetryPolicy(deadline=10)) as client:
        with pytest.raises(samekey.RetriesExhausted, match="deadline"):
            client.post(URL, json={}, operation="b")
    assert slept == [] and route.call_count == 1


@respx.mock
def test_each_attempt_retry_and_replay_is_logged(journal_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    respx.post(URL).mock(side_effect=[httpx.Response(503), httpx.Response(201), httpx.Response(201)])
    caplog.set_level(logging.DEBUG, logger="samekey")
    with samekey.set_testing(True), _client(journal_path) as client:
        client.post(URL, json={}, operation="logged-op")
        client.post(URL, json={}, operation="logged-op")
    records = [r for r in caplog.records if r.name == "samekey"]
    assert all(getattr(r, "operation", None) == "logged-op" for r in records)
    messages = [r.getMessage() for r in records]
    assert any("attempt" in m and "attempt=1" in m for m in messages)
    assert any("retry" in m and "HTTP 503" in m for m in messages)
    assert any("replay" in m for m in messages)
    key = records[0].key  # type: ignore[attr-defined]
    assert key and all(getattr(r, "key", None) == key for r in records)


@respx.mock
def test_secrets_never_reach_the_journal_file(journal_path: Path) -> None:
    respx.post(URL).mock(return_value=httpx.Response(201, headers={"Set-Cookie": "session=cookie-secret-1"}))
    with _client(journal_path, headers={"X-Api-Key": "apikey-secret-2"}, auth=("user", "basic-secret-3")) as client:
        client.post(
            URL,
            json={"amount": 1},
            operation="op",
            headers={"Authorization": "Bearer sk_live_secret4", "Cookie": "sid=cookie-secret-5"},
        )
        record = client.journal.get("op")
    assert record is not None
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    for secret in (b"cookie-secret-1", b"apikey-secret-2", b"sk_live_secret4", b"cookie-secret-5"):
        assert secret not in blob
    import base64

    assert base64.b64encode(b"user:basic-secret-3") not in blob
    names = {name.lower() for name, _ in record.request_headers}
    assert "authorization" not in names and "content-type" in names


@respx.mock
def test_redact_headers_keeps_the_named_headers_and_query_values_off_the_disk(journal_path: Path) -> None:
    respx.post(url__startswith=URL).mock(return_value=httpx.Response(201, headers={"X-Merchant-Pin": "pin-echo-1"}))
    with _client(journal_path, redact_headers=("X-Merchant-Pin", "merchant_pin")) as client:
        client.post(
            f"{URL}?merchant_pin=pin-query-2&amount=5",
            json={"amount": 5},
            operation="op",
            headers={"x-merchant-pin": "pin-header-3", "X-Tenant": "acme"},
        )
        record = client.journal.get("op")
    assert record is not None and record.url == f"{URL}?merchant_pin=REDACTED&amount=5"
    assert ("x-tenant", "acme") in record.request_headers
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    for secret in (b"pin-echo-1", b"pin-query-2", b"pin-header-3"):
        assert secret not in blob


@pytest.mark.parametrize("make", [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport])
def test_one_header_name_for_redact_headers_is_refused_not_read_as_letters(journal_path: Path, make: Any) -> None:
    # a bare string would be taken letter by letter: X-Merchant-Pin would go to the disk
    with pytest.raises(TypeError, match=r"redact_headers must be a tuple of names.*\('X-Merchant-Pin',\)"):
        make(journal=journal_path, redact_headers="X-Merchant-Pin")
    assert not journal_path.exists()  # refused before the journal was opened
    with pytest.raises(TypeError, match=r"redact_headers must be a tuple of names.*got None"):
        make(journal=journal_path, redact_headers=None)  # was "'NoneType' object is not iterable"
    assert not journal_path.exists()


def test_credentials_in_the_url_never_reach_the_journal_file_or_the_logs(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="samekey")
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(503 if len(sent) == 1 else 201)

    policy = samekey.RetryPolicy(max_attempts=1)
    url = "https://acct:url-secret-1@pay.example/charges?api_key=sk_live_url2&amount=5"
    with _client(journal_path, transport=httpx.MockTransport(server), policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(url, json={"amount": 5}, operation="op")
        record = client.journal.get("op")
        assert record is not None and record.url == "https://pay.example/charges?api_key=REDACTED&amount=5"
        with pytest.raises(samekey.SameKeyError, match=r"credentials in its URL \(api_key\).*Nothing was sent"):
            client.resume("op")
        # the code that made it runs again, with a rotated key: the same operation, the same key
        rotated = url.replace("sk_live_url2", "sk_live_url3")
        assert client.post(rotated, json={"amount": 5}, operation="op").status_code == 201
    assert sent == [url, rotated]
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "samekey")
    assert "attempt=1 POST https://pay.example/charges?api_key=REDACTED&amount=5" in logged
    for secret in (b"url-secret-1", b"sk_live_url2", b"sk_live_url3", b"acct:"):
        assert secret not in blob and secret.decode() not in logged


@respx.mock
def test_cloud_api_key_headers_never_reach_the_journal_but_the_echoed_key_does(journal_path: Path) -> None:
    echoed = {"Idempotency-Key": "echo", "X-Access-Key": "resp-secret-1"}
    respx.post(URL).mock(return_value=httpx.Response(201, headers=echoed))
    secrets = {
        "Ocp-Apim-Subscription-Key": "azure-apim-secret-2",  # Azure API Management
        "x-functions-key": "azure-fn-secret-3",  # Azure Functions
        "X-Client-Key": "client-secret-4",
        "Private-Key": "private-secret-5",
        "X-Credentials": "cred-secret-6",
    }
    with _client(journal_path) as client:
        client.post(URL, json={"amount": 1}, operation="op", headers=secrets)
        replayed = client.post(URL, json={"amount": 1}, operation="op")
    blob = b"".join(p.read_bytes() for p in journal_path.parent.iterdir())
    for secret in ["resp-secret-1", *secrets.values()]:
        assert secret.encode() not in blob
    assert replayed.headers["Idempotency-Key"] == "echo"  # the server's echo of the key is no secret


def test_an_operation_journaled_by_an_older_samekey_keeps_its_identity(journal_path: Path) -> None:
    # The stored URL and the fingerprint are an operation's identity: the rule that hides query
    # values may not change under a pending record, or its re-run is a mismatch and its key lost.
    # (Computed by samekey at commit 2308322.)
    url = "https://pay.example/charges?payment_token=tok_a&key=invoices/41.pdf&authorization=Bearer%20x&author=Tolstoy&amount=5"
    with _client(journal_path) as client:
        request = client.build_request("POST", url, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "op"})
        request.read()
        plan = client.engine.plan(request)
    assert plan is not None
    assert plan.intent.url == (
        "https://pay.example/charges?payment_token=REDACTED&key=invoices%2F41.pdf&authorization=REDACTED"
        "&author=REDACTED&amount=5"
    )
    assert plan.intent.fingerprint == "75e32fe30f387038ad9d8a63575cb76ac4deb066c69ee18788efc672f77c28e3"


def test_leaving_with_closes_the_journal_and_leaves_one_self_contained_file(journal_path: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(201))
    with _client(journal_path, transport=transport) as client:
        client.post(URL, json={}, operation="sync-op")

    async def story() -> samekey.AsyncClient:
        async_transport = httpx.MockTransport(lambda request: httpx.Response(201))
        async with samekey.AsyncClient(journal=journal_path, transport=async_transport) as async_client:
            await async_client.post(URL, json={}, operation="async-op")
        return async_client

    async_client = asyncio.run(story())
    for journal in (client.journal, async_client.journal):
        with pytest.raises(samekey.JournalError, match="it is closed"):
            journal.get("sync-op")
    # the last connection closed: SQLite merged its write-ahead log into the file
    assert sorted(p.name for p in journal_path.parent.iterdir()) == [journal_path.name]
    with samekey.Journal(journal_path) as reopened:
        assert {r.operation for r in reopened.records()} == {"sync-op", "async-op"}


def test_journal_file_and_folder_are_private(journal_path: Path) -> None:
    with _client(journal_path):
        pass
    assert journal_path.stat().st_mode & 0o777 == 0o600
    assert journal_path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_every_folder_samekey_creates_for_the_journal_is_private_whatever_the_umask(tmp_path: Path) -> None:
    # a first run with no ~/.local/state yet, under a service manager's umask 000: a folder left
    # world-writable above the journal lets another local user swap the journal folder for their own
    # (and with it the pending keys); XDG also asks for 0700 on state folders an app creates
    journal_path = tmp_path / "home" / ".local" / "state" / "samekey" / "journal.sqlite3"
    existing = tmp_path.stat().st_mode & 0o777
    previous = os.umask(0o000)
    try:
        with _client(journal_path, transport=httpx.MockTransport(lambda r: httpx.Response(201))) as client:
            client.post(URL, json={}, operation="op")
            files = {p.name: p.stat().st_mode & 0o777 for p in journal_path.parent.iterdir()}
    finally:
        os.umask(previous)
    assert files == {name: 0o600 for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm")}
    created = [journal_path.parents[i] for i in range(4)]  # samekey, state, .local, home
    assert {str(folder): folder.stat().st_mode & 0o777 for folder in created} == {str(f): 0o700 for f in created}
    assert tmp_path.stat().st_mode & 0o777 == existing  # a folder that was there is left as it is


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="POSIX modes and symlinks")
@pytest.mark.parametrize("relative", [False, True])
def test_a_journal_behind_a_dangling_symlink_is_private_too(tmp_path: Path, relative: bool) -> None:
    # a dotfiles-managed state folder, or a path pointing at a volume: the link exists, its target not yet
    volume = tmp_path / "volume"
    volume.mkdir()
    link = tmp_path / "state" / "journal.sqlite3"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(Path("..", "volume", "journal.sqlite3") if relative else volume / "journal.sqlite3")
    previous = os.umask(0o022)
    try:
        with _client(link, transport=httpx.MockTransport(lambda r: httpx.Response(201))) as client:
            client.post("https://pay.test/charges", json={}, operation="op")
            modes = {p.name: p.stat().st_mode & 0o777 for p in volume.iterdir()}
    finally:
        os.umask(previous)
    assert link.is_symlink()
    assert modes == {name: 0o600 for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm")}


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="POSIX modes and symlinks")
def test_a_journal_folder_behind_a_dangling_symlink_is_created_private(tmp_path: Path) -> None:
    # ~/.local/state/samekey linked to a volume folder not made yet: as for a linked file, the target is made
    link = tmp_path / "state" / "samekey"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "volume" / "samekey")
    with _client(link / "journal.sqlite3", transport=httpx.MockTransport(lambda r: httpx.Response(201))) as client:
        client.post(URL, json={}, operation="op")
    volume = tmp_path / "volume"
    assert link.is_symlink() and (volume / "samekey" / "journal.sqlite3").is_file()
    assert {folder.stat().st_mode & 0o777 for folder in (volume, volume / "samekey")} == {0o700}


def test_corrupt_journal_is_a_clear_error_and_left_intact(journal_path: Path) -> None:
    journal_path.parent.mkdir(parents=True)
    garbage = b"this is not a database" * 100
    journal_path.write_bytes(garbage)
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Client(journal=journal_path)
    assert str(journal_path) in str(caught.value) and "left untouched" in str(caught.value)
    assert journal_path.read_bytes() == garbage


def test_journal_from_a_newer_samekey_is_refused(journal_path: Path) -> None:
    samekey.Journal(journal_path).close()
    with sqlite3.connect(journal_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = journal_path.read_bytes()
    with pytest.raises(samekey.JournalError, match=r"newer samekey .*Upgrade samekey"):
        samekey.Journal(journal_path)
    assert journal_path.read_bytes() == before


def test_locked_journal_times_out_with_a_clear_error(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path, lock_timeout=0.2)
    blocker = sqlite3.connect(journal_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with samekey.Client(journal=journal) as client, respx.mock:
            respx.post(URL).mock(return_value=httpx.Response(201))
            with pytest.raises(samekey.JournalError, match="locked by another process"):
                client.post(URL, json={}, operation="op")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        journal.close()


@pytest.mark.parametrize("name", ["  ", "x" * 513, "order\udc80", "order\x00-1"])
def test_bad_operation_name_is_refused(journal_path: Path, name: str) -> None:
    with _client(journal_path) as client, pytest.raises(ValueError, match="operation must be a non-empty string"):
        client.post(URL, json={}, operation=name)


def test_bad_client_options_are_refused(journal_path: Path) -> None:
    with pytest.raises(ValueError, match="key_format must be 'uuid'"):
        _client(journal_path, key_format="hex")
    with pytest.raises(TypeError, match=r"policy must be a samekey.RetryPolicy"):
        _client(journal_path, policy={"max_attempts": 3})


@pytest.mark.parametrize("make", [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport])
@pytest.mark.parametrize("name", ["Idempotency-Key:", "Idempotency-Key ", "Idempotency Key", "X-Key\n"])
def test_a_key_header_that_is_no_header_name_is_refused_before_anything_is_journaled(
    journal_path: Path, make: Any, name: str
) -> None:
    # accepted, every request journaled a pending key, then failed in h11 ("Illegal header name"),
    # and the operation was tied to that header for life: fixed, the client got OperationMismatch
    with pytest.raises(ValueError, match=r"key_header must be an HTTP header name.*'Idempotency-Key'"):
        make(journal=journal_path, key_header=name)


@pytest.mark.parametrize("make", [samekey.Client, samekey.AsyncClient, samekey.SameKeyTransport])
def test_a_lease_that_never_expires_is_refused(journal_path: Path, make: Any) -> None:
    # lease=float("inf") was accepted: an owner that vanished on another host held its operation
    # forever, and `samekey list --json` / `samekey show` died on the record (OverflowError)
    with pytest.raises(ValueError, match=r"lease must be a finite duration.*lease=60"):
        make(journal=journal_path, lease=float("inf"))


@respx.mock
def test_default_journal_location_is_used_without_journal_argument(tmp_path: Path) -> None:
    respx.post(URL).mock(return_value=httpx.Response(201))
    with samekey.Client() as client:
        client.post(URL, json={}, operation="op")
        assert client.journal.location == str(samekey.default_journal_path())
    assert samekey.default_journal_path() == tmp_path / "default-journal.sqlite3"


@respx.mock
def test_transport_plugs_under_an_existing_httpx_client(journal_path: Path) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(502), httpx.Response(201)])
    transport = samekey.SameKeyTransport(journal=journal_path)
    with samekey.set_testing(True), httpx.Client(transport=transport) as client:
        response = client.post(URL, json={}, extensions={samekey.OPERATION_EXTENSION: "op"})
    assert response.status_code == 201 and len(set(_keys(route))) == 1


@respx.mock
def test_a_followed_redirect_is_not_mistaken_for_the_operation(journal_path: Path) -> None:
    respx.post(URL).mock(return_value=httpx.Response(303, headers={"Location": "https://pay.example/charges/ch_1"}))
    created = respx.get("https://pay.example/charges/ch_1").mock(return_value=httpx.Response(200, json={"id": "ch_1"}))
    with _client(journal_path, follow_redirects=True) as client:
        for _ in range(2):  # the second run replays the 303 and follows it again
            response = client.post(URL, json={"amount": 1}, operation="op")
            assert response.status_code == 200 and response.json() == {"id": "ch_1"}
        record = client.journal.get("op")
    assert record is not None and record.response_status == 303
    assert created.call_count == 2 and "Idempotency-Key" not in created.calls[0].request.headers


def test_a_lease_holder_is_never_signalled_where_kill_would_terminate_it(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on Windows os.kill(pid, 0) terminates the process: a live lease holder must wait out its lease
    with _client(journal_path) as client:
        engine = client.engine
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            owner = f"{engine.owners.host}/{sleeper.pid}/{samekey._identity.PID_SCOPE}/tag-1"
            signalled: list[int] = []
            monkeypatch.setattr(os, "kill", lambda pid, sig: signalled.append(pid))
            monkeypatch.setattr(os, "name", "nt")
            assert engine.owners.is_dead(owner) is False and signalled == []
            monkeypatch.undo()
            assert engine.owners.is_dead(owner) is False  # alive, on POSIX: kill(pid, 0) only probes
            sleeper.kill()
            sleeper.wait()
            assert engine.owners.is_dead(owner) is True
        finally:
            sleeper.kill()
            sleeper.wait()


class _Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that records how far it was read and whether it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.read, self.closed = chunks, 0, False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_an_unkeyed_download_is_handed_on_streaming_not_buffered(journal_path: Path, no_sleep: None) -> None:
    bodies = [_Chunks([b"busy"]), _Chunks([b"x" * 65536] * 64)]  # a 503, then a 4 MiB file

    def server(request: httpx.Request) -> httpx.Response:
        body = bodies[len(served)]
        served.append(body)
        return httpx.Response(503 if body is bodies[0] else 200, stream=body)

    served: list[_Chunks] = []
    with _client(journal_path, transport=httpx.MockTransport(server)) as client:
        with client.stream("GET", URL) as response:
            assert response.status_code == 200
            assert bodies[1].read == 0, "nothing of the body was read before the caller got the response"
            size = sum(len(chunk) for chunk in response.iter_raw())
        assert size == 64 * 65536
        assert bodies[0].closed, "the 503 that was retried gave its connection back"
        assert client.journal.records() == [], "an unkeyed GET is never journaled"


def test_an_unkeyed_request_that_gives_up_keeps_its_last_answer_readable(journal_path: Path, no_sleep: None) -> None:
    policy = samekey.RetryPolicy(max_attempts=2)
    transport = httpx.MockTransport(lambda request: httpx.Response(503, stream=_Chunks([b'{"error":', b'"down"}'])))
    with _client(journal_path, transport=transport, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.get(URL)
        with pytest.raises(samekey.RetriesExhausted) as keyed:
            client.post(URL, json={"amount": 1}, operation="op")  # journaled: read whole on every attempt
    for error in (caught.value, keyed.value):
        last = error.last_response
        assert last is not None and last.status_code == 503 and last.json() == {"error": "down"}


def test_the_async_client_streams_an_unkeyed_download_too(journal_path: Path) -> None:
    body = _Chunks([b"y" * 65536] * 16)

    async def story() -> int:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            async with client.stream("GET", URL) as response:
                assert body.read == 0
                return sum([len(chunk) async for chunk in response.aiter_raw()])

    assert asyncio.run(story()) == 16 * 65536


def test_a_multipart_upload_built_again_is_the_same_operation(journal_path: Path) -> None:
    # httpx draws a new multipart boundary for every request it builds
    sent: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503 if len(sent) == 1 else 201)

    policy = samekey.RetryPolicy(max_attempts=1)
    upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
    with _client(journal_path, transport=httpx.MockTransport(server), policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, files=upload, data={"booking": "b-42"}, operation="booking-42/upload")
        again = client.post(URL, files=upload, data={"booking": "b-42"}, operation="booking-42/upload")
        with pytest.raises(samekey.OperationMismatch):  # another file is another request
            other = {"file": ("passport.pdf", b"%PDF-1.7 other", "application/pdf")}
            client.post(URL, files=other, data={"booking": "b-42"}, operation="booking-42/upload")
    assert again.status_code == 201
    # the re-run built a new boundary, but sends the first attempt's bytes: a server comparing raw
    # bodies under the key sees the same payload, not another one (422)
    assert sent[1].content == sent[0].content
    assert sent[1].headers["content-type"] == sent[0].headers["content-type"]
    assert sent[1].headers["content-length"] == str(len(sent[0].content))
    assert sent[0].headers["Idempotency-Key"] == sent[1].headers["Idempotency-Key"]
    assert len(sent) == 2, "the other file was refused before sending"


class _Unsized:
    """A file-like object of unknown length (no fileno, no seek): httpx sends its upload chunked."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        data, self.data = self.data, b""
        return data


def test_a_re_run_of_a_chunked_upload_never_sends_both_content_length_and_transfer_encoding(
    journal_path: Path,
) -> None:
    # RFC 9112 6.1: a sender MUST NOT send Content-Length with Transfer-Encoding; a server or proxy
    # may answer 400 (request smuggling defence), which would be recorded as the operation's answer
    sent: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        return httpx.Response(503 if len(sent) == 1 else 201)

    policy = samekey.RetryPolicy(max_attempts=1)
    with _client(journal_path, transport=httpx.MockTransport(server), policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, files={"file": ("a.pdf", _Unsized(b"%PDF-1.7 scan"))}, operation="booking-42/upload")
        again = client.post(URL, files={"file": ("a.pdf", _Unsized(b"%PDF-1.7 scan"))}, operation="booking-42/upload")
    assert again.status_code == 201
    assert sent[0].headers.get("transfer-encoding") == "chunked" and "content-length" not in sent[0].headers
    assert sent[1].content == sent[0].content
    assert not ("content-length" in sent[1].headers and "transfer-encoding" in sent[1].headers), sent[1].headers


def test_an_async_re_run_of_a_multipart_upload_sends_the_first_bytes(journal_path: Path) -> None:
    sent: list[bytes] = []

    async def server(request: httpx.Request) -> httpx.Response:
        sent.append(await request.aread())
        return httpx.Response(503 if len(sent) == 1 else 201)

    async def story() -> int:
        upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
        policy = samekey.RetryPolicy(max_attempts=1)
        async with samekey.AsyncClient(journal=journal_path, transport=httpx.MockTransport(server), policy=policy) as c:
            with pytest.raises(samekey.RetriesExhausted):
                await c.post(URL, files=upload, operation="booking-42/upload")
            return (await c.post(URL, files=upload, operation="booking-42/upload")).status_code

    assert asyncio.run(story()) == 201
    assert sent[0] == sent[1]


class _DiskFullOnComplete(samekey.Journal):
    fail = True

    def complete(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            raise samekey.JournalError(self.location, "the disk is full while completing", "Free some space.")
        super().complete(*args, **kwargs)


def test_a_full_disk_after_the_server_answered_says_it_was_sent_and_keeps_the_key(journal_path: Path) -> None:
    journal = _DiskFullOnComplete(journal_path)
    with respx.mock, samekey.Client(journal=journal) as client:
        route = respx.post(URL).mock(return_value=httpx.Response(201, json={"id": "ch_1"}))
        with pytest.raises(samekey.AnswerNotRecorded) as caught:
            client.post(URL, json={"amount": 100}, operation="order-1/charge")
        message = str(caught.value)
        assert "was sent and the server answered HTTP 201" in message and "nothing was sent" not in message.lower()
        assert "Do not start it under a new operation name" in message
        assert caught.value.response.json() == {"id": "ch_1"}  # the answer is not lost
        assert isinstance(caught.value, samekey.JournalError)
        record = journal.get("order-1/charge")
        assert record is not None and record.state == "pending" and record.lease_owner is None  # free at once
        journal.fail = False  # the disk has room again: the re-run sends the SAME key, no new charge
        client.post(URL, json={"amount": 100}, operation="order-1/charge")
    keys = _keys(route)
    assert len(keys) == 2 and keys[0] == keys[1] == record.key
    journal.close()


class _DiskFullOnAttempt(samekey.Journal):
    def record_attempt(self, *args: Any, **kwargs: Any) -> None:
        raise samekey.JournalError(
            self.location, "the disk is full while recording", "Free some space; nothing was sent."
        )


def test_a_full_disk_between_attempts_does_not_claim_nothing_was_sent(journal_path: Path, no_sleep: None) -> None:
    journal = _DiskFullOnAttempt(journal_path)
    with respx.mock, samekey.Client(journal=journal) as client:
        respx.post(URL).mock(return_value=httpx.Response(503))
        with pytest.raises(samekey.JournalError) as caught:
            client.post(URL, json={"amount": 100}, operation="order-2/charge")
    message = str(caught.value)
    assert "was sent (attempt 1, HTTP 503)" in message and "nothing was sent" not in message.lower()
    record = journal.get("order-2/charge")
    assert record is not None and record.state == "pending" and record.lease_owner is None
    journal.close()


def test_a_pid_from_another_pid_namespace_or_boot_is_never_judged_dead(journal_path: Path) -> None:
    # Sidecar containers of one pod share a hostname, not their pids: a live lease holder in the
    # other container must not be taken over because the same pid number is free here.
    with _client(journal_path) as client:
        engine = client.engine
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # a pid that runs nothing here
        scope = samekey._identity.PID_SCOPE
        assert engine.owners.is_dead(f"{engine.owners.host}/{gone.pid}/{scope}/tag-1") is True
        assert engine.owners.is_dead(f"{engine.owners.host}/{gone.pid}/4026539999.0badb007/tag-1") is False
        assert engine.owners.is_dead(f"{engine.owners.host}/{gone.pid}/tag-1") is False  # older samekey: no scope
        assert engine.owners.new().split("/")[2] == scope


class _BodySignature(httpx.Auth):
    """An API that signs each request's body (HMAC, as SigV4 or a webhook-style scheme does)."""

    requires_request_body = True

    def auth_flow(self, request: httpx.Request) -> Any:
        import hashlib
        import hmac

        request.headers["X-Signature"] = hmac.new(b"secret", request.content, hashlib.sha256).hexdigest()
        yield request


def _signature_checking_server(bodies: list[bytes]) -> httpx.MockTransport:
    import hashlib
    import hmac

    def server(request: httpx.Request) -> httpx.Response:
        body = request.read()
        expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Signature") != expected:
            return httpx.Response(403, json={"error": "bad signature"})
        bodies.append(body)
        return httpx.Response(503 if len(bodies) == 1 else 201)

    return httpx.MockTransport(server)


def test_a_re_run_upload_is_signed_over_the_bytes_it_sends(journal_path: Path) -> None:
    # the first attempt's bytes are put back BEFORE auth runs: a body signature covers them
    bodies: list[bytes] = []
    upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
    policy = samekey.RetryPolicy(max_attempts=1)
    with _client(journal_path, transport=_signature_checking_server(bodies), policy=policy, auth=_BodySignature()) as c:
        with pytest.raises(samekey.RetriesExhausted):
            c.post(URL, files=upload, operation="booking-42/upload")
        again = c.post(URL, files=upload, operation="booking-42/upload")
    assert again.status_code == 201, again.text
    assert bodies[0] == bodies[1]


def test_an_async_re_run_upload_is_signed_over_the_bytes_it_sends(journal_path: Path) -> None:
    bodies: list[bytes] = []

    async def story() -> int:
        upload = {"file": ("passport.pdf", b"%PDF-1.7 scan", "application/pdf")}
        async with samekey.AsyncClient(
            journal=journal_path,
            transport=_signature_checking_server(bodies),
            policy=samekey.RetryPolicy(max_attempts=1),
            auth=_BodySignature(),
        ) as c:
            with pytest.raises(samekey.RetriesExhausted):
                await c.post(URL, files=upload, operation="booking-42/upload")
            return (await c.post(URL, files=upload, operation="booking-42/upload")).status_code

    assert asyncio.run(story()) == 201
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize("status", [307, 308])
def test_a_re_run_that_replays_a_307_follows_it_with_the_same_key(journal_path: Path, status: int) -> None:
    # A 307/308 re-sends the POST, body and key, to the new location. On a re-run the
    # redirect is replayed from the journal and httpx follows it again: without the
    # operation's key the follow-up would be a new payment.
    charged: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/charges":
            return httpx.Response(status, headers={"Location": "https://pay.example/v2/charges"})
        key = request.headers.get("Idempotency-Key")
        if key not in charged:
            charged.append(key)
        return httpx.Response(201, json={"charge": charged.index(key)})

    for _ in range(2):
        with _client(journal_path, transport=httpx.MockTransport(server), follow_redirects=True) as client:
            response = client.post(URL, json={"amount": 100}, operation="order-1/charge")
            assert response.status_code == 201 and response.json() == {"charge": 0}
            record = client.journal.get("order-1/charge")
    assert record is not None and record.response_status == status
    assert charged == [record.key], "one key, one charge: the re-run followed the redirect with the same key"


def test_an_answer_carried_by_an_error_knows_its_request(journal_path: Path, no_sleep: None) -> None:
    # an httpx transport's Response has no .request: the client sets it, but these never reach it
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json={"error": "down"}))
    with _client(journal_path, transport=transport, policy=samekey.RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(samekey.RetriesExhausted) as keyed:
            client.post(URL, json={"amount": 1}, operation="op")
        with pytest.raises(samekey.RetriesExhausted) as unkeyed:
            client.get(URL)
    for error in (keyed.value, unkeyed.value):
        last = error.last_response
        assert last is not None and last.url == URL
        with pytest.raises(httpx.HTTPStatusError, match="503"):
            last.raise_for_status()
    journal = _DiskFullOnComplete(journal_path)
    transport = httpx.MockTransport(lambda request: httpx.Response(201, json={"id": "ch_1"}))
    with samekey.Client(journal=journal, transport=transport) as client:
        with pytest.raises(samekey.AnswerNotRecorded) as caught:
            client.post(URL, json={"amount": 1}, operation="charge")
    assert caught.value.response.request.method == "POST" and caught.value.response.url == URL
    journal.close()


def test_an_unnamed_post_answering_an_auth_challenge_leaves_no_stale_pending_record(journal_path: Path) -> None:
    # DigestAuth sends the same request again after the 401: it is the same unnamed operation,
    # not a second one that leaves the first pending (listed, and resent by --prefix auto:)
    def server(request: httpx.Request) -> httpx.Response:
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Digest realm="pay", nonce="n1", qop="auth"'})
        return httpx.Response(201, json={"id": "ch_1"})

    transport = httpx.MockTransport(server)
    with _client(journal_path, transport=transport, auth=httpx.DigestAuth("user", "pass")) as client:
        response = client.post(URL, json={"amount": 100})
        records = client.journal.records(include_completed=True)
    info = samekey.operation_info(response)
    assert response.status_code == 201 and info is not None
    assert [(r.operation, r.state, r.attempts) for r in records] == [(info.operation, "completed", 2)]
    assert info.operation is not None and info.operation.startswith("auto:")


def test_stream_takes_operation_like_request(journal_path: Path) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(201, json={"key": r.headers.get("Idempotency-Key")}))
    with _client(journal_path, transport=transport) as client:
        for replayed in (False, True):
            with client.stream("POST", URL, json={"amount": 1}, operation="order-1/charge") as response:
                body = b"".join(response.iter_bytes())
            info = samekey.operation_info(response)
            assert info is not None and info.operation == "order-1/charge" and info.replayed is replayed
            assert body == f'{{"key":"{info.key}"}}'.encode()

    async def story() -> samekey.OperationInfo | None:
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            async with client.stream("POST", URL, json={"amount": 1}, operation="order-1/charge") as response:
                await response.aread()
                return samekey.operation_info(response)

    info = asyncio.run(story())
    assert info is not None and info.operation == "order-1/charge" and info.replayed


def test_event_hooks_run_once_per_call_around_the_retries(journal_path: Path, no_sleep: None) -> None:
    # as README says: a request hook before the key is added, a response hook on the final answer only
    answers = iter([httpx.Response(503), httpx.Response(201, json={"id": "ch_1"})])
    seen: list[tuple[str, object]] = []
    hooks = {
        "request": [lambda request: seen.append(("request", request.headers.get("Idempotency-Key")))],
        "response": [lambda response: seen.append(("response", response.status_code))],
    }
    transport = httpx.MockTransport(lambda request: next(answers))
    with _client(journal_path, transport=transport, event_hooks=hooks) as client:
        response = client.post(URL, json={"amount": 1}, operation="order-1/charge")
    info = samekey.operation_info(response)
    assert info is not None and info.attempts == 2
    assert seen == [("request", None), ("response", 201)]


def test_a_samekey_transport_given_to_a_samekey_client_is_refused_not_waited_on(journal_path: Path) -> None:
    # samekey.Client(transport=samekey.SameKeyTransport()) wrapped it in a second one: the inner one
    # found its own client holding the lease on the shared journal and waited it out on every request
    # (25 s with httpx's default timeouts, 60 s with a longer lease), in silence
    inner = samekey.SameKeyTransport(httpx.MockTransport(lambda r: httpx.Response(201)), journal=journal_path)
    with pytest.raises(TypeError, match=r"transport is a samekey.SameKeyTransport.*httpx.HTTPTransport"):
        samekey.Client(journal=journal_path, transport=inner)
    with pytest.raises(TypeError, match=r"mounts\['all://'\] is a samekey.SameKeyTransport"):
        samekey.Client(journal=journal_path, mounts={"all://": inner})
    ainner = samekey.AsyncSameKeyTransport(httpx.MockTransport(lambda r: httpx.Response(201)), journal=journal_path)
    with pytest.raises(TypeError, match=r"transport is a samekey.AsyncSameKeyTransport.*httpx.AsyncHTTPTransport"):
        samekey.AsyncClient(journal=journal_path, transport=ainner)
    inner.close()
    asyncio.run(ainner.aclose())

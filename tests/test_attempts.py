"""The retry loop (_attempts.py): retries under one key, giving up, the retry budget's use, and
what is journaled of each attempt and of the answer (a 401/407 keeps the key pending;
AnswerNotRecorded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, behind_digest_auth, drive, make_client, sent_keys
from samekey._config import Config
from samekey._engine import Engine


@respx.mock
@pytest.mark.parametrize("status", [400, 402, 403, 404, 422, 501])
def test_definitive_4xx_is_returned_and_recorded_not_raised(
    journal_path: Path, status: int
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(status, json={"error": "declined"}))
    with make_client(journal_path) as client:
        response = client.post(URL, json={}, operation="op")
        record = client.journal.get("op")
    assert response.status_code == status and route.call_count == 1
    assert record is not None and record.state == "completed" and record.response_status == status


@respx.mock
def test_a_5xx_that_outlasts_the_retries_leaves_the_key_pending(
    journal_path: Path, no_sleep: None
) -> None:
    respx.post(URL).mock(return_value=httpx.Response(522))
    with make_client(journal_path, policy=samekey.RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={}, operation="op")
        record = client.journal.get("op")
    assert record is not None and record.state == "pending"


def test_digest_auth_challenge_is_answered_with_the_same_key(journal_path: Path) -> None:
    # httpx's DigestAuth sends, gets a 401 challenge, and sends again with credentials.
    seen: list[tuple[str | None, str | None]] = []
    transport = behind_digest_auth(seen)
    with make_client(
        journal_path, transport=transport, auth=httpx.DigestAuth("user", "pass")
    ) as client:
        response = client.post(URL, json={"amount": 100}, operation="order-1/charge")
        record = client.journal.get("order-1/charge")
    assert response.status_code == 201, (
        "the challenge must not be replayed as the operation's answer"
    )
    assert [auth is None for auth, _ in seen] == [True, False]
    assert seen[0][1] is not None and seen[0][1] == seen[1][1]
    assert record is not None and record.state == "completed" and record.response_status == 201


@respx.mock
@pytest.mark.parametrize("status", [401, 407])
def test_refused_credentials_keep_the_key_pending_for_a_rerun(
    journal_path: Path, status: int
) -> None:
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(status, json={"error": "bad key"}), httpx.Response(201)]
    )
    with make_client(journal_path, headers={"Authorization": "Bearer sk_wrong"}) as client:
        first = client.post(URL, json={"amount": 100}, operation="op")
        record = client.journal.get("op")
    assert first.status_code == status, "the caller sees the refusal"
    assert (
        record is not None
        and record.state == "pending"
        and f"HTTP {status}" in (record.last_error or "")
    )
    with make_client(journal_path, headers={"Authorization": "Bearer sk_right"}) as client:
        second = client.post(URL, json={"amount": 100}, operation="op")
        record = client.journal.get("op")
    assert second.status_code == 201 and route.call_count == 2
    assert record is not None and record.state == "completed"
    assert sent_keys(route) == [record.key, record.key]


@respx.mock
def test_exhaustion_raises_with_details_and_the_rerun_reuses_the_key(
    journal_path: Path, no_sleep: None
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    with make_client(journal_path, policy=samekey.RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.post(URL, json={"amount": 1}, operation="order-7")
        err = caught.value
        assert err.operation == "order-7" and err.attempts == 3
        assert err.last_response is not None and err.last_response.status_code == 503
        assert err.key == sent_keys(route)[0]
        assert "still pending" in str(err) and "samekey resume order-7" in str(err)
        record = client.journal.get("order-7")
        assert record is not None and record.state == "pending" and record.attempts == 3
        assert record.last_error == "HTTP 503" and record.lease_owner is None
    route.mock(return_value=httpx.Response(201))
    with make_client(journal_path) as client:  # the next run
        response = client.post(URL, json={"amount": 1}, operation="order-7")
    assert response.status_code == 201
    assert set(sent_keys(route)) == {err.key}
    assert samekey.operation_info(response).attempts == 4  # type: ignore[union-attr]


@respx.mock
def test_exhaustion_after_exceptions_carries_the_exception(
    journal_path: Path, no_sleep: None
) -> None:
    respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with make_client(journal_path, policy=samekey.RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(samekey.RetriesExhausted, match="ConnectError: refused") as caught:
            client.post(URL, json={}, operation="op")
    assert isinstance(caught.value.last_exception, httpx.ConnectError)


@respx.mock
def test_non_retryable_error_propagates_and_keeps_the_key_pending(journal_path: Path) -> None:
    respx.post(URL).mock(side_effect=httpx.UnsupportedProtocol("nope"))
    with make_client(journal_path) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            client.post(URL, json={}, operation="op")
        record = client.journal.get("op")
    assert record is not None and record.state == "pending" and record.lease_owner is None


@respx.mock
def test_retry_after_is_slept_and_capped_by_the_deadline(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("samekey._transport.time.sleep", slept.append)
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(201)]
    )
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01)
    with make_client(journal_path, policy=policy) as client:
        assert client.post(URL, json={}, operation="a").status_code == 201
    assert slept == [7.0] and route.call_count == 2
    # a Retry-After that would end past the deadline stops at once instead of sleeping
    route.reset()
    route.mock(return_value=httpx.Response(503, headers={"Retry-After": "50"}))
    slept.clear()
    with make_client(journal_path, policy=samekey.RetryPolicy(deadline=10)) as client:
        with pytest.raises(samekey.RetriesExhausted, match="deadline"):
            client.post(URL, json={}, operation="b")
    assert slept == [] and route.call_count == 1


@respx.mock
def test_each_attempt_retry_and_replay_is_logged(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    respx.post(URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(201), httpx.Response(201)]
    )
    caplog.set_level(logging.DEBUG, logger="samekey")
    with samekey.set_testing(True), make_client(journal_path) as client:
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


class _DiskFullOnComplete(samekey.Journal):
    fail = True

    def complete(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            raise samekey.JournalError(
                self.location, "the disk is full while completing", "Free some space."
            )
        super().complete(*args, **kwargs)


def test_a_full_disk_after_the_server_answered_says_it_was_sent_and_keeps_the_key(
    journal_path: Path,
) -> None:
    journal = _DiskFullOnComplete(journal_path)
    with respx.mock, samekey.Client(journal=journal) as client:
        route = respx.post(URL).mock(return_value=httpx.Response(201, json={"id": "ch_1"}))
        with pytest.raises(samekey.AnswerNotRecorded) as caught:
            client.post(URL, json={"amount": 100}, operation="order-1/charge")
        message = str(caught.value)
        assert (
            "was sent and the server answered HTTP 201" in message
            and "nothing was sent" not in message.lower()
        )
        assert "Do not start it under a new operation name" in message
        assert caught.value.response.json() == {"id": "ch_1"}  # the answer is not lost
        assert isinstance(caught.value, samekey.JournalError)
        record = journal.get("order-1/charge")
        assert (
            record is not None and record.state == "pending" and record.lease_owner is None
        )  # free at once
        journal.fail = (
            False  # the disk has room again: the re-run sends the SAME key, no new charge
        )
        client.post(URL, json={"amount": 100}, operation="order-1/charge")
    keys = sent_keys(route)
    assert len(keys) == 2 and keys[0] == keys[1] == record.key
    journal.close()


class _DiskFullOnAttempt(samekey.Journal):
    def record_attempt(self, *args: Any, **kwargs: Any) -> None:
        raise samekey.JournalError(
            self.location, "the disk is full while recording", "Free some space; nothing was sent."
        )


def test_a_full_disk_between_attempts_does_not_claim_nothing_was_sent(
    journal_path: Path, no_sleep: None
) -> None:
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


def test_an_answer_carried_by_an_error_knows_its_request(
    journal_path: Path, no_sleep: None
) -> None:
    # an httpx transport's Response has no .request: the client sets it, but these never reach it
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json={"error": "down"}))
    with make_client(
        journal_path, transport=transport, policy=samekey.RetryPolicy(max_attempts=2)
    ) as client:
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


def test_the_lease_covers_a_retry_after_longer_than_the_lease(journal_path: Path) -> None:
    # A Retry-After (or a backoff) longer than the lease must not let another caller take the
    # operation over, and send it too, while its holder waits to try again.
    journal = samekey.Journal(journal_path)
    engine = Engine(Config.of(policy=samekey.RetryPolicy(), lease=2), journal)
    request = httpx.Request(
        "POST", URL, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "slow-op"}
    )
    held_for: list[float] = []

    def on_sleep(seconds: float) -> None:
        record = journal.get("slow-op")
        assert record is not None and record.lease_expires is not None
        held_for.append(record.lease_expires - time.time() - seconds)

    answers = [httpx.Response(503, headers={"Retry-After": "30"}), httpx.Response(201)]
    assert drive(engine, request, answers, on_sleep).status_code == 201
    journal.close()
    assert (
        len(held_for) == 1 and held_for[0] > 1.5
    )  # still held past the wait, for the next attempt


def test_an_interrupted_wait_counts_no_attempt_and_keeps_the_last_outcome(
    journal_path: Path,
) -> None:
    # samekey list must say what the server answered, not that a task was cancelled
    transport = httpx.MockTransport(
        lambda request: httpx.Response(503, headers={"Retry-After": "5"})
    )

    async def story() -> samekey.OperationRecord | None:
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(
                    client.post("https://pay.test/charges", json={}, operation="op"), 0.5
                )
            return client.journal.get("op")

    record = asyncio.run(story())
    assert record is not None and (record.attempts, record.last_error, record.lease_owner) == (
        1,
        "HTTP 503",
        None,
    )


def test_giving_up_says_how_many_attempts_were_made_in_this_run(
    journal_path: Path, no_sleep: None
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    policy = samekey.RetryPolicy(max_attempts=2)
    with samekey.Client(journal=journal_path, transport=transport, policy=policy) as client:
        for _ in range(2):
            with pytest.raises(samekey.RetriesExhausted) as caught:
                client.post("https://pay.test/charges", json={}, operation="op")
    assert "gave up after 4 attempt(s), 2 in this run (max_attempts reached" in str(caught.value)

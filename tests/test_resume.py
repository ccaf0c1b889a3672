"""Client.resume / resume_pending (sync and async), key lifetime and retention."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import anyio
import httpx
import pytest

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer

ONE_TRY = samekey.RetryPolicy(max_attempts=1)


class Recorder:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if self.statuses else 201
        return httpx.Response(status, json={"n": len(self.requests)})

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


def leave_pending(
    journal_path: Path, operation: str, url: str = "https://pay.test/v1/charges", **kwargs: object
) -> str:
    """Run an operation that gives up (one 503), leaving it pending; its key."""
    rec = Recorder(503)
    with samekey.Client(
        journal=journal_path, policy=ONE_TRY, transport=httpx.MockTransport(rec)
    ) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(url, operation=operation, **kwargs)  # type: ignore[arg-type]
    key = rec.keys[0]
    assert key is not None
    return key


def test_resume_resends_the_journaled_request_with_the_same_key(journal_path: Path) -> None:
    key = leave_pending(
        journal_path,
        "order-1/charge",
        json={"amount": 1200},
        headers={"Authorization": "Bearer old-secret", "X-Api-Key": "k-old", "X-Tenant": "acme"},
    )
    stored = samekey.Journal(journal_path).get("order-1/charge")
    assert stored is not None
    names = {k.lower() for k, _ in stored.request_headers}
    assert "authorization" not in names and "x-api-key" not in names and "x-tenant" in names

    rec = Recorder(201)
    with samekey.Client(
        journal=journal_path,
        transport=httpx.MockTransport(rec),
        headers={"Authorization": "Bearer new-secret"},
    ) as client:
        response = client.resume("order-1/charge")
    assert response.status_code == 201
    [sent] = rec.requests
    assert sent.method == "POST" and str(sent.url) == "https://pay.test/v1/charges"
    assert sent.headers["Idempotency-Key"] == key
    assert json.loads(sent.content) == {"amount": 1200}
    assert (
        sent.headers["Authorization"] == "Bearer new-secret"
    )  # the client's own auth applies again
    assert sent.headers["X-Tenant"] == "acme"  # stored non-secret header
    assert "X-Api-Key" not in sent.headers  # a secret is never stored, so never re-sent from disk
    info = samekey.operation_info(response)
    assert info is not None and info.key == key and info.attempts == 2 and not info.replayed
    record = samekey.Journal(journal_path).get("order-1/charge")
    assert record is not None and record.state == "completed" and record.key == key


def test_resume_headers_override_stored_ones(journal_path: Path) -> None:
    leave_pending(journal_path, "op", json={"a": 1}, headers={"X-Tenant": "acme"})
    rec = Recorder(201)
    with samekey.Client(journal=journal_path, transport=httpx.MockTransport(rec)) as client:
        client.resume("op", headers={"X-Tenant": "globex", "X-Api-Key": "k"})
    assert rec.requests[0].headers.get_list("X-Tenant") == ["globex"]
    assert rec.requests[0].headers["X-Api-Key"] == "k"


def test_resume_of_a_completed_operation_replays_without_sending(journal_path: Path) -> None:
    rec = Recorder(201)
    with samekey.Client(journal=journal_path, transport=httpx.MockTransport(rec)) as client:
        first = client.post("https://pay.test/c", operation="done-op", json={"a": 1})
        again = client.resume("done-op")
    assert len(rec.requests) == 1
    assert again.status_code == 201 and again.json() == first.json()
    info = samekey.operation_info(again)
    assert info is not None and info.replayed


def test_resume_of_an_unknown_operation_is_a_clear_lookup_error(journal_path: Path) -> None:
    rec = Recorder()
    with samekey.Client(journal=journal_path, transport=httpx.MockTransport(rec)) as client:
        with pytest.raises(samekey.OperationNotFound) as caught:
            client.resume("no-such-op")
        assert client.resume_pending("no-such") == []
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, samekey.SameKeyError)
    assert "'no-such-op' is not in the journal" in str(caught.value)
    assert str(journal_path) in str(caught.value) and "nothing was sent" in str(caught.value)
    assert rec.requests == []


def test_resume_refuses_a_client_with_another_key_header(journal_path: Path) -> None:
    leave_pending(journal_path, "op", json={})
    rec = Recorder()
    with samekey.Client(
        journal=journal_path, key_header="X-Idem", transport=httpx.MockTransport(rec)
    ) as client:
        with pytest.raises(samekey.SameKeyError, match="key_header='Idempotency-Key'"):
            client.resume("op")
    assert rec.requests == []


def test_a_rerun_with_another_key_header_is_refused_as_resume_is(journal_path: Path) -> None:
    # The server saw the first attempt's key in Idempotency-Key; the same key in another header
    # is no key to it, so it would act again. The re-run must say so, as resume does.
    leave_pending(journal_path, "op", url="https://pay.test/c", json={})
    rec = Recorder()
    with samekey.Client(
        journal=journal_path, key_header="X-Idem", transport=httpx.MockTransport(rec)
    ) as client:
        with pytest.raises(
            samekey.OperationMismatch, match=r"key_header='Idempotency-Key'.*Nothing was sent"
        ):
            client.post("https://pay.test/c", operation="op", json={})
    assert rec.requests == []
    record = samekey.Journal(journal_path).get("op")
    assert record is not None and record.pending and record.lease_owner is None


def test_resume_pending_finishes_all_and_reports_each_failure(
    journal_path: Path, no_sleep: None
) -> None:
    keys = {
        op: leave_pending(journal_path, op, json={"op": op})
        for op in ("batch/1", "batch/2", "batch/3")
    }
    leave_pending(journal_path, "other/1", json={})

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["op"] == "batch/2":
            return httpx.Response(503)  # still down for this one
        return httpx.Response(201, json={"ok": True})

    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: (seen.append(r), handler(r))[1])
    with samekey.Client(
        journal=journal_path, policy=samekey.RetryPolicy(max_attempts=2), transport=transport
    ) as c:
        results = c.resume_pending("batch/")
    assert [r.operation for r in results] == ["batch/1", "batch/2", "batch/3"]
    assert [r.ok for r in results] == [True, False, True]
    assert results[0].response is not None and results[0].response.status_code == 201
    assert isinstance(results[1].error, samekey.RetriesExhausted) and results[1].response is None
    assert {r.headers["Idempotency-Key"] for r in seen} == set(keys.values())
    journal = samekey.Journal(journal_path)
    assert [r.operation for r in journal.pending()] == ["batch/2", "other/1"]
    assert journal.get("batch/2").key == keys["batch/2"]  # type: ignore[union-attr]


def test_async_resume_and_resume_pending(journal_path: Path) -> None:
    key1 = leave_pending(journal_path, "a/1", json={"n": 1})
    key2 = leave_pending(journal_path, "a/2", json={"n": 2})
    rec = Recorder(201, 201)

    async def handler(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return rec(request)

    async def main() -> tuple[httpx.Response, list[samekey.ResumeResult]]:
        async with samekey.AsyncClient(
            journal=journal_path, transport=httpx.MockTransport(handler)
        ) as client:
            one = await client.resume("a/1")
            rest = await client.resume_pending()
            with pytest.raises(samekey.OperationNotFound):
                await client.resume("missing")
        return one, rest

    one, rest = anyio.run(main)
    assert one.status_code == 201
    assert [(r.operation, r.ok) for r in rest] == [("a/2", True)]
    assert rec.keys == [key1, key2]


def test_resume_against_a_real_server_charges_once(
    journal_path: Path, tmp_path: Path, no_sleep: None
) -> None:
    # the first attempt charged but the answer was lost; resume gets the replay, not a 2nd charge
    with PaymentServer(
        tmp_path / "server.sqlite3", faults=FaultPlan([Fault("drop_after")])
    ) as server:
        with samekey.Client(journal=journal_path, policy=ONE_TRY) as client:
            with pytest.raises(samekey.RetriesExhausted):
                client.post(f"{server.url}/charges", operation="inv-7", json={"amount": 700})
        assert server.charge_count() == 1
        with samekey.Client(journal=journal_path) as client:
            response = client.resume("inv-7")
        assert response.status_code == 201 and response.json()["amount"] == 700
        assert server.charge_count() == 1
        assert len(set(server.keys_seen())) == 1 and len(server.keys_seen()) == 2


# -- key lifetime -------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client_with_clock(
    journal_path: Path,
    rec: Callable[[httpx.Request], httpx.Response],
    clock: FakeClock,
    **kw: object,
) -> samekey.Client:
    client = samekey.Client(journal=journal_path, transport=httpx.MockTransport(rec), **kw)  # type: ignore[arg-type]
    client.engine.clock = clock
    return client


@pytest.mark.parametrize("ttl", [timedelta(hours=24), 86400.0])
def test_an_expired_pending_key_is_never_sent_again(
    journal_path: Path, ttl: float | timedelta
) -> None:
    clock = FakeClock()
    first = Recorder(503)
    with client_with_clock(journal_path, first, clock, policy=ONE_TRY, key_ttl=ttl) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post("https://pay.test/c", operation="old-op", json={"a": 1})
    key = first.keys[0]

    later = Recorder(201)
    clock.now += 24 * 3600 + 1
    with client_with_clock(journal_path, later, clock, key_ttl=ttl) as client:
        with pytest.raises(samekey.KeyExpired) as caught:
            client.resume("old-op")
        with pytest.raises(samekey.KeyExpired):  # a plain re-run of the same operation too
            client.post("https://pay.test/c", operation="old-op", json={"a": 1})
        results = client.resume_pending()
    assert later.requests == []  # nothing was sent
    assert [(r.operation, type(r.error)) for r in results] == [("old-op", samekey.KeyExpired)]
    message = str(caught.value)
    assert key in message and "24.0 h" in message and "could act twice" in message
    assert "samekey forget old-op" in message and "Nothing was sent" in message
    record = samekey.Journal(journal_path).get("old-op")
    assert record is not None and record.pending and record.key == key  # never silently replaced
    assert record.lease_owner is None  # the lease was given back


def test_a_key_within_its_ttl_is_resumed(journal_path: Path) -> None:
    clock = FakeClock()
    first = Recorder(503)
    with client_with_clock(journal_path, first, clock, policy=ONE_TRY, key_ttl=60) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post("https://pay.test/c", operation="op", json={})
    clock.now += 59
    later = Recorder(201)
    with client_with_clock(journal_path, later, clock, key_ttl=60) as client:
        assert client.resume("op").status_code == 201
    assert later.keys == first.keys


def test_an_expired_short_lived_key_says_how_old_it_is_in_units_that_tell(
    journal_path: Path,
) -> None:
    # a server keeping keys for 5 minutes: "0.1 h ago, longer than key_ttl (0.1 h)" said nothing
    clock = FakeClock()
    with client_with_clock(
        journal_path, Recorder(503), clock, policy=ONE_TRY, key_ttl=300
    ) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post("https://pay.test/c", operation="op", json={})
    clock.now += 400
    with client_with_clock(journal_path, Recorder(201), clock, key_ttl=300) as client:
        with pytest.raises(
            samekey.KeyExpired, match=r"created 6\.7 min ago, longer than key_ttl \(5\.0 min\)"
        ):
            client.resume("op")
        client.engine.config = dataclasses.replace(client.engine.config, key_ttl=30)
        with pytest.raises(
            samekey.KeyExpired, match=r"created 6\.7 min ago, longer than key_ttl \(30\.0 s\)"
        ):
            client.resume("op")


# -- retention of completed records ---------------------------------------------------------


def test_lazy_purge_drops_old_completed_records_and_keeps_pending(journal_path: Path) -> None:
    clock = FakeClock()
    rec = Recorder(201, 503)
    with client_with_clock(
        journal_path, rec, clock, policy=ONE_TRY, retention=timedelta(days=7)
    ) as client:
        client.post("https://pay.test/c", operation="old-done", json={})
        with pytest.raises(samekey.RetriesExhausted):
            client.post("https://pay.test/c", operation="old-pending", json={})
    journal = samekey.Journal(journal_path)
    assert {r.operation for r in journal.records()} == {"old-done", "old-pending"}

    clock.now += 8 * 86400
    rec = Recorder()
    with client_with_clock(journal_path, rec, clock, key_ttl=timedelta(days=30)) as client:
        client.post("https://pay.test/c", operation="new", json={})
    assert {r.operation for r in journal.records()} == {"old-pending", "new"}
    journal.close()


def test_purge_runs_at_most_once_per_interval_per_client(journal_path: Path) -> None:
    clock = FakeClock()
    rec = Recorder()
    purges: list[float] = []
    with client_with_clock(journal_path, rec, clock, retention=10) as client:
        real = client.journal.purge_completed

        def counting(older_than: float, now: float, limit: int | None = None) -> int:
            purges.append(now)
            return real(older_than, now, limit)

        client.journal.purge_completed = counting  # type: ignore[method-assign]
        client.post("https://pay.test/c", operation="a", json={})
        clock.now += 20
        client.post(
            "https://pay.test/c", operation="b", json={}
        )  # "a" is old enough, but not yet purged
        assert client.journal.get("a") is not None
        clock.now += 3600
        client.post("https://pay.test/c", operation="c", json={})
        assert client.journal.get("a") is None and client.journal.get("b") is None
    assert len(purges) == 2


def test_a_purge_backlog_is_taken_a_batch_per_request_not_all_at_once(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from samekey import _flow

    monkeypatch.setattr(_flow, "PURGE_BATCH", 4)
    clock = FakeClock()
    with client_with_clock(journal_path, Recorder(), clock, retention=10) as client:
        for i in range(10):  # the first request also purges: nothing old yet
            client.post("https://pay.test/c", operation=f"old-{i}", json={})
        clock.now += 3600 + 20  # all ten are past the retention now, and a purge is due

        def old_left() -> int:
            return sum(r.operation.startswith("old-") for r in client.journal.records())

        client.post("https://pay.test/c", operation="n-1", json={})
        assert old_left() == 6, "one batch, not the whole backlog, on this request"
        client.post("https://pay.test/c", operation="n-2", json={})
        assert old_left() == 6, "the next batch waits a moment"
        clock.now += 1.5
        client.post("https://pay.test/c", operation="n-3", json={})
        clock.now += 1.5
        client.post("https://pay.test/c", operation="n-4", json={})
        assert old_left() == 0
        clock.now += 1.5
        assert client.engine.purges.due(clock.now) is False, "backlog done: back to once an hour"


def test_retention_must_be_a_positive_duration(journal_path: Path) -> None:
    with pytest.raises(ValueError, match="retention"):
        samekey.Client(journal=journal_path, retention=0)
    with pytest.raises(TypeError, match="retention"):
        samekey.Client(journal=journal_path, retention="7d")  # type: ignore[arg-type]

"""The decision core (_flow.py): naming a request's operation, claiming it, waiting for its holder,
taking it over from an owner that is gone.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, behind_digest_auth, drive, make_client
from samekey._config import Config
from samekey._engine import Engine
from samekey.testing import PaymentServer


def test_an_unnamed_post_answering_an_auth_challenge_leaves_no_stale_pending_record(
    journal_path: Path,
) -> None:
    # DigestAuth sends the same request again after the 401: it is the same unnamed operation,
    # not a second one that leaves the first pending (listed, and resent by --prefix auto:)
    transport = behind_digest_auth()
    with make_client(
        journal_path, transport=transport, auth=httpx.DigestAuth("user", "pass")
    ) as client:
        response = client.post(URL, json={"amount": 100})
        records = client.journal.records(include_completed=True)
    info = samekey.operation_info(response)
    assert response.status_code == 201 and info is not None
    assert [(r.operation, r.state, r.attempts) for r in records] == [
        (info.operation, "completed", 2)
    ]
    assert info.operation is not None and info.operation.startswith("auto:")


def test_threads_on_one_operation_get_one_charge_and_the_same_answer(
    journal_path: Path, tmp_path: Path
) -> None:
    with PaymentServer(tmp_path / "s.sqlite3", work_seconds=0.2) as server:
        results: list[httpx.Response] = []
        with samekey.Client(journal=journal_path, base_url=server.url) as client:

            def pay() -> None:
                results.append(client.post("/charges", json={"amount": 1}, operation="shared-op"))

            threads = [threading.Thread(target=pay) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        assert len(results) == 8 and {r.status_code for r in results} == {201}
        assert len({r.json()["id"] for r in results}) == 1
        assert server.charge_count() == 1 and len(server.requests()) == 1
        assert sum(1 for r in results if samekey.operation_info(r).replayed) == 7  # type: ignore[union-attr]


def test_on_busy_raise_reports_the_operation_in_progress(
    journal_path: Path, tmp_path: Path
) -> None:
    with PaymentServer(tmp_path / "s.sqlite3", work_seconds=0.5) as server:
        with samekey.Client(journal=journal_path, base_url=server.url, on_busy="raise") as client:
            worker = threading.Thread(
                target=lambda: client.post("/charges", json={}, operation="busy-op")
            )
            worker.start()
            deadline = time.monotonic() + 5
            while not server.requests() and time.monotonic() < deadline:
                # wait until the first call holds the lease and is on the wire
                rec = client.journal.get("busy-op")
                if rec is not None and rec.lease_owner:
                    break
                time.sleep(0.01)
            with pytest.raises(
                samekey.OperationInProgress, match=r"being executed by .*on_busy='wait'"
            ):
                client.post("/charges", json={}, operation="busy-op")
            worker.join(timeout=10)
        assert server.charge_count() == 1


def test_an_expired_lease_from_another_host_is_taken_over_with_the_same_key(
    journal_path: Path,
) -> None:
    journal = samekey.Journal(journal_path)
    with respx.mock, samekey.Client(journal=journal, lease=0.3) as client:
        route = respx.post(URL).mock(return_value=httpx.Response(201))
        request = client.build_request(
            "POST", URL, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "op"}
        )
        request.read()
        plan = client.engine.plan(request)
        assert plan is not None
        # a replica on another host claimed it, then vanished mid-payment
        journal.claim(plan.intent, "other-host/4242/abcd", 0.3, time.time())
        started = time.monotonic()
        response = client.post(URL, json={"a": 1}, operation="op")
        waited = time.monotonic() - started
    journal.close()
    assert response.status_code == 201 and 0.2 <= waited < 5
    assert route.calls[0].request.headers["Idempotency-Key"] == plan.intent.key


def test_waiting_a_long_time_on_a_busy_operation_does_not_overflow(journal_path: Path) -> None:
    # A holder with a long lease (a slow bank transfer): the waiter polls for an hour of its clock.
    journal = samekey.Journal(journal_path)
    clock = [time.time()]
    engine = Engine(Config.of(lease=3600), journal, clock=lambda: clock[0])
    request = httpx.Request(
        "POST", URL, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "transfer-1"}
    )
    plan = engine.plan(request)
    assert plan is not None
    journal.claim(plan.intent, "bank-worker-2/4242/abc-1", 3600, clock[0])  # another host, alive
    slept: list[float] = []

    def on_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    response = drive(engine, request, [httpx.Response(201)], on_sleep)
    journal.close()
    assert response.status_code == 201
    assert 3599 < sum(slept) < 3602 and max(slept) <= 0.5

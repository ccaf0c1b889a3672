"""What one client's requests share (_engine.py): the lease an attempt holds covers its timeouts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

import samekey
from client_helpers import URL
from samekey._engine import LEASE_MARGIN


def test_a_request_whose_timeouts_outlast_the_lease_is_not_taken_over_while_on_the_wire(
    journal_path: Path,
) -> None:
    # lease=1 but timeout=3: the answer may come after the lease ran out. A second caller then
    # must see the operation in progress, not take it over and send it a second time.
    on_the_wire, second_done = threading.Event(), threading.Event()
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        if len(sent) == 1:
            on_the_wire.set()
            second_done.wait(10)  # the first answer comes once the second caller is done
        return httpx.Response(201, json={"id": "ch_1"})

    transport = httpx.MockTransport(server)
    with (
        samekey.Client(journal=journal_path, transport=transport, lease=1, timeout=3) as first,
        samekey.Client(
            journal=journal_path, transport=transport, lease=1, on_busy="raise"
        ) as second,
    ):
        worker = threading.Thread(
            target=lambda: first.post(URL, json={"a": 1}, operation="slow-charge")
        )
        worker.start()
        assert on_the_wire.wait(10)
        time.sleep(1.3)  # past the client's 1 s lease, within what the timeouts allow the attempt
        try:
            with pytest.raises(samekey.OperationInProgress):
                second.post(URL, json={"a": 1}, operation="slow-charge")
        finally:
            second_done.set()
            worker.join(10)
    assert len(sent) == 1, "the operation was sent twice at once"


def _lease(engine: samekey._engine.Engine, timeout: httpx.Timeout | None) -> float:
    request = httpx.Request(
        "POST", "http://127.0.0.1/", extensions={"timeout": httpx.Timeout(timeout).as_dict()}
    )
    return engine.lease_for(request)


def test_each_requests_lease_covers_its_own_timeouts(journal_path: Path) -> None:
    with samekey.Client(journal=journal_path, lease=30.0) as client:
        engine = client.engine
        assert _lease(engine, httpx.Timeout(100.0)) == 400.0 + LEASE_MARGIN
        assert _lease(engine, httpx.Timeout(100.0)) == 400.0 + LEASE_MARGIN
        assert _lease(engine, httpx.Timeout(5.0, read=200.0)) == 215.0 + LEASE_MARGIN
        assert (
            _lease(engine, httpx.Timeout(1.0)) == 30.0
        )  # short timeouts: the client's lease stands
        assert _lease(engine, httpx.Timeout(None)) == 30.0  # unbounded: the client's lease stands
        assert engine.lease_for(httpx.Request("POST", "http://127.0.0.1/")) == 30.0

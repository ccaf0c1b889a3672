"""The engine (_engine.py): an attempt's lease covers its timeouts, whatever the last request's were."""

from __future__ import annotations

from pathlib import Path

import httpx

import samekey
from samekey._engine import LEASE_MARGIN


def _lease(engine: samekey._engine.Engine, timeout: httpx.Timeout | None) -> float:
    request = httpx.Request("POST", "http://127.0.0.1/", extensions={"timeout": httpx.Timeout(timeout).as_dict()})
    return engine.lease_for(request)


def test_each_requests_lease_covers_its_own_timeouts(journal_path: Path) -> None:
    with samekey.Client(journal=journal_path, lease=30.0) as client:
        engine = client.engine
        assert _lease(engine, httpx.Timeout(100.0)) == 400.0 + LEASE_MARGIN
        assert _lease(engine, httpx.Timeout(100.0)) == 400.0 + LEASE_MARGIN
        assert _lease(engine, httpx.Timeout(5.0, read=200.0)) == 215.0 + LEASE_MARGIN
        assert _lease(engine, httpx.Timeout(1.0)) == 30.0  # short timeouts: the client's lease stands
        assert _lease(engine, httpx.Timeout(None)) == 30.0  # unbounded: the client's lease stands
        assert engine.lease_for(httpx.Request("POST", "http://127.0.0.1/")) == 30.0

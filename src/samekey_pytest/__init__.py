"""samekey's pytest plugin: fixtures for testing code that uses samekey.

Loaded by pytest in every suite where samekey is installed (the ``pytest11`` entry point
``samekey``; ``-p no:samekey`` turns it off), so this module imports nothing but pytest:
samekey itself (httpx, tenacity, ~0.1 s) is imported by the first fixture a test uses.

- ``samekey_testing``: samekey's testing mode on for the test (retries happen, their waits are 0).
- ``samekey_journal``: a fresh journal path for the test, also set as ``$SAMEKEY_JOURNAL``
  so that code which builds ``samekey.Client()`` with the default journal writes there.
- ``payment_server``: a running ``samekey.testing.PaymentServer`` for the test, its fault
  controls (``faults``, ``decline``, ``require_auth``, ``work_seconds``) settable at any time.
Both of the last two turn the testing mode on as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from samekey.testing import PaymentServer

__all__ = ["payment_server", "samekey_journal", "samekey_testing"]


@pytest.fixture
def samekey_testing() -> Iterator[None]:
    """samekey's testing mode for this test: no real sleeps between retries, and the default
    retry budget off (see ``samekey.set_testing``); undone after the test."""
    import samekey

    with samekey.set_testing(True):
        yield


@pytest.fixture
def samekey_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samekey_testing: None) -> Path:
    """A journal path of this test's own (the file is created by the first client that uses it);
    ``$SAMEKEY_JOURNAL`` points at it for the test, so the default journal is this one too."""
    path = tmp_path / "samekey" / "journal.sqlite3"
    monkeypatch.setenv("SAMEKEY_JOURNAL", str(path))
    return path


@pytest.fixture
def payment_server(tmp_path: Path, samekey_testing: None) -> Iterator[PaymentServer]:
    """A loopback payment server with Idempotency-Key semantics, serving on ``.url`` for the test.

    ``payment_server.faults = FaultPlan([Fault.lost_response()])`` injects faults,
    ``.decline = lambda payload: 402`` declines charges, ``.require_auth = "Bearer sk_test"``
    refuses other credentials; ``.charge_count()``, ``.charges()`` and ``.keys_seen()`` say
    what happened.
    """
    from samekey.testing import PaymentServer

    with PaymentServer(tmp_path / "payment-server.sqlite3") as server:
        yield server

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import samekey
from samekey.testing import PaymentServer


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def no_sleep() -> Iterator[None]:
    with samekey.set_testing(True):
        yield


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PaymentServer]:
    with PaymentServer(tmp_path / "server.sqlite3") as srv:
        yield srv


@pytest.fixture(autouse=True)
def _isolated_default_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a test that forgets journal= must never touch the developer's real journal
    monkeypatch.setenv("SAMEKEY_JOURNAL", str(tmp_path / "default-journal.sqlite3"))

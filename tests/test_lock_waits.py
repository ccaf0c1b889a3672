"""Worker processes sharing one journal: a call that meets another process's lock waits for it
(samekey polls, SQLite's own busy handler would sleep in 1-100 ms steps) and then goes through."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import samekey
from samekey import _journal
from test_journal_robustness import intent


def _release_later(action: Callable[[], object], seconds: float = 0.2) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[samekey.Journal]:
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability="process", lock_timeout=10)
    journal.claim(intent("first"), "owner", 60.0, 1000.0)
    yield journal
    journal.close()


def test_the_connection_leaves_lock_waits_to_samekey(journal: samekey.Journal) -> None:
    assert journal._read("PRAGMA busy_timeout", (), "checking") == [(0,)]


def test_a_write_waits_for_another_process_write_and_goes_through(journal: samekey.Journal) -> None:
    other = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another worker mid-commit (held long, to be sure we meet it)
    other.execute("INSERT INTO operations SELECT * FROM operations WHERE 0")
    _release_later(lambda: other.execute("COMMIT"))
    result = journal.claim(intent("second"), "owner", 60.0, 1001.0)
    assert result.status == "created"
    assert [r.operation for r in journal.records()] == ["first", "second"]
    other.close()


def test_a_claim_that_meets_the_lock_between_its_statements_is_run_again_whole(journal: samekey.Journal) -> None:
    # an existing record: the INSERT writes nothing, then BEGIN IMMEDIATE meets the lock; the
    # whole claim runs again once it is free (the INSERT changed nothing, so nothing is done twice)
    other = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    _release_later(lambda: other.execute("ROLLBACK"))
    result = journal.claim(intent("first"), "owner", 60.0, 1001.0)  # the lease is its own: taken again
    assert result.status == "claimed" and result.record.lease_expires == 1061.0
    other.close()


def test_a_group_commit_waits_for_the_lock_too(journal: samekey.Journal) -> None:
    other = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    _release_later(lambda: other.execute("ROLLBACK"))
    calls = [("claim", (intent(f"op-{i}"), "owner", 60.0, 1001.0)) for i in range(3)]
    results = journal.run_calls(calls)
    assert [(r.status, e) for r, e in results] == [("created", None)] * 3
    other.close()


class _LockedTwice:
    """The journal's connection, whose first two statements meet another process's lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.refused = conn, 0

    def execute(self, *args: object) -> sqlite3.Cursor:
        if self.refused < 2:
            self.refused += 1
            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(*args)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_read_that_meets_a_lock_waits_for_it(journal: samekey.Journal) -> None:
    # rare in WAL mode (a WAL being recovered, a connection in exclusive locking mode), but then
    # `samekey list` and a replay must wait like a write does, not fail at once
    real = journal._conn
    journal._conn = _LockedTwice(real)  # type: ignore[assignment]
    try:
        record = journal.get("first")
        assert record is not None and record.state == "pending"
        assert journal._conn.refused == 2  # type: ignore[union-attr]
    finally:
        journal._conn = real


def test_an_error_that_is_not_a_lock_is_not_waited_on(
    journal: samekey.Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[int] = []

    def fails(conn: sqlite3.Connection) -> None:
        tries.append(1)
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(samekey.JournalError, match="the disk is full"):
        journal._write("testing", fails)
    assert tries == [1]
    assert _journal.BUSY_FIRST_PAUSE < 0.001  # a lock meets a poll within a millisecond, not SQLite's steps

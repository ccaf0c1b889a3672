"""Worker processes sharing one journal: a call that meets another process's lock waits for it
(samekey polls, SQLite's own busy handler would sleep in 1-100 ms steps) and then goes through."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import samekey
from samekey import _group_commit
from samekey._contract import Claim
from test_journal_robustness import intent


@contextlib.contextmanager
def _another_writer(path: Path, release: str = "ROLLBACK") -> Iterator[sqlite3.Connection]:
    """Another process's connection holding the write lock; it lets go 0.2 s into the block."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another worker mid-commit (held long, to be sure we meet it)
    timer = threading.Timer(0.2, other.execute, (release,))
    timer.start()
    try:
        yield other
    finally:
        timer.join(10)  # never close a connection while the timer's thread is still inside it
        other.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[samekey.Journal]:
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability="process", lock_timeout=10)
    journal.claim(intent("first"), "owner", 60.0, 1000.0)
    yield journal
    journal.close()


def test_the_connection_leaves_lock_waits_to_samekey(journal: samekey.Journal) -> None:
    assert journal._read("PRAGMA busy_timeout", (), "checking") == [(0,)]


def test_a_write_waits_for_another_process_write_and_goes_through(journal: samekey.Journal) -> None:
    with _another_writer(journal.path, "COMMIT"):
        result = journal.claim(intent("second"), "owner", 60.0, 1001.0)
    assert result.status == "created"
    assert [r.operation for r in journal.records()] == ["first", "second"]


def test_a_claim_that_meets_the_lock_between_its_statements_is_run_again_whole(journal: samekey.Journal) -> None:
    # an existing record: the INSERT writes nothing, then BEGIN IMMEDIATE meets the lock; the
    # whole claim runs again once it is free (the INSERT changed nothing, so nothing is done twice)
    with _another_writer(journal.path):
        result = journal.claim(intent("first"), "owner", 60.0, 1001.0)  # the lease is its own: taken again
    assert result.status == "claimed" and result.record.lease_expires == 1061.0


def test_a_group_commit_waits_for_the_lock_too(journal: samekey.Journal) -> None:
    calls = [Claim(intent(f"op-{i}"), "owner", 60.0, 1001.0) for i in range(3)]
    with _another_writer(journal.path):
        results = journal.run_batch(calls)
    assert [(r.status, e) for r, e in results] == [("created", None)] * 3


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
    assert _group_commit.BUSY_FIRST_PAUSE < 0.001  # a lock meets a poll within a millisecond, not SQLite's steps


_RECOVERING = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 3, 120)  # SQLite's WAL write, checkpoint and recover locks
os.pwrite(fd, bytes(96), 0)  # the WAL index header, not rebuilt yet
print("recovering", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks on the -shm file")
def test_a_read_only_journal_waits_lock_timeout_not_twice_as_long(tmp_path: Path) -> None:
    # `samekey list` (read_only=True) while another process recovers the WAL index (after a
    # worker was killed mid-commit): the read meets SQLITE_BUSY_RECOVERY, waits, then says
    # "locked for more than 1.5 s" -- after 1.5 s, as the writer's read does, not 3 s
    path = tmp_path / "j.sqlite3"
    with samekey.Journal(path, durability="process") as writer:
        writer.claim(intent("first"), "owner", 60.0, 1000.0)
        reader = samekey.Journal(path, read_only=True, lock_timeout=1.5)
        other = subprocess.Popen([sys.executable, "-c", _RECOVERING, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout is not None and other.stdout.readline().strip() == "recovering"
            started = time.monotonic()
            with pytest.raises(samekey.JournalError, match=r"locked by another process for more than 1\.5 s"):
                reader.get("first")
            waited = time.monotonic() - started
        finally:
            other.kill()
            other.wait(10)
            reader.close()
    assert 1.4 < waited < 2.6  # twice the wait (SQLite's busy handler, then samekey's) is 3 s or more

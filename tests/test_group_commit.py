"""Group commit (_group_commit.py): one transaction for many writers, and an interruption
anywhere never wedges the journal nor loses a committed result.

Worker processes sharing one journal: a call that meets another process's lock waits for it
(samekey polls; SQLite's own busy handler would sleep in 1-100 ms steps) and then goes through.
"""

from __future__ import annotations

import contextlib
import inspect
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import samekey
from journal_helpers import in_thread, intent
from samekey import _group_commit, _journal, _wal
from samekey._contract import Claim, Intent


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


def test_a_claim_that_meets_the_lock_between_its_statements_is_run_again_whole(
    journal: samekey.Journal,
) -> None:
    # an existing record: the INSERT writes nothing, then BEGIN IMMEDIATE meets the lock; the
    # whole claim runs again once it is free (the INSERT changed nothing, so nothing is done twice)
    with _another_writer(journal.path):
        result = journal.claim(
            intent("first"), "owner", 60.0, 1001.0
        )  # the lease is its own: taken again
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
    assert (
        _group_commit.BUSY_FIRST_PAUSE < 0.001
    )  # a lock meets a poll within a millisecond, not SQLite's steps


_RECOVERING = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 3, 120)  # SQLite's WAL write, checkpoint and \
recover locks
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
        other = subprocess.Popen(
            [sys.executable, "-c", _RECOVERING, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert other.stdout is not None and other.stdout.readline().strip() == "recovering"
            started = time.monotonic()
            with pytest.raises(
                samekey.JournalError, match=r"locked by another process for more than 1\.5 s"
            ):
                reader.get("first")
            waited = time.monotonic() - started
        finally:
            other.kill()
            other.wait(10)
            reader.close()
    assert (
        1.4 < waited < 2.6
    )  # twice the wait (SQLite's busy handler, then samekey's) is 3 s or more


def test_ctrl_c_after_a_commit_does_not_wedge_later_writes(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sync = _wal.sync_data
    interruptions = [KeyboardInterrupt()]

    def interrupted(fd: int) -> None:
        real_sync(fd)
        if interruptions:
            raise interruptions.pop()  # a signal handler runs as the fdatasync returns

    monkeypatch.setattr(_wal, "sync_data", interrupted)
    journal = samekey.Journal(journal_path)
    with pytest.raises(KeyboardInterrupt):
        journal.claim(intent("op"), "me", 60.0, time.time())
    assert in_thread(lambda: journal.release("op", "me", 0, None, time.time())) is None
    assert in_thread(lambda: journal.claim(intent("op-2"), "me", 60.0, time.time())) is None
    journal.close()


class _Leader:
    """Holds the journal's writer role (inside a write) until released, so others queue up."""

    def __init__(self, journal: samekey.Journal) -> None:
        self.inside, self.go = threading.Event(), threading.Event()

        def block(conn: Any) -> None:
            self.inside.set()
            assert self.go.wait(10)

        self.thread = threading.Thread(target=journal._write, args=("blocking", block))
        self.thread.start()
        assert self.inside.wait(10)

    def finish(self) -> None:
        self.go.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def _queued_write(
    journal: samekey.Journal, fn: Any, queued: int
) -> tuple[threading.Thread, list[BaseException]]:
    """Start a write in a thread and wait (bounded) until it waits in the group-commit queue."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            journal._write("queued", fn)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while len(journal._commits.queue) < queued:
        assert time.monotonic() < deadline, "the write never queued"
        time.sleep(0.001)
    return thread, errors


def _insert(name: str) -> Any:
    row = (
        "?, 'k', 'h', 'POST', 'u', 'fp', '[]', x'', 'pending', 0, 0, NULL, 0, "
        "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
    )
    return lambda conn: conn.execute(f"INSERT INTO operations VALUES ({row})", (name,))


def test_an_interrupted_batch_wakes_the_other_writers_and_rolls_back(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)
    leader = _Leader(journal)

    def interrupted(conn: Any) -> None:
        _insert("first")(conn)
        raise KeyboardInterrupt  # lands in the thread that leads the next batch, mid-transaction

    first, first_errors = _queued_write(journal, interrupted, 1)
    second, second_errors = _queued_write(journal, _insert("second"), 2)
    leader.finish()
    for thread in (first, second):
        thread.join(10)
        assert not thread.is_alive()
    assert isinstance(first_errors[0], KeyboardInterrupt)
    assert isinstance(second_errors[0], samekey.JournalError) and "interrupted" in str(
        second_errors[0]
    )
    assert journal._conn is not None and not journal._conn.in_transaction
    assert journal.records() == [], "the interrupted transaction was rolled back whole"
    assert in_thread(lambda: journal._write("after", _insert("after"))) is None
    journal.close()


def test_a_writer_interrupted_as_it_is_woken_to_lead_passes_the_lead_on(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InterruptedWait(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            super().wait(timeout)
            raise KeyboardInterrupt  # Ctrl-C lands just as this waiter is woken

    journal = samekey.Journal(journal_path)
    leader = _Leader(journal)
    # only the journal's own Event (the one its queued writers wait on) is replaced
    monkeypatch.setattr(
        _group_commit, "threading", SimpleNamespace(Event=InterruptedWait, Lock=threading.Lock)
    )
    first, first_errors = _queued_write(journal, _insert("first"), 1)
    monkeypatch.undo()
    second, second_errors = _queued_write(journal, _insert("second"), 2)
    leader.finish()
    for thread in (first, second):
        thread.join(10)
        assert not thread.is_alive(), "the next writer waited forever"
    assert isinstance(first_errors[0], KeyboardInterrupt) and second_errors == []
    assert [r.operation for r in journal.records()] == ["second"], (
        "the interrupted caller's write was dropped"
    )
    assert in_thread(lambda: journal._write("after", _insert("after"))) is None
    journal.close()


def test_journal_groups_concurrent_commits(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)
    commits = 0
    original = journal._run_batch

    def counting(batch: list[object]) -> None:
        nonlocal commits
        commits += 1
        original(batch)  # type: ignore[arg-type]

    journal._run_batch = counting  # type: ignore[method-assign]

    def claim(i: int) -> None:
        intent = Intent(f"op-{i}", f"k-{i}", "Idempotency-Key", "POST", "http://x/", "fp", (), b"")
        assert journal.claim(intent, "me", 60, time.time()).status == "created"

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(journal.pending()) == 64
    journal.close()
    print(f"64 concurrent claims -> {commits} commits")
    assert commits < 64


def _hold_the_writer_role(journal: samekey.Journal) -> tuple[threading.Thread, threading.Event]:
    """A thread inside a write until the returned event is set: callers meanwhile queue."""
    inside, release = threading.Event(), threading.Event()

    def slow(conn: Any) -> None:
        inside.set()
        release.wait(5)

    holder = threading.Thread(target=lambda: journal._write("slow", slow))
    holder.start()
    inside.wait(5)
    return holder, release


def _interrupt_at(line: int, waiter: bool, tmp_path: Path) -> tuple[bool, bool]:
    """(interrupted, a later write still goes through)
    for a KeyboardInterrupt at ``line`` of _submit."""
    journal = samekey.Journal(tmp_path / f"j-{line}-{waiter}.sqlite3", durability="process")
    code = _group_commit.GroupCommit.submit.__code__
    fired: list[int] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == line and not fired:
                fired.append(line)
                raise KeyboardInterrupt  # what the eval loop does with a SIGINT landing here
            return local

        return local

    holder = None
    if waiter:  # another thread holds the writer role, so this caller queues behind it
        holder, release = _hold_the_writer_role(journal)
        threading.Timer(0.05, release.set).start()
    sys.settrace(tracer)
    try:
        journal.forget("main")
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    if holder is not None:
        holder.join(5)
    later: list[bool] = []
    thread = threading.Thread(
        target=lambda: later.append(journal.forget("later") is False), daemon=True
    )
    thread.start()
    thread.join(5)
    if later:
        journal.close()
    return bool(fired), bool(later)


def test_an_interruption_anywhere_in_a_write_never_wedges_the_journal(tmp_path: Path) -> None:
    # Ctrl-C, SystemExit from a SIGTERM handler, a task time limit: whichever line it lands on,
    # the writer role passes on and the caller's jobs leave the queue
    lines, first = inspect.getsourcelines(_group_commit.GroupCommit.submit)
    # every line up to the clean-up (an interruption inside the clean-up itself is the one window
    # Python leaves open: no code can defer a signal's exception there)
    cleanup = first + next(
        (i for i, text in enumerate(lines) if text.strip() == "finally:"), len(lines)
    )
    wedged = []
    for line in range(first + 1, cleanup):
        for waiter in (False, True):
            fired, later = _interrupt_at(line, waiter, tmp_path)
            if fired and not later:
                wedged.append((line, "waiter" if waiter else "leader"))
    assert wedged == []


def test_a_leader_interrupted_before_running_its_batch_wakes_the_callers_it_took(
    tmp_path: Path,
) -> None:
    # A promoted waiter takes the whole queue (other callers' jobs too), then a Ctrl-C lands as
    # it enters _run_batch: those callers must be told, not left asleep forever.
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability="process")
    holder, release = _hold_the_writer_role(journal)
    outcome: list[str] = []

    def other() -> None:
        try:
            journal._write("other", lambda conn: None)
            outcome.append("ran")
        except samekey.JournalError as exc:
            outcome.append(str(exc))

    def start_other_then_release() -> None:
        while (
            len(journal._commits.queue) < 1
        ):  # the main thread queued first: it will lead the next batch
            time.sleep(0.001)
        threading.Thread(target=other, daemon=True, name="other").start()
        while len(journal._commits.queue) < 2:
            time.sleep(0.001)
        release.set()

    threading.Thread(target=start_other_then_release, daemon=True).start()
    run_batch = _journal.Journal._run_batch.__code__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is run_batch:
            raise KeyboardInterrupt  # a SIGINT landing as the promoted leader enters _run_batch
        return None

    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            journal._write("main", lambda conn: None)
    finally:
        sys.settrace(None)
    holder.join(5)
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (
        outcome and "interrupted" in outcome[0]
    )  # woken, and told its write may not have happened
    assert journal._commits.writing is False and journal._commits.queue == []
    journal.forget("later")  # and the journal still writes
    journal.close()


def test_an_interruption_after_commit_keeps_the_results_that_are_on_disk(tmp_path: Path) -> None:
    # A Ctrl-C lands after the batch's COMMIT, before its fsync: a completion in that batch is
    # written (no fsync is owed for it) and must not be reported as failed (the caller would say
    # "answer not recorded"); a claim there still waits for its fsync, so it is reported failed.
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability="fsync")
    journal.claim(intent("op-0"), "owner", 60.0, 1000.0)
    claim = journal._claim_job(intent("op-1"), "owner", 60.0, 1001.0)
    complete = journal._complete_job("op-0", "owner", 1, 201, [], b"{}", 1001.0)
    sync_wal = _wal.WalSync.sync.__code__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is sync_wal:
            raise KeyboardInterrupt
        return None

    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            journal._run_batch([claim, complete])
    finally:
        sys.settrace(None)
    assert complete.error is None and complete.settled
    assert isinstance(claim.error, samekey.JournalError) and "interrupted" in str(claim.error)
    record = journal.get("op-0")
    assert record is not None and record.state == "completed"
    journal.close()


def test_ctrl_c_inside_a_journal_write_leaves_the_journal_usable(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a pending operation: its next claim reads it back inside BEGIN IMMEDIATE
    down = httpx.MockTransport(lambda r: httpx.Response(503))
    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(journal=journal_path, transport=down, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post("https://pay.test/charges", json={}, operation="op")
    real_record = _journal.record_from_row
    interruptions = [KeyboardInterrupt()]

    def interrupted(row: Any, location: str) -> Any:
        if interruptions:
            raise interruptions.pop()  # Ctrl-C lands while the claim holds the write lock
        return real_record(row, location)

    monkeypatch.setattr(_journal, "record_from_row", interrupted)
    with samekey.Client(journal=journal_path, transport=down, policy=policy) as client:
        raised = in_thread(lambda: client.post("https://pay.test/charges", json={}, operation="op"))
        assert isinstance(raised, KeyboardInterrupt), (
            "post() returns: its clean-up did not wait forever"
        )
        assert client.journal._conn is not None and not client.journal._conn.in_transaction
        other = samekey.Journal(journal_path, lock_timeout=1)  # another process's view: not locked
        assert other.claim(intent("other"), "other", 60.0, time.time()).status == "created"
        other.close()
        record = client.journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None
        assert isinstance(in_thread(lambda: client.post("https://pay.test/charges", json={},
            operation="op")),
                          samekey.RetriesExhausted)  # fmt: skip

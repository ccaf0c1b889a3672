"""A journal across fork() (_sqlite_fork.py): the fork waits for calls in progress, and the
child opens its own connection."""

from __future__ import annotations

import faulthandler
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import samekey
from journal_helpers import SRC, InsideSQLite, fork_child, intent
from samekey import _sqlite_fork


def test_a_forked_child_gets_its_own_connection_and_both_keep_writing(tmp_path: Path) -> None:
    # a web server preloading the app (gunicorn --preload) forks workers that share the client
    path = tmp_path / "journal.sqlite3"
    journal = samekey.Journal(path, durability="process")
    journal.claim(intent("parent-1"), "parent", 60.0, 1000.0)
    parent_conn = journal._conn
    children = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                for i in range(50):
                    assert (
                        journal.claim(intent(f"child-{n}-{i}"), f"child-{n}", 60.0, 1001.0).status
                        == "created"
                    )
                assert journal._conn is not parent_conn and journal.get("parent-1") is not None
                journal.close()
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for i in range(50):  # the parent writes at the same time, through its own connection
        journal.claim(intent(f"parent-more-{i}"), "parent", 60.0, 1002.0)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert journal._conn is parent_conn
    assert len(journal.records()) == 1 + 50 + 3 * 50
    journal.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_fork_while_another_thread_is_inside_sqlite_waits_and_the_child_can_write(
    tmp_path: Path,
) -> None:
    # a prefork server (or a multiprocessing pool) started while a background thread makes payments
    path = tmp_path / "journal.sqlite3"
    journal = samekey.Journal(path)
    journal.claim(intent("parent-1"), "parent", 60.0, 1000.0)
    writer = InsideSQLite(journal)
    threading.Timer(
        0.2, writer.go.set
    ).start()  # the write ends a moment later, while the fork waits

    def child() -> int:
        assert journal.claim(intent("child-1"), "child", 60.0, 1001.0).status == "created"
        assert journal.get("parent-1") is not None
        journal.close()
        return 0

    assert fork_child(child) == 0, "the child's first journal call hung"
    writer.finish()
    journal.claim(intent("parent-2"), "parent", 60.0, 1002.0)
    assert [r.operation for r in journal.records()] == ["parent-1", "child-1", "parent-2"]
    journal.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_keeps_its_writes_when_the_parent_closes_first(tmp_path: Path) -> None:
    # the child's own connection must hold real locks: else the parent's close (the last one it
    # sees) checkpoints and deletes the WAL under the child, and the child's later writes are lost
    path = tmp_path / "journal.sqlite3"
    journal = samekey.Journal(path)
    journal.claim(intent("parent"), "parent", 60.0, 1000.0)
    opened, closed = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            faulthandler.dump_traceback_later(10, exit=True)
            journal.claim(intent("child-1"), "child", 60.0, 1001.0)
            os.write(opened[1], b"x")
            os.read(closed[0], 1)  # the parent has closed its journal
            journal.claim(intent("child-2"), "child", 60.0, 1002.0)
            journal.close()
            code = 0
        finally:
            os._exit(code)
    os.read(opened[0], 1)
    journal.close()
    os.write(closed[1], b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for fd in (*opened, *closed):
        os.close(fd)
    with samekey.Journal(path) as reopened:
        assert [r.operation for r in reopened.records()] == ["parent", "child-1", "child-2"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_fork_that_cannot_wait_for_the_write_leaves_the_child_a_clear_error(
    tmp_path: Path,
) -> None:
    # run as a script: the child must also get through a normal interpreter exit without hanging
    script = f"""
import os, signal, sqlite3, sys, threading
sys.path.insert(0, {str(SRC)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
import samekey
from journal_helpers import InsideSQLite, intent
journal = samekey.Journal({str(tmp_path / "journal.sqlite3")!r}, lock_timeout=0.1)
journal._fork_wait = 0.3  # the write outlasts it: stuck, or held by the thread that forks
writer = InsideSQLite(journal)
pid = os.fork()
if pid == 0:
    signal.alarm(15)  # a hang ends the child
    try:
        journal.claim(intent("child"), "child", 60.0, 1000.0)
    except samekey.JournalError as exc:
        print("child:", exc, flush=True)
    journal.close()
    sys.exit(0)  # the interpreter's exit must not close the inherited connection either
writer.finish()
_, status = os.waitpid(pid, 0)
journal.claim(intent("parent"), "parent", 60.0, 1000.0)
print("parent:", [r.operation for r in journal.records()], "child exit", \
os.waitstatus_to_exitcode(status))
journal.close()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    assert lines[0].startswith("child: journal ") and "forked while another thread" in lines[0]
    assert "Fork before the journal is in use" in lines[0]
    assert lines[1] == "parent: ['parent'] child exit 0"
    check = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_the_fork_hooks_release_the_locks_they_took_even_if_a_journal_swapped_its_own(
    tmp_path: Path,
) -> None:
    # In a forked child, another thread's first journal call (_forked) gives the journal a new
    # lock while this thread forks again: the hooks must let go of the lock they took, and of
    # the registry lock, or every later journal call and Journal() in the process hangs.

    journal = samekey.Journal(tmp_path / "j.sqlite3")
    taken = journal._lock
    _sqlite_fork._before_fork()
    journal._lock = threading.Lock()  # what _forked() does
    _sqlite_fork._after_fork(child=False)
    assert (
        not taken.locked()
        and not journal._lock.locked()
        and not _sqlite_fork._JOURNALS_LOCK.locked()
    )
    journal.get("x")  # answers
    samekey.Journal(tmp_path / "other.sqlite3").close()  # the registry is free
    journal.close()

"""Helpers shared by the tests of the SQLite journal's
modules (imported by subprocess scripts too)."""

from __future__ import annotations

import faulthandler
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import samekey
from samekey import _wal
from samekey._contract import Intent

SRC = Path(__file__).resolve().parents[1] / "src"


def intent(operation: str, body: bytes = b'{"amount": 1}') -> Intent:
    return Intent(
        operation,
        f"key-{operation}",
        "Idempotency-Key",
        "POST",
        "https://pay.test/c",
        "fp",
        (),
        body,
    )


def make_journal(path: Path, operations: int = 3) -> bytes:
    """A real journal holding pending records; its bytes once closed (WAL checkpointed)."""
    with samekey.Journal(path) as journal:
        for i in range(operations):
            journal.claim(intent(f"op-{i}"), "owner", 60.0, 1000.0 + i)
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path.read_bytes()


def assert_clear(error: samekey.JournalError, path: Path, *words: str) -> None:
    text = str(error)
    assert text.startswith(f"journal {path}: "), text
    for word in words:
        assert word in text, text
    assert "\n" not in text


class InsideSQLite:
    """A write whose thread stays inside SQLite (a
    statement running, its mutex held) until let go."""

    def __init__(self, journal: samekey.Journal) -> None:
        self.inside, self.go = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []

        def block() -> int:
            self.inside.set()
            self.go.wait(30)
            return 1

        def write(conn: sqlite3.Connection) -> None:
            conn.create_function("block", 0, block)
            conn.execute("SELECT block()").fetchone()

        def run() -> None:
            try:
                journal._write("blocking", write)
            except BaseException as exc:
                self.errors.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.inside.wait(10)

    def finish(self) -> None:
        self.go.set()
        self.thread.join(10)
        assert not self.thread.is_alive() and self.errors == []


def fork_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child, bounded: its exit code (1 if it was stuck for 10 s)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            faulthandler.dump_traceback_later(10, exit=True)  # a hang ends the child with code 1
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def in_thread(fn: Any, timeout: float = 10.0) -> BaseException | None:
    """Run ``fn`` in a thread, bounded: what it raised (None if it returned); fails if it hangs."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            raised.append(None)
        except BaseException as exc:  # KeyboardInterrupt included: that is what is tested
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call hung"
    return raised[0]


def count_wal_syncs(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[str]:
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(_wal.os, "fdatasync", fdatasync)
    return synced

"""Completions written after the caller has its answer (_deferred.py), through the SQLite journal.

Most tests raise FLUSH_DELAY, so that what they check is the store's own ordering (a read
or a write takes the queue along), not the flusher thread winning a race.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

import samekey
from samekey.testing import PaymentServer

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _answering(status: int = 201) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json={"id": "ch_1"}))


def _state_on_disk(path: Path, operation: str) -> str | None:
    """The record's state as another process reads it: no samekey, no queue of this one."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT state FROM operations WHERE operation = ?", (operation,))
        found = row.fetchone()
    finally:
        conn.close()
    return None if found is None else str(found[0])


@pytest.fixture
def slow_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("samekey._deferred.FLUSH_DELAY", 60.0)


def test_a_returned_call_is_completed_for_every_read_in_the_process(
    journal_path: Path, slow_flusher: None
) -> None:
    journal = samekey.Journal(journal_path)
    with samekey.Client(journal=journal, transport=_answering()) as client:
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
        assert _state_on_disk(journal_path, "op-1") == "pending"  # queued, not yet written
        assert journal.pending() == []
        other = samekey.Journal(journal_path)  # another store on the same file, same process
        record = other.get("op-1")
        other.close()
        assert record is not None and record.state == "completed"
        assert record.response_body == b'{"id":"ch_1"}'
    journal.close()


def test_a_second_call_replays_the_answer_still_queued(
    journal_path: Path, slow_flusher: None
) -> None:
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(201, json={"id": "ch_1"})

    journal = samekey.Journal(journal_path)
    with samekey.Client(journal=journal, transport=httpx.MockTransport(server)) as client:
        first = client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
        again = client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
    assert len(sent) == 1 and again.json() == first.json()
    assert samekey.operation_info(again).replayed  # type: ignore[union-attr]
    journal.close()


def test_the_flusher_writes_an_answer_no_other_write_took_along(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)
    with samekey.Client(journal=journal, transport=_answering()) as client:
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
        deadline = time.monotonic() + 5
        while _state_on_disk(journal_path, "op-1") != "completed":
            assert time.monotonic() < deadline, "the queued completion was never written"
            time.sleep(0.005)
    journal.close()


def test_close_writes_what_is_queued(journal_path: Path, slow_flusher: None) -> None:
    with samekey.Client(journal=journal_path, transport=_answering()) as client:
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
    assert _state_on_disk(journal_path, "op-1") == "completed"


_EXITS = textwrap.dedent(
    """
    import sys, httpx, samekey, samekey._deferred
    samekey._deferred.FLUSH_DELAY = 60.0
    transport = httpx.MockTransport(lambda request: httpx.Response(201))
    client = samekey.Client(journal=sys.argv[1], transport=transport)  # never closed
    client.post("https://pay.test/charges", json={}, operation="op-1")
    """
)


def test_the_interpreters_exit_writes_what_is_queued(journal_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _EXITS, str(journal_path)],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _state_on_disk(journal_path, "op-1") == "completed"


_KILLED = textwrap.dedent(
    """
    import os, signal, sys, samekey, samekey._deferred
    samekey._deferred.FLUSH_DELAY = 60.0
    with samekey.Client(journal=sys.argv[1], base_url=sys.argv[2]) as client:
        response = client.post("/charges", json={"amount": 5}, operation="order-5/charge")
        print(response.status_code, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # before the queued answer is written
    """
)


def test_a_kill_before_the_answer_is_written_leaves_it_pending_and_the_rerun_is_replayed(
    journal_path: Path, server: PaymentServer
) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED, str(journal_path), server.url],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL and killed.stdout == "201\n", killed.stderr
    assert _state_on_disk(journal_path, "order-5/charge") == "pending"
    with samekey.Client(journal=journal_path, base_url=server.url) as client:
        response = client.post("/charges", json={"amount": 5}, operation="order-5/charge")
    assert response.status_code == 201
    assert server.charge_count() == 1  # the same key again: the server replayed its answer
    assert len(set(server.keys_seen())) == 1
    assert server.requests()[-1]["outcome"] == "replay"


class _FullDisk(samekey.Journal):
    """A journal whose disk is full for completions while ``full`` holds."""

    full = True

    def _complete_job(self, *args: object) -> object:
        job = super()._complete_job(*args)  # type: ignore[arg-type]
        write = job.fn

        def fn(conn: sqlite3.Connection, *values: object) -> None:
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")
            write(conn, *values)

        job.fn = fn
        return job


def test_an_answer_that_could_not_be_written_stays_queued_and_is_written_next(
    journal_path: Path, slow_flusher: None, caplog: pytest.LogCaptureFixture
) -> None:
    journal = _FullDisk(journal_path)
    with samekey.Client(journal=journal, transport=_answering()) as client:
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
        # the next claim takes the queued answer along; the disk is full for it: the claim
        # goes on, the answer stays queued and the operation pending (safe: a re-run replays)
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-2")
        assert "could not record 1 answer(s) yet" in caplog.text
        assert "nothing was sent" not in caplog.text.lower()  # it was: the server answered
        assert _state_on_disk(journal_path, "op-1") == "pending"
        assert _state_on_disk(journal_path, "op-2") == "pending"
        journal.full = False  # room again: the next write (this read's) takes both along
        assert journal.get("op-1").state == "completed"  # type: ignore[union-attr]
        assert journal.get("op-2").state == "completed"  # type: ignore[union-attr]
    journal.close()


def test_a_forked_child_does_not_write_its_parents_queue(
    journal_path: Path, slow_flusher: None
) -> None:
    journal = samekey.Journal(journal_path, durability="process")
    with samekey.Client(journal=journal, transport=_answering()) as client:
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                # the child's first read: its own connection, and the parent's queue left alone
                state = journal.get("op-1").state  # type: ignore[union-attr]
                code = 0 if state == "pending" else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert journal.get("op-1").state == "completed"  # type: ignore[union-attr]
    journal.close()


def _pay_once(journal: str) -> None:
    import samekey._deferred

    samekey._deferred.FLUSH_DELAY = 60.0
    client = samekey.Client(journal=journal, transport=_answering())  # never closed
    client.post("https://pay.test/charges", json={}, operation="op-1")


def test_a_forked_multiprocessing_worker_writes_its_queue_before_it_exits(
    journal_path: Path,
) -> None:
    # such a worker ends with os._exit, which skips atexit
    import multiprocessing

    worker = multiprocessing.get_context("fork").Process(target=_pay_once, args=(journal_path,))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert _state_on_disk(journal_path, "op-1") == "completed"


def test_a_journal_dropped_unclosed_still_writes_its_answers(
    journal_path: Path, slow_flusher: None
) -> None:
    import gc

    client = samekey.Client(journal=journal_path, transport=_answering())
    client.post("https://pay.test/charges", json={}, operation="op-1")
    del client
    gc.collect()  # the client and its journal are unreachable: the queue keeps the journal
    from samekey._deferred import _flush_all

    _flush_all()  # what the interpreter's exit runs
    assert _state_on_disk(journal_path, "op-1") == "completed"


def test_flush_writes_the_queue_at_once(journal_path: Path, slow_flusher: None) -> None:
    journal = samekey.Journal(journal_path)
    with samekey.Client(journal=journal, transport=_answering()) as client:
        client.post("https://pay.test/charges", json={"amount": 1}, operation="op-1")
        assert _state_on_disk(journal_path, "op-1") == "pending"
        journal.flush()  # e.g. before acknowledging the queue message that asked for it
        assert _state_on_disk(journal_path, "op-1") == "completed"
    journal.close()
    with samekey.Journal(journal_path, read_only=True) as reader:
        reader.flush()  # nothing queued: nothing to refuse

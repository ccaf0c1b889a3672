"""One request's lock waits share its lock_timeout
(samekey._lock_budget, through the SQLite journal)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import samekey

_HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for line in sys.stdin:  # "lock" takes the write lock, "free" lets it go
    conn.execute("BEGIN IMMEDIATE" if line.strip() == "lock" else "ROLLBACK")
    print("done", flush=True)
"""


class _Holder:
    """Another process that takes and frees the journal's write lock when told."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def tell(self, what: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[_Holder]:
    """A journal at ``holder.path`` and another process holding its write lock when told."""
    path = tmp_path / "j.sqlite3"
    samekey.Journal(path).close()
    held = _Holder(path)
    yield held
    held.close()


def _refused_after(client: samekey.Client, match: str) -> float:
    """The seconds one POST took to fail with a JournalError that matches ``match``."""
    started = time.monotonic()
    with pytest.raises(samekey.JournalError, match=match):
        client.post("https://pay.test/charges", operation="order-1/charge", json={"amount": 1})
    return time.monotonic() - started


def test_one_call_waits_for_the_lock_at_most_lock_timeout_in_all(holder: _Holder) -> None:
    # another process holds the write lock: the lazy purge, the claim and the release after it
    # each waited their own lock_timeout (3 s for lock_timeout=1) under an error saying "1 s"
    holder.tell("lock")
    journal = samekey.Journal(holder.path, lock_timeout=1)
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    with samekey.Client(journal=journal, transport=transport) as client:
        waited = _refused_after(client, r"locked by another process for more than 1 s")
    journal.close()
    assert 0.9 < waited < 1.6, waited


def test_the_claim_and_the_record_of_an_attempt_share_the_requests_lock_timeout(
    holder: _Holder,
) -> None:
    # the claim waits 0.6 s for the lock; the answer is a 503, and the lock is taken again while
    # the request is out: recording the attempt may wait only what is left (0.4 s), not a
    # lock_timeout of its own
    def handler(request: httpx.Request) -> httpx.Response:
        holder.tell("lock")
        return httpx.Response(503)

    holder.tell("lock")
    journal = samekey.Journal(holder.path, lock_timeout=1)
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01)
    transport = httpx.MockTransport(handler)
    with samekey.Client(journal=journal, transport=transport, policy=policy) as client:
        threading.Timer(0.6, holder.tell, ("free",)).start()
        waited = _refused_after(client, "locked by another process")
    journal.close()
    assert 0.9 < waited < 1.5, waited  # a lock_timeout per write was 1.6 s or more


def test_a_completion_never_waits_for_the_lock_on_the_callers_path(holder: _Holder) -> None:
    # another process takes the lock while the request is out: the caller has its answer at
    # once, and the completion is written once the lock is free
    def handler(request: httpx.Request) -> httpx.Response:
        holder.tell("lock")
        return httpx.Response(201, json={"id": "ch_1"})

    journal = samekey.Journal(holder.path, lock_timeout=5)
    with samekey.Client(journal=journal, transport=httpx.MockTransport(handler)) as client:
        started = time.monotonic()
        response = client.post(
            "https://pay.test/charges", operation="order-1/charge", json={"amount": 1}
        )
        answered = time.monotonic() - started
        assert response.json() == {"id": "ch_1"}
        holder.tell("free")
        record = journal.get("order-1/charge")  # a read writes the queued completion first
    journal.close()
    assert answered < 0.5, answered
    assert record is not None and record.state == "completed" and record.response_status == 201

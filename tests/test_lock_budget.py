"""One request's lock waits share its lock_timeout
(samekey._lock_budget, through the SQLite journal)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
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


def test_the_claim_and_the_completion_of_one_request_share_its_lock_timeout(tmp_path: Path) -> None:
    # the claim waits 0.6 s for the lock; while the request is out the lock is taken again:
    # the completion may wait only what is left (0.4 s), not a lock_timeout of its own
    path = tmp_path / "j.sqlite3"
    samekey.Journal(path).close()
    holder = _Holder(path)

    def handler(request: httpx.Request) -> httpx.Response:
        holder.tell("lock")
        return httpx.Response(201)

    try:
        holder.tell("lock")
        journal = samekey.Journal(path, lock_timeout=1)
        with samekey.Client(journal=journal, transport=httpx.MockTransport(handler)) as client:
            threading.Timer(0.6, holder.tell, ("free",)).start()
            started = time.monotonic()
            with pytest.raises(samekey.AnswerNotRecorded, match="locked by another process"):
                client.post(
                    "https://pay.test/charges", operation="order-1/charge", json={"amount": 1}
                )
            waited = time.monotonic() - started
        journal.close()
    finally:
        holder.close()
    assert 0.9 < waited < 1.5, waited  # a lock_timeout per write was 1.6 s or more

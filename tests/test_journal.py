"""The SQLite store itself (_journal.py): its arguments, its writes, its path."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

import samekey
from journal_helpers import assert_clear, count_wal_syncs, intent, make_journal


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True])
def test_a_lock_timeout_that_bounds_nothing_is_refused(tmp_path: Path, value: float) -> None:
    # lock_timeout=nan was accepted: a journal another process held locked hung the call forever
    with pytest.raises(
        ValueError, match="lock_timeout must be a positive, finite number of seconds"
    ):
        samekey.Journal(tmp_path / "j.sqlite3", lock_timeout=value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    journal = samekey.Journal(path)
    assert journal._conn is not None
    # SQLite's own "database or disk is full" (SQLITE_FULL): cap the file at its current size
    pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
    journal._conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(samekey.JournalError) as caught:
        journal.claim(intent("big", body=os.urandom(64 * 1024)), "owner", 60.0, 2000.0)
    assert_clear(caught.value, path, "disk is full", "nothing was sent")
    assert journal.get("big") is None and len(journal.pending()) == 3
    journal.close()
    assert path.read_bytes() == original


@pytest.mark.skipif(
    not Path("/proc/self/fd").exists() or not hasattr(os, "fork"), reason="Linux: /proc, fork"
)
def test_a_relative_journal_path_survives_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # journal="payments.sqlite3", then the process changes directory (a daemon, a task runner)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    journal = samekey.Journal("payments.sqlite3")
    journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
    journal.close()
    journal = samekey.Journal("payments.sqlite3")
    monkeypatch.chdir(elsewhere)
    synced = count_wal_syncs(monkeypatch, home / "payments.sqlite3")
    journal.claim(intent("op-2"), "owner", 60.0, 1001.0)
    assert synced == [f"{home / 'payments.sqlite3'}-wal"], (
        "the claim was made durable in its own folder"
    )
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reopens the journal: the same one
        code = 1
        try:
            code = 0 if journal.get("op-1") is not None else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child opened another journal"
    assert journal.location == str(home / "payments.sqlite3")
    journal.close()
    assert list(elsewhere.iterdir()) == []
    monkeypatch.setenv("SAMEKEY_JOURNAL", "env.sqlite3")
    assert samekey.default_journal_path() == elsewhere / "env.sqlite3"


def test_a_damaged_record_is_reported_as_damage_not_as_another_operation(tmp_path: Path) -> None:
    # a byte of the record's URL flipped on disk: a re-run of the same operation was refused
    # as OperationMismatch ("it was POST https://pay.tesu/..."), pointing at the caller's code
    path = tmp_path / "journal.sqlite3"
    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(
        journal=path, policy=policy, transport=httpx.MockTransport(lambda r: httpx.Response(503))
    ) as c:
        with pytest.raises(samekey.RetriesExhausted):
            c.post("https://pay.test/charges", operation="order-1/charge", json={"amount": 1})
    data = path.read_bytes()
    assert data.count(b"https://pay.test/charges") == 1
    path.write_bytes(data.replace(b"https://pay.test/charges", b"https://pay.tesu/charges"))
    with samekey.Client(
        journal=path, transport=httpx.MockTransport(lambda r: httpx.Response(201))
    ) as client:
        with pytest.raises(samekey.JournalError) as caught:
            client.post("https://pay.test/charges", operation="order-1/charge", json={"amount": 1})
    assert not isinstance(caught.value, samekey.OperationMismatch)
    assert "the record of operation 'order-1/charge' is damaged" in str(caught.value), caught.value
    assert "Nothing was sent" in str(caught.value)

"""A journal that cannot be used is a clear JournalError, and the file is never changed.

Each test keeps a byte-for-byte copy of the file before samekey touches it and
compares after: a journal may hold pending keys, so samekey must never rewrite it.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import samekey
from samekey import _sqlite_fork, _sqlite_open, _wal
from samekey._contract import Intent

SRC = Path(__file__).resolve().parents[1] / "src"


def intent(operation: str, body: bytes = b'{"amount": 1}') -> Intent:
    return Intent(operation, f"key-{operation}", "Idempotency-Key", "POST", "https://pay.test/c", "fp", (), body)


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


def test_random_bytes_are_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    original = os.urandom(8192)
    path.write_bytes(original)
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(caught.value, path, "not a readable SQLite database", "left untouched", "Move it aside")
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sqlite3"]  # no -wal/-shm left behind


def test_another_applications_sqlite_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    original = path.read_bytes()
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(caught.value, path, "not a samekey journal", "left untouched")
    assert path.read_bytes() == original


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(slice(100, 500), id="schema-page"),
        pytest.param(slice(4096, 8192), id="data-page"),
        pytest.param(slice(16, 100), id="header"),
    ],
)
def test_a_corrupt_journal_is_reported_and_kept(tmp_path: Path, where: slice) -> None:
    path = tmp_path / "journal.sqlite3"
    data = bytearray(make_journal(path, operations=40))
    data[where] = bytes(len(data[where]))  # zero a region: torn write, bad sector
    data[where.start] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(samekey.JournalError) as caught:
        with samekey.Journal(path) as journal:  # some damage only shows when reading
            journal.records()
    assert_clear(caught.value, path, "left untouched", "may hold pending keys")
    assert path.read_bytes() == bytes(data)


def test_a_journal_from_a_newer_samekey_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    make_journal(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={_sqlite_open.SCHEMA_VERSION + 1}")
    conn.close()
    original = path.read_bytes()
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(
        caught.value, path, "written by a newer samekey", f"schema {_sqlite_open.SCHEMA_VERSION + 1}", "Upgrade"
    )
    assert path.read_bytes() == original


@pytest.mark.parametrize("whose", ["newer-samekey", "another-application"])
def test_a_refused_file_keeps_its_write_ahead_log(tmp_path: Path, whose: str) -> None:
    # The process that wrote it was killed (or still runs): recent writes sit in the -wal file.
    # Closing the last connection would fold them into the main file and delete the -wal.
    path = tmp_path / "journal.sqlite3"
    if whose == "newer-samekey":
        make_journal(path)
        writes = f"PRAGMA user_version={_sqlite_open.SCHEMA_VERSION + 1}"
    else:
        writes = "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada')"
    killed = f"""
        import os, sqlite3
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript({writes!r})
        os._exit(0)  # killed: no checkpoint, the writes stay in the -wal
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(killed)], check=True, timeout=60)
    wal = Path(f"{path}-wal")
    originals = {file: file.read_bytes() for file in (path, wal)}
    assert len(originals[wal]) > 0
    for read_only in (False, True):
        with pytest.raises(samekey.JournalError, match="left untouched"):
            samekey.Journal(path, read_only=read_only)
        assert {file: file.read_bytes() if file.exists() else None for file in (path, wal)} == originals, read_only


def test_a_truncated_journal_is_refused_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    cut = make_journal(path, operations=200)[: 4096 * 3]  # a copy cut short, a restore that ran out of space
    path.write_bytes(cut)
    for read_only in (False, True):
        with pytest.raises(samekey.JournalError) as caught:
            samekey.Journal(path, read_only=read_only)
        assert_clear(caught.value, path, "not a readable SQLite database", "left untouched", "may hold pending keys")
        assert path.read_bytes() == cut
        assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sqlite3"], read_only


def test_forward_migrations_upgrade_an_older_journal_and_keep_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.sqlite3"
    make_journal(path)
    monkeypatch.setattr(_sqlite_open, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(
        _sqlite_open,
        "MIGRATIONS",
        {
            1: "ALTER TABLE operations ADD COLUMN note TEXT; UPDATE operations SET note = 'from v1'",
            2: "CREATE INDEX operations_key ON operations (key)",
        },
    )
    with samekey.Journal(path) as journal:
        assert [r.operation for r in journal.pending()] == ["op-0", "op-1", "op-2"]
        assert journal.get("op-1").key == "key-op-1"  # type: ignore[union-attr]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT DISTINCT note FROM operations").fetchall() == [("from v1",)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'operations_key'").fetchone()
    conn.close()


def test_a_failing_migration_leaves_the_journal_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    monkeypatch.setattr(_sqlite_open, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(
        _sqlite_open, "MIGRATIONS", {1: "ALTER TABLE operations ADD COLUMN note TEXT; SELECT nope FROM missing_table"}
    )
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(caught.value, path, "upgrading it from schema 1 to 2 failed", "no such table", "rolled back")
    assert path.read_bytes() == original
    monkeypatch.undo()
    with samekey.Journal(path) as journal:  # still a good v1 journal
        assert len(journal.pending()) == 3


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


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file size limit")
def test_no_room_to_open_the_journal_names_the_disk_error(tmp_path: Path) -> None:
    # A real process that may not grow a file past the journal's size (RLIMIT_FSIZE, as a full
    # disk): opening needs room for the shared-memory index, and SQLite rolls its read back.
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    opener = f"""
        import resource, signal, samekey
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(original)}, {len(original)}))
        try:
            samekey.Journal({str(path)!r})
        except samekey.JournalError as error:
            print(error)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(opener)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert "disk I/O error" in result.stdout and "Check the file, its folder and the disk" in result.stdout, result
    assert "no transaction is active" not in result.stdout
    assert path.read_bytes() == original
    with samekey.Journal(path) as journal:  # the limit gone: every pending key is there
        assert [r.operation for r in journal.pending()] == ["op-0", "op-1", "op-2"]


def test_a_locked_journal_times_out_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        journal = samekey.Journal(path, lock_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(samekey.JournalError) as caught:
            journal.claim(intent("new"), "owner", 60.0, 2000.0)
        assert time.monotonic() - started < 5
        assert_clear(caught.value, path, "locked by another process for more than 0.2 s", "raise lock_timeout")
        journal.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert path.read_bytes() == original


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True])
def test_a_lock_timeout_that_bounds_nothing_is_refused(tmp_path: Path, value: float) -> None:
    # lock_timeout=nan was accepted: a journal another process held locked hung the call forever
    with pytest.raises(ValueError, match="lock_timeout must be a positive, finite number of seconds"):
        samekey.Journal(tmp_path / "j.sqlite3", lock_timeout=value)
    assert list(tmp_path.iterdir()) == []


def test_a_locked_fresh_journal_cannot_be_set_up_and_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)  # e.g. another process creating it right now
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(samekey.JournalError) as caught:
            samekey.Journal(path, lock_timeout=0.2)
        assert_clear(caught.value, path, "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert path.read_bytes() == b""


def _run_as_unprivileged(prefix: list[str], code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [*prefix, sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_a_journal_in_a_read_only_directory(tmp_path: Path, unprivileged: list[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "journal.sqlite3"
    original = make_journal(path)
    missing = folder / "new.sqlite3"
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        result = _run_as_unprivileged(
            unprivileged,
            f"""
            import samekey
            from samekey._contract import Intent
            for path in ({str(missing)!r}, {str(path)!r}):
                try:
                    journal = samekey.Journal(path)
                    journal.claim(Intent("x", "k", "Idempotency-Key", "POST", "u", "f", (), b""), "o", 60.0, 1.0)
                except samekey.JournalError as exc:
                    print(exc)
                else:
                    print("NO ERROR for", path)
            """,
        )
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"journal {missing}: cannot create the file (Permission denied)")
    assert lines[1].startswith(f"journal {path}: ") and "not writable" in lines[1], lines[1]
    assert "Make the file and its folder writable" in lines[1]
    assert path.read_bytes() == original
    assert not missing.exists()


def _count_wal_syncs(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[str]:
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(_wal.os, "fdatasync", fdatasync)
    return synced


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads fd paths from /proc")
def test_fsync_mode_makes_each_claim_durable_and_no_completion_pays_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.sqlite3"
    with samekey.Journal(path, durability="fsync") as journal:
        synced = _count_wal_syncs(monkeypatch, path)
        journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
        assert synced == [f"{path}-wal"]  # the claim is on the disk before claim() returns
        journal.complete("op-1", "owner", 1, 201, [], b"{}", 1001.0)
        journal.purge_completed(3600.0, 1002.0)
        assert synced == [f"{path}-wal"]  # a completion or a purge adds no sync
        journal.claim(intent("op-2"), "owner", 60.0, 1003.0)
        assert len(synced) == 2
        assert journal.claim(intent("op-1"), "other", 60.0, 1004.0).status == "completed"
        assert journal.claim(intent("op-2"), "other", 60.0, 1004.0).status == "busy"
        assert len(synced) == 2  # a replay or a busy claim wrote nothing, so nothing to sync
    with samekey.Journal(path, durability="process") as journal:
        synced = _count_wal_syncs(monkeypatch, path)
        journal.claim(intent("op-3"), "owner", 60.0, 1004.0)
        assert synced == []  # process mode: the OS holds the write, no sync
    with samekey.Journal(path) as journal:
        assert journal.get("op-2") is not None and journal.get("op-3") is not None


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads fd paths from /proc")
def test_a_journal_reached_through_a_symlink_still_syncs_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite keeps the -wal beside the real file: looking for it beside the link found nothing
    # and skipped the sync, so "fsync" claims were not durable
    (tmp_path / "data").mkdir()
    link = tmp_path / "journal.sqlite3"
    link.symlink_to(tmp_path / "data" / "journal.sqlite3")
    with samekey.Journal(link, durability="fsync") as journal:
        synced = _count_wal_syncs(monkeypatch, link)
        journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
    assert synced == [f"{tmp_path / 'data' / 'journal.sqlite3'}-wal"]
    with samekey.Journal(link, read_only=True) as journal:  # and a reader leaves nothing behind
        assert journal.get("op-1") is not None
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["journal.sqlite3"]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads fd paths from /proc")
def test_a_symlink_switched_after_opening_does_not_redirect_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a deploy switches `current` from blue to green while blue's journal is open: blue's claims
    # must still sync blue's WAL (the file SQLite opened), not green's
    for color in ("blue", "green"):
        (tmp_path / color).mkdir()
        samekey.Journal(tmp_path / color / "journal.sqlite3").close()
    current = tmp_path / "current.sqlite3"
    current.symlink_to(tmp_path / "blue" / "journal.sqlite3")
    green = samekey.Journal(tmp_path / "green" / "journal.sqlite3", durability="process")
    green.claim(intent("op-g"), "owner", 60.0, 1000.0)  # green has a WAL of its own
    with samekey.Journal(current, durability="fsync") as blue:
        current.unlink()
        current.symlink_to(tmp_path / "green" / "journal.sqlite3")
        synced = _count_wal_syncs(monkeypatch, current)
        blue.claim(intent("op-b"), "owner", 60.0, 1000.0)
    green.close()
    assert synced == [f"{tmp_path / 'blue' / 'journal.sqlite3'}-wal"]


@pytest.mark.skipif(not Path("/proc/self/fd").exists() or not hasattr(os, "fork"), reason="Linux: /proc, fork")
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
    synced = _count_wal_syncs(monkeypatch, home / "payments.sqlite3")
    journal.claim(intent("op-2"), "owner", 60.0, 1001.0)
    assert synced == [f"{home / 'payments.sqlite3'}-wal"], "the claim was made durable in its own folder"
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


def test_a_failing_sync_is_a_clear_error_and_nothing_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with samekey.Journal(tmp_path / "journal.sqlite3") as journal:
        monkeypatch.setattr(_wal.os, "fdatasync", broken)
        with pytest.raises(samekey.JournalError) as caught:
            journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
        assert "durable" in str(caught.value) and "Nothing was sent" in str(caught.value)


def test_a_read_only_journal_reads_and_refuses_to_write_or_create(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    missing = tmp_path / "new.sqlite3"
    original = make_journal(path, operations=2)
    with samekey.Journal(path, read_only=True) as journal:
        assert [r.operation for r in journal.pending()] == ["op-0", "op-1"]
        with pytest.raises(samekey.JournalError) as caught:
            journal.claim(intent("op-9"), "owner", 60.0, 2000.0)
        assert_clear(caught.value, path, "opened read_only=True", "without read_only")
        assert "read_only=True" in repr(journal)
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(missing, read_only=True)
    assert_clear(caught.value, missing, "there is no journal file here")
    assert path.read_bytes() == original and not missing.exists()


def test_a_read_only_journal_leaves_no_files_behind(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path, operations=2)
    with samekey.Journal(path, read_only=True) as journal:
        assert len(journal.records()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sqlite3"], "no empty -wal/-shm left"
    assert path.read_bytes() == original
    # a writer that opened meanwhile still uses them: they stay, and its writes are kept
    reader = samekey.Journal(path, read_only=True)
    writer = samekey.Journal(path)
    reader.close()
    assert Path(f"{path}-wal").exists()
    writer.claim(intent("op-9"), "owner", 60.0, 2000.0)
    writer.close()
    with samekey.Journal(path, read_only=True) as journal:
        assert len(journal.records()) == 3
    # refused (written by a newer samekey): nothing left behind either
    newer = tmp_path / "newer.sqlite3"
    make_journal(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = newer.read_bytes()
    with pytest.raises(samekey.JournalError):
        samekey.Journal(newer, read_only=True)
    assert newer.read_bytes() == before and not Path(f"{newer}-wal").exists() and not Path(f"{newer}-shm").exists()


class _FakeFcntl:
    """fcntl as on macOS: F_FULLFSYNC flushes the drive's cache; ``works`` False: a filesystem without it."""

    F_FULLFSYNC = 51

    def __init__(self, works: bool) -> None:
        self.works = works
        self.calls: list[int] = []

    def fcntl(self, fd: int, command: int) -> int:
        assert command == self.F_FULLFSYNC
        self.calls.append(fd)
        if not self.works:
            raise OSError(45, "Operation not supported")
        return 0


@pytest.mark.parametrize("fullfsync_works", [True, False])
def test_fsync_mode_on_a_platform_without_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fullfsync_works: bool
) -> None:
    # macOS has no os.fdatasync, and its fsync leaves data in the drive's cache: F_FULLFSYNC it is
    fake = _FakeFcntl(fullfsync_works)
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.delattr(_wal.os, "fdatasync")
    monkeypatch.setattr(_wal, "fcntl", fake)
    monkeypatch.setattr(_wal.os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "journal.sqlite3"
    with samekey.Journal(path) as journal:
        journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
        journal.claim(intent("op-2"), "owner", 60.0, 1001.0)
        wal = journal._wal.fd
    assert fake.calls == [wal, wal], "each claim made durable with F_FULLFSYNC"
    # the folder once (the new WAL's entry), and the WAL itself when F_FULLFSYNC is refused
    assert len(fsynced) == (1 if fullfsync_works else 3)
    with samekey.Journal(path) as journal:
        assert journal.get("op-2") is not None


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
                    assert journal.claim(intent(f"child-{n}-{i}"), f"child-{n}", 60.0, 1001.0).status == "created"
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


class _InsideSQLite:
    """A write whose thread stays inside SQLite (a statement running, its mutex held) until let go."""

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


def _fork_child(body: Callable[[], int]) -> int:
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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_fork_while_another_thread_is_inside_sqlite_waits_and_the_child_can_write(tmp_path: Path) -> None:
    # a prefork server (or a multiprocessing pool) started while a background thread makes payments
    path = tmp_path / "journal.sqlite3"
    journal = samekey.Journal(path)
    journal.claim(intent("parent-1"), "parent", 60.0, 1000.0)
    writer = _InsideSQLite(journal)
    threading.Timer(0.2, writer.go.set).start()  # the write ends a moment later, while the fork waits

    def child() -> int:
        assert journal.claim(intent("child-1"), "child", 60.0, 1001.0).status == "created"
        assert journal.get("parent-1") is not None
        journal.close()
        return 0

    assert _fork_child(child) == 0, "the child's first journal call hung"
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
def test_a_fork_that_cannot_wait_for_the_write_leaves_the_child_a_clear_error(tmp_path: Path) -> None:
    # run as a script: the child must also get through a normal interpreter exit without hanging
    script = f"""
import os, signal, sqlite3, sys, threading
sys.path.insert(0, {str(SRC)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
import samekey
from test_journal_robustness import _InsideSQLite, intent
journal = samekey.Journal({str(tmp_path / "journal.sqlite3")!r}, lock_timeout=0.1)
journal._fork_wait = 0.3  # the write outlasts it: stuck, or held by the thread that forks
writer = _InsideSQLite(journal)
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
print("parent:", [r.operation for r in journal.records()], "child exit", os.waitstatus_to_exitcode(status))
journal.close()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    assert lines[0].startswith("child: journal ") and "forked while another thread" in lines[0]
    assert "Fork before the journal is in use" in lines[0]
    assert lines[1] == "parent: ['parent'] child exit 0"
    check = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_sqlite_syncs_around_checkpoints_in_both_modes(tmp_path: Path, durability: str) -> None:
    # synchronous=OFF would let a power cut during a checkpoint corrupt the whole file (every
    # pending key lost); NORMAL costs an fsync per checkpoint, not per commit
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability=durability)  # type: ignore[arg-type]
    assert journal._read("PRAGMA synchronous", (), "checking") == [(1,)]  # NORMAL
    journal.close()


def test_the_fork_hooks_release_the_locks_they_took_even_if_a_journal_swapped_its_own(tmp_path: Path) -> None:
    # In a forked child, another thread's first journal call (_forked) gives the journal a new
    # lock while this thread forks again: the hooks must let go of the lock they took, and of
    # the registry lock, or every later journal call and Journal() in the process hangs.

    journal = samekey.Journal(tmp_path / "j.sqlite3")
    taken = journal._lock
    _sqlite_fork._before_fork()
    journal._lock = threading.Lock()  # what _forked() does
    _sqlite_fork._after_fork(child=False)
    assert not taken.locked() and not journal._lock.locked() and not _sqlite_fork._JOURNALS_LOCK.locked()
    journal.get("x")  # answers
    samekey.Journal(tmp_path / "other.sqlite3").close()  # the registry is free
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

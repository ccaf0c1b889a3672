"""The write-ahead log (_wal.py).

"fsync" mode: each claim is durable before it returns, and nothing else pays a sync.
"process" mode: no request pays for SQLite's checkpoint; a short-lived thread copies the WAL
into the main file, and a fork, a close or a kill -9 in the middle of it loses nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import samekey
from journal_helpers import SRC, count_wal_syncs, fork_child, intent
from samekey import _wal
from samekey._contract import Claim, Complete


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads fd paths from /proc")
def test_fsync_mode_makes_each_claim_durable_and_no_completion_pays_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.sqlite3"
    with samekey.Journal(path, durability="fsync") as journal:
        synced = count_wal_syncs(monkeypatch, path)
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
        synced = count_wal_syncs(monkeypatch, path)
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
        synced = count_wal_syncs(monkeypatch, link)
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
        synced = count_wal_syncs(monkeypatch, current)
        blue.claim(intent("op-b"), "owner", 60.0, 1000.0)
    green.close()
    assert synced == [f"{tmp_path / 'blue' / 'journal.sqlite3'}-wal"]


def test_a_failing_sync_is_a_clear_error_and_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with samekey.Journal(tmp_path / "journal.sqlite3") as journal:
        monkeypatch.setattr(_wal.os, "fdatasync", broken)
        with pytest.raises(samekey.JournalError) as caught:
            journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
        assert "durable" in str(caught.value) and "Nothing was sent" in str(caught.value)


class _FakeFcntl:
    """fcntl as on macOS: F_FULLFSYNC flushes the
    drive's cache; ``works`` False: a filesystem without it."""

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


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_sqlite_syncs_around_checkpoints_in_both_modes(tmp_path: Path, durability: str) -> None:
    # synchronous=OFF would let a power cut during a checkpoint corrupt the whole file (every
    # pending key lost); NORMAL costs an fsync per checkpoint, not per commit
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability=durability)  # type: ignore[arg-type]
    assert journal._read("PRAGMA synchronous", (), "checking") == [(1,)]  # NORMAL
    journal.close()


def _wal_frames(path: Path) -> int:
    size = Path(f"{path}-wal").stat().st_size
    return max(0, (size - 32) // (4096 + 24))  # the WAL header, then one header + page per frame


def _rows_in_main_file(path: Path) -> int:
    """What checkpoints have copied so far: the
    main file read alone (immutable: the WAL ignored)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        if (
            conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'operations'").fetchone()[
                0
            ]
            == 0
        ):
            return 0  # not even the new journal's schema copied yet
        return int(conn.execute("SELECT count(*) FROM operations").fetchone()[0])
    finally:
        conn.close()


def _claim(journal: samekey.Journal, first: int, count: int) -> None:
    for i in range(first, first + count):
        assert journal.claim(intent(f"op-{i}"), "owner", 60.0, 1000.0).status == "created"


def _wait_for_checkpoint(journal: samekey.Journal) -> None:
    checkpoints = journal._checkpoints
    assert checkpoints is not None and checkpoints.thread is not None, "no checkpoint was started"
    checkpoints.thread.join(10)
    assert not checkpoints.thread.is_alive()


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_a_commit_checkpoints_by_itself_only_in_fsync_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    monkeypatch.setattr(_wal, "CHECKPOINT_EVERY", 10**9)  # no background checkpoint
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability=durability)  # type: ignore[arg-type]
    _claim(journal, 0, 1000)
    if durability == "process":
        # past SQLite's 1,000 pages and still nothing copied: no commit paid for a checkpoint
        assert _wal_frames(path) > 1000
        assert _rows_in_main_file(path) == 0
    else:  # the claims synced the WAL already: SQLite's own checkpoint is cheap and kept
        assert _rows_in_main_file(path) > 0
    journal.close()


def test_a_thread_copies_the_wal_every_so_many_commits_and_the_wal_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    copy = _wal.Checkpointer._copy

    def recorded(self: _wal.Checkpointer) -> None:
        threads.append(threading.current_thread().name)
        copy(self)

    monkeypatch.setattr(_wal.Checkpointer, "_copy", recorded)
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    every = _wal.CHECKPOINT_EVERY
    _claim(journal, 0, every - 1)
    assert threads == [] and _rows_in_main_file(path) == 0
    _claim(journal, every - 1, 1)
    _wait_for_checkpoint(journal)
    assert _rows_in_main_file(path) == every
    size = Path(f"{path}-wal").stat().st_size
    _claim(journal, every, every)
    _wait_for_checkpoint(journal)
    assert _rows_in_main_file(path) == 2 * every
    # copied to its end, the WAL was written again from its start: it does not grow
    assert Path(f"{path}-wal").stat().st_size <= size * 1.25
    assert threads == ["samekey-checkpoint", "samekey-checkpoint"]
    journal.close()


class _SlowCopy:
    """Hold every checkpoint inside its copy until ``go`` is set; ``finished`` once it is done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside, self.go = threading.Event(), threading.Event()
        self.finished: list[bool] = []
        copy = _wal.Checkpointer._copy

        def slow(checkpointer: _wal.Checkpointer) -> None:
            self.inside.set()
            self.go.wait(10)
            copy(checkpointer)
            self.finished.append(True)

        monkeypatch.setattr(_wal.Checkpointer, "_copy", slow)


def _inside_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[_SlowCopy, Path, samekey.Journal]:
    """A process-mode journal whose checkpoint thread is inside its copy now, for 0.2 s more."""
    slow = _SlowCopy(monkeypatch)
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    _claim(journal, 0, _wal.CHECKPOINT_EVERY)
    assert slow.inside.wait(10)
    threading.Timer(0.2, slow.go.set).start()
    return slow, path, journal


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_fork_during_a_checkpoint_waits_for_it_and_the_child_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the thread may hold SQLite's process-wide mutexes: a child forked meanwhile would hang on them
    slow, path, journal = _inside_a_checkpoint(
        tmp_path, monkeypatch
    )  # it ends a moment later, while the fork waits

    def child() -> int:
        assert slow.finished == [True], "forked in the middle of the checkpoint"
        assert journal.claim(intent("child"), "child", 60.0, 1001.0).status == "created"
        journal.close()
        return 0

    assert fork_child(child) == 0, "the child failed or hung"
    _wait_for_checkpoint(journal)
    assert journal.get("child") is not None and len(journal.records()) == _wal.CHECKPOINT_EVERY + 1
    journal.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_close_waits_for_a_checkpoint_in_progress_and_leaves_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, path, journal = _inside_a_checkpoint(tmp_path, monkeypatch)
    thread = journal._checkpoints.thread  # type: ignore[union-attr]
    journal.close()
    assert thread is not None and not thread.is_alive() and slow.finished == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "j.sqlite3"
    ]  # the last close removed the WAL
    assert _rows_in_main_file(path) == _wal.CHECKPOINT_EVERY


_WRITER = """
import sys
sys.path.insert(0, {src!r})
import samekey
from samekey import _wal
from samekey._contract import Intent
_wal.CHECKPOINT_EVERY = 5  # a checkpoint in progress most of the time
journal = samekey.Journal({path!r}, durability="process")
for i in range({start}, {start} + 100000):
    op = f"op-{{i}}"
    journal.claim(Intent(op, f"key-{{i}}", "Idempotency-Key", "POST", "https://pay.test/c", "fp", \
(), b"{{}}"),
                  "owner", 60.0, 1000.0)
    print(op, flush=True)
"""


def test_a_kill_during_checkpoints_loses_no_claim(tmp_path: Path) -> None:
    # kill -9 at arbitrary points of a run that checkpoints every 5 commits: every claim the
    # process went on from (printed after it returned) is there, with its key, in a sound file
    path = tmp_path / "j.sqlite3"
    claimed: list[str] = []
    for round_, stop_after in enumerate((150, 333, 517)):
        script = _WRITER.format(src=str(SRC), path=str(path), start=round_ * 100000)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = 0
        while seen < stop_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            claimed.append(line.strip())
            seen += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        assert seen == stop_after, "the writer stopped early"
    with samekey.Journal(path) as journal:
        for op in claimed:
            record = journal.get(op)
            assert record is not None and record.key == f"key-{op[3:]}", op
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_the_wal_stays_small_while_requests_keep_writing_during_checkpoints(tmp_path: Path) -> None:
    # a checkpoint cannot copy the frames committed while it runs, and a WAL only starts over once
    # every frame is copied: without its final short round the WAL would grow to the 32 MB fallback
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    largest = 0
    for i in range(3000):  # ~9,000 WAL pages in all
        journal.claim(intent(f"op-{i}"), "owner", 60.0, 1000.0)
        time.sleep(0.0002)  # the request's round trip, during which a checkpoint may run
        if i % 50 == 0:
            largest = max(largest, _wal_frames(path))
    journal.close()
    assert largest < 3000, f"the WAL grew to {largest} pages"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_checkpoint_thread_yields_the_cpu_and_leaves_the_callers_priority_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    copy = _wal.Checkpointer._copy

    def recorded(self: _wal.Checkpointer) -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))  # 0: the calling thread, on Linux
        copy(self)

    monkeypatch.setattr(_wal.Checkpointer, "_copy", recorded)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    journal = samekey.Journal(tmp_path / "j.sqlite3", durability="process")
    _claim(journal, 0, _wal.CHECKPOINT_EVERY)
    _wait_for_checkpoint(journal)
    journal.close()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def _bytes_name_allowed(folder: Path) -> bool:
    probe = folder / "probe-\udce9"  # b"probe-\xe9": a Latin-1 name, not valid UTF-8
    try:
        probe.touch()
    except (OSError, UnicodeEncodeError):
        return False
    probe.unlink()
    return True


def test_a_journal_whose_path_is_not_utf8_opens_and_checkpoints(tmp_path: Path) -> None:
    # a Linux path is bytes (a folder named in Latin-1 by an older system): Python hands it over as
    # surrogate escapes, which the checkpoint's URI quoted as UTF-8 (UnicodeEncodeError): "process"
    # mode could not open a journal there at all, while "fsync" mode could
    if os.name != "posix" or not _bytes_name_allowed(tmp_path):
        pytest.skip("this file system takes UTF-8 names only")
    path = tmp_path / "caf\udce9" / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    _claim(journal, 0, _wal.CHECKPOINT_EVERY)
    _wait_for_checkpoint(journal)
    assert _rows_in_main_file(path) == _wal.CHECKPOINT_EVERY  # the thread copied this very file
    journal.close()


def test_a_thread_priority_refused_still_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # only Linux takes a thread id in setpriority(PRIO_PROCESS, ...): macOS and the BSDs read it as
    # a process id and answer ESRCH (or EPERM, or renice that process); the error skipped the copy
    # itself, so there the WAL grew to the 8,000-page fallback, paid for by a request
    def refused(which: int, who: int, priority: int) -> None:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(os, "setpriority", refused, raising=False)
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    _claim(journal, 0, _wal.CHECKPOINT_EVERY)
    _wait_for_checkpoint(journal)
    assert _rows_in_main_file(path) == _wal.CHECKPOINT_EVERY
    journal.close()


@pytest.mark.parametrize("platform", ["darwin", "netbsd10", "freebsd14"])
def test_the_thread_priority_is_lowered_only_where_it_is_per_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: str
) -> None:
    # elsewhere the thread id names a process (NetBSD's
    # LWP ids are 1, 2, ...): never renice another process
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "setpriority", lambda *args: calls.append(args), raising=False)
    monkeypatch.setattr(sys, "platform", platform)
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    _claim(journal, 0, _wal.CHECKPOINT_EVERY)
    _wait_for_checkpoint(journal)
    assert calls == [] and _rows_in_main_file(path) == _wal.CHECKPOINT_EVERY
    journal.close()


def test_a_commit_of_many_writes_counts_them_all(tmp_path: Path) -> None:
    # the async client's journal thread commits the writes of every waiting task at once: with 64
    # payments in flight answered with ~4 KB each, a commit adds ~100 WAL pages, so 200 commits went
    # past SQLite's fallback (8,000 pages) before the first background checkpoint, and that commit,
    # all 64 requests of it, paid for copying ~32 MB
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    answer = b'{"object": "payment_intent"' + b" " * 4000 + b"}"
    largest = 0
    for batch in range(40):
        ops = [f"op-{batch}-{i}" for i in range(64)]
        for calls in (
            [Claim(intent(op), "owner", 60.0, 1000.0) for op in ops],
            [Complete(op, "owner", 1, 200, [], answer, 1001.0) for op in ops],
        ):
            assert all(error is None for _, error in journal.run_batch(calls))
            checkpoints = journal._checkpoints
            assert checkpoints is not None
            if (
                checkpoints.thread is not None
            ):  # let each checkpoint finish: this is not about a slow disk
                checkpoints.thread.join(10)
            largest = max(largest, _wal_frames(path))
    journal.close()
    assert largest < 1000, f"the WAL grew to {largest} pages"  # SQLite's own bound, at most


_THREADS_AT_FORK: list[
    list[str]
] = []  # the parent's threads just after a fork, while a test records


def _record_threads_at_fork() -> None:
    if _THREADS_AT_FORK:
        _THREADS_AT_FORK.append([thread.name for thread in threading.enumerate()])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_parent=_record_threads_at_fork)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_no_checkpoint_thread_is_left_alive_at_a_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.12+ warns at a fork of a process running another thread ("This process is
    # multi-threaded, use of fork() may lead to deadlocks in the child"): the fork waited for the
    # checkpoint's lock but not for its thread, which lives on a moment after (longer on a loaded
    # machine), so a single-threaded worker forking its children right after a checkpoint started
    # warned at random
    checkpoint = _wal.Checkpointer._checkpoint

    def slow_to_end(checkpointer: _wal.Checkpointer) -> None:
        checkpoint(checkpointer)
        time.sleep(0.5)  # the lock is released; the thread has yet to end (descheduled, say)

    monkeypatch.setattr(_wal.Checkpointer, "_checkpoint", slow_to_end)
    path = tmp_path / "j.sqlite3"
    journal = samekey.Journal(path, durability="process")
    _claim(journal, 0, _wal.CHECKPOINT_EVERY)
    _THREADS_AT_FORK.append([])  # recording
    try:
        assert fork_child(lambda: 0) == 0
        forked = _THREADS_AT_FORK[1]
    finally:
        _THREADS_AT_FORK.clear()
    assert "samekey-checkpoint" not in forked
    assert _rows_in_main_file(path) == _wal.CHECKPOINT_EVERY
    journal.close()

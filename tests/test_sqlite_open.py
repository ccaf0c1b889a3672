"""Opening a journal file (_sqlite_open.py).

A journal is created private: 0600, in 0700 folders, whatever the umask, behind a symlink too.
A journal that cannot be used is a clear JournalError, and the file is never changed: such a
test keeps a byte-for-byte copy of the file before samekey touches it and compares after
(a journal may hold pending keys, so samekey must never rewrite it).
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
import respx

import samekey
from client_helpers import URL, make_client
from journal_helpers import SRC, assert_clear, intent, make_journal
from samekey import _sqlite_open


def test_random_bytes_are_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    original = os.urandom(8192)
    path.write_bytes(original)
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(
        caught.value, path, "not a readable SQLite database", "left untouched", "Move it aside"
    )
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "journal.sqlite3"
    ]  # no -wal/-shm left behind


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
        caught.value,
        path,
        "written by a newer samekey",
        f"schema {_sqlite_open.SCHEMA_VERSION + 1}",
        "Upgrade",
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
        assert {
            file: file.read_bytes() if file.exists() else None for file in (path, wal)
        } == originals, read_only


def test_a_truncated_journal_is_refused_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    cut = make_journal(path, operations=200)[
        : 4096 * 3
    ]  # a copy cut short, a restore that ran out of space
    path.write_bytes(cut)
    for read_only in (False, True):
        with pytest.raises(samekey.JournalError) as caught:
            samekey.Journal(path, read_only=read_only)
        assert_clear(
            caught.value,
            path,
            "not a readable SQLite database",
            "left untouched",
            "may hold pending keys",
        )
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
            1: "ALTER TABLE operations ADD COLUMN note TEXT; UPDATE operations SET note = "
            "'from v1'",
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


def test_a_failing_migration_leaves_the_journal_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    monkeypatch.setattr(_sqlite_open, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(
        _sqlite_open,
        "MIGRATIONS",
        {1: "ALTER TABLE operations ADD COLUMN note TEXT; SELECT nope FROM missing_table"},
    )
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(
        caught.value, path, "upgrading it from schema 1 to 2 failed", "no such table", "rolled back"
    )
    assert path.read_bytes() == original
    monkeypatch.undo()
    with samekey.Journal(path) as journal:  # still a good v1 journal
        assert len(journal.pending()) == 3


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file size limit")
def test_no_room_to_open_the_journal_names_the_disk_error(tmp_path: Path) -> None:
    # A real process that may not grow a file past the journal's size (RLIMIT_FSIZE, as a full
    # disk): opening needs room for the shared-memory index, and SQLite rolls its read back.
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    opener = f"""
        import resource, signal, samekey
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) \
instead
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
    assert (
        "disk I/O error" in result.stdout
        and "Check the file, its folder and the disk" in result.stdout
    ), result
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
        assert_clear(
            caught.value,
            path,
            "locked by another process for more than 0.2 s",
            "raise lock_timeout",
        )
        journal.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert path.read_bytes() == original


def test_a_locked_fresh_journal_cannot_be_set_up_and_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    holder = sqlite3.connect(
        path, isolation_level=None
    )  # e.g. another process creating it right now
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
                    journal.claim(Intent("x", "k", "Idempotency-Key", "POST", "u", "f", (), b""), \
"o", 60.0, 1.0)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sqlite3"], (
        "no empty -wal/-shm left"
    )
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
    assert (
        newer.read_bytes() == before
        and not Path(f"{newer}-wal").exists()
        and not Path(f"{newer}-shm").exists()
    )


_OPENER = textwrap.dedent(
    """
    import sys, time, samekey
    folder, start, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        time.sleep(max(0.0, start + r * 0.04 - time.time()))  # every process opens journal r at \
once
        samekey.Journal(f"{folder}/journal-{r}.sqlite3").close()
    """
)


def test_processes_opening_a_new_journal_at_once_all_succeed(tmp_path: Path) -> None:
    rounds = 25
    start = time.time() + 1.5  # after every process has imported samekey
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(tmp_path), str(start), str(rounds)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    for r in range(rounds):
        with samekey.Journal(tmp_path / f"journal-{r}.sqlite3") as journal:
            assert journal.records() == []


def test_an_existing_journal_and_its_side_files_are_made_private(tmp_path: Path) -> None:
    real = tmp_path / "real.sqlite3"
    make_journal(real)
    link = tmp_path / "journal.sqlite3"
    link.symlink_to(real)
    real.chmod(0o644)
    Path(f"{real}-wal").write_bytes(b"")  # an empty WAL SQLite takes as it is
    Path(f"{real}-wal").chmod(0o666)
    with samekey.Journal(link) as journal:
        journal.claim(intent("new"), "owner", 60.0, 2000.0)
        modes = {end: Path(f"{real}{end}").stat().st_mode & 0o777 for end in ("", "-wal", "-shm")}
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


def test_a_journal_this_process_cannot_make_private_is_refused(
    tmp_path: Path, unprivileged: list[str]
) -> None:
    path = tmp_path / "journal.sqlite3"
    original = make_journal(path)
    path.chmod(0o666)
    os.chown(path, 65534, 65534)  # another user's file, readable by all
    result = _run_as_unprivileged(
        unprivileged,
        f"""
        import samekey
        try:
            samekey.Journal({str(path)!r})
        except samekey.JournalError as exc:
            print(exc)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "mode 0666" in result.stdout and f"chmod 600 {path}" in result.stdout, result.stdout
    assert path.read_bytes() == original


@pytest.mark.parametrize("kind", ["dev-null", "fifo"])
def test_a_journal_path_that_is_not_a_regular_file_is_refused_before_sqlite(
    tmp_path: Path, kind: str
) -> None:
    if kind == "fifo":
        path = tmp_path / "journal.sqlite3"
        os.mkfifo(path)
    else:
        path = Path("/dev/null")
    before = set(path.parent.iterdir())
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal(path)
    assert_clear(caught.value, path, "not a regular file", "Point journal= at a file")
    assert set(path.parent.iterdir()) == before


_HOLD_EXCLUSIVE = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # its WAL writes stay locked to it
conn.execute("UPDATE operations SET attempts = attempts + 1")
print("holding", flush=True)
time.sleep(60)
"""


def test_a_read_only_open_of_a_locked_journal_says_locked_not_permissions(tmp_path: Path) -> None:
    # `samekey list` while another process holds the journal: it said to run as the owner
    path = tmp_path / "journal.sqlite3"
    make_journal(path)
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD_EXCLUSIVE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "holding"
        with pytest.raises(samekey.JournalError) as caught:
            samekey.Journal(path, read_only=True, lock_timeout=0.2)
    finally:
        other.kill()
        other.wait(10)
    assert_clear(
        caught.value, path, "locked by another process for more than 0.2 s", "raise lock_timeout"
    )
    assert "owner" not in str(caught.value)


def test_journal_file_and_folder_are_private(journal_path: Path) -> None:
    with make_client(journal_path):
        pass
    assert journal_path.stat().st_mode & 0o777 == 0o600
    assert journal_path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_every_folder_samekey_creates_for_the_journal_is_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    # a first run with no ~/.local/state yet, under a service manager's umask 000: a folder left
    # world-writable above the journal lets another local user swap the journal folder for their own
    # (and with it the pending keys); XDG also asks for 0700 on state folders an app creates
    journal_path = tmp_path / "home" / ".local" / "state" / "samekey" / "journal.sqlite3"
    existing = tmp_path.stat().st_mode & 0o777
    previous = os.umask(0o000)
    try:
        with make_client(
            journal_path, transport=httpx.MockTransport(lambda r: httpx.Response(201))
        ) as client:
            client.post(URL, json={}, operation="op")
            files = {p.name: p.stat().st_mode & 0o777 for p in journal_path.parent.iterdir()}
    finally:
        os.umask(previous)
    assert files == {
        name: 0o600 for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm")
    }
    created = [journal_path.parents[i] for i in range(4)]  # samekey, state, .local, home
    assert {str(folder): folder.stat().st_mode & 0o777 for folder in created} == {
        str(f): 0o700 for f in created
    }
    assert tmp_path.stat().st_mode & 0o777 == existing  # a folder that was there is left as it is


@pytest.mark.skipif(
    not hasattr(os, "symlink") or os.name != "posix", reason="POSIX modes and symlinks"
)
@pytest.mark.parametrize("relative", [False, True])
def test_a_journal_behind_a_dangling_symlink_is_private_too(tmp_path: Path, relative: bool) -> None:
    # a dotfiles-managed state folder, or a path
    # pointing at a volume: the link exists, its target not yet
    volume = tmp_path / "volume"
    volume.mkdir()
    link = tmp_path / "state" / "journal.sqlite3"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(
        Path("..", "volume", "journal.sqlite3") if relative else volume / "journal.sqlite3"
    )
    previous = os.umask(0o022)
    try:
        with make_client(
            link, transport=httpx.MockTransport(lambda r: httpx.Response(201))
        ) as client:
            client.post("https://pay.test/charges", json={}, operation="op")
            modes = {p.name: p.stat().st_mode & 0o777 for p in volume.iterdir()}
    finally:
        os.umask(previous)
    assert link.is_symlink()
    assert modes == {
        name: 0o600 for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm")
    }


@pytest.mark.skipif(
    not hasattr(os, "symlink") or os.name != "posix", reason="POSIX modes and symlinks"
)
def test_a_journal_folder_behind_a_dangling_symlink_is_created_private(tmp_path: Path) -> None:
    # ~/.local/state/samekey linked to a volume folder
    # not made yet: as for a linked file, the target is made
    link = tmp_path / "state" / "samekey"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "volume" / "samekey")
    with make_client(
        link / "journal.sqlite3", transport=httpx.MockTransport(lambda r: httpx.Response(201))
    ) as client:
        client.post(URL, json={}, operation="op")
    volume = tmp_path / "volume"
    assert link.is_symlink() and (volume / "samekey" / "journal.sqlite3").is_file()
    assert {folder.stat().st_mode & 0o777 for folder in (volume, volume / "samekey")} == {0o700}


def test_corrupt_journal_is_a_clear_error_and_left_intact(journal_path: Path) -> None:
    journal_path.parent.mkdir(parents=True)
    garbage = b"this is not a database" * 100
    journal_path.write_bytes(garbage)
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Client(journal=journal_path)
    assert str(journal_path) in str(caught.value) and "left untouched" in str(caught.value)
    assert journal_path.read_bytes() == garbage


def test_journal_from_a_newer_samekey_is_refused(journal_path: Path) -> None:
    samekey.Journal(journal_path).close()
    with sqlite3.connect(journal_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = journal_path.read_bytes()
    with pytest.raises(samekey.JournalError, match=r"newer samekey .*Upgrade samekey"):
        samekey.Journal(journal_path)
    assert journal_path.read_bytes() == before


def test_locked_journal_times_out_with_a_clear_error(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path, lock_timeout=0.2)
    blocker = sqlite3.connect(journal_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with samekey.Client(journal=journal) as client, respx.mock:
            respx.post(URL).mock(return_value=httpx.Response(201))
            with pytest.raises(samekey.JournalError, match="locked by another process"):
                client.post(URL, json={}, operation="op")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        journal.close()


def test_a_new_journal_has_small_pages_and_an_older_one_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def page_size(path: Path) -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("PRAGMA page_size").fetchone()[0])
        finally:
            conn.close()

    samekey.Journal(tmp_path / "new.sqlite3").close()
    assert page_size(tmp_path / "new.sqlite3") == _sqlite_open.PAGE_SIZE == 1024
    monkeypatch.setattr(_sqlite_open, "PAGE_SIZE", 4096)  # a journal made before the change
    samekey.Journal(tmp_path / "old.sqlite3").close()
    monkeypatch.undo()
    with samekey.Journal(tmp_path / "old.sqlite3") as journal:
        journal.claim(intent("op-1"), "owner", 60.0, 1000.0)
        assert journal.get("op-1") is not None
    assert page_size(tmp_path / "old.sqlite3") == 4096

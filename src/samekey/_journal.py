"""The journal: a durable record of every keyed operation, in a local SQLite file.

Why a record exists before the first byte is sent: if the process dies after the
server acted but before the answer arrived, the next run must find the same key and
send it again, so the server replays its answer instead of acting twice.

A record is *pending* from `claim` until `complete`; a pending record carries a
lease (owner, expiry) so only one caller at a time executes it, and a caller that
was killed loses the lease when it expires. Completed records keep the server's
answer for replay. Secret headers are stripped before anything is written.

`JournalStore` is the small interface the clients use; `Journal` implements it on
SQLite. Another store (PostgreSQL, Redis, ...) implements the same methods.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from math import inf
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from ._contract import (
    Claim,
    ClaimResult,
    Complete,
    FillReserved,
    Intent,
    JournalCall,
    OperationRecord,
    Outcome,
    RecordAttempt,
    Release,
    lease_decision,
    new_record,
    with_lease,
)
from ._errors import JournalError
from ._identity import PROCESS
from ._location import default_journal_path, refuse_dsn_as_path
from ._rows import (
    COLUMNS,
    headers_to_json,
    insert_params,
    purge_in_chunks,
    record_from_row,
    request_headers_json,
    summary_columns,
)

__all__ = ["Journal"]

Durability = Literal["fsync", "process"]
SCHEMA_VERSION = 1
APPLICATION_ID = 0x534B4A31  # "SKJ1": marks a file as a samekey journal
FORK_WAIT_EXTRA = 5.0  # seconds a fork waits for a journal call in progress, beyond its lock waits


_SCHEMA = """
CREATE TABLE operations (
    operation        TEXT PRIMARY KEY,
    key              TEXT NOT NULL,
    key_header       TEXT NOT NULL,
    method           TEXT NOT NULL,
    url              TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    request_headers  TEXT NOT NULL,
    request_body     BLOB NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'completed')),
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    completed_at     REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    response_status  INTEGER,
    response_headers TEXT,
    response_body    BLOB,
    lease_owner      TEXT,
    lease_expires    REAL
);
CREATE INDEX operations_pending ON operations (created_at) WHERE state = 'pending';
CREATE INDEX operations_completed ON operations (completed_at) WHERE state = 'completed';
"""

# Forward migrations: MIGRATIONS[n] upgrades a journal from version n to n + 1.
MIGRATIONS: dict[int, str] = {}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # statements separated by ';' (no ';' inside literals), run in the caller's transaction
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


_SUMMARY_COLUMNS = summary_columns("X''")


_T = TypeVar("_T")


class _Job(Generic[_T]):
    """One write waiting for its group commit."""

    __slots__ = ("doing", "done", "durable", "error", "fn", "promoted", "ran", "result", "settled")

    def __init__(self, fn: Callable[[sqlite3.Connection], _T], doing: str, durable: bool) -> None:
        self.fn = fn
        self.doing = doing
        self.durable = durable
        self.done: threading.Event | None = None  # made only for a job that has to wait
        self.promoted = False  # woken to lead the next batch, not because it finished
        self.result: _T | None = None
        self.error: BaseException | None = None
        self.settled = False  # result or error final: an interrupted leader only wakes it
        self.ran = False  # its statements ran in the batch's transaction (result set)


# SQLite's own auto-checkpoint runs inside the commit that takes the WAL past 1,000 pages:
# that one request pays the copy into the main file and two fsyncs, the first flushing ~4 MB
# of WAL that "process" mode never synced (p99.9 6 ms instead of 3). So in that mode the
# writer only counts the records its commits write, and every CHECKPOINT_EVERY of them a
# short-lived thread checkpoints on a connection of its own (_copy: the bulk while writers go
# on, then the rest while they wait a moment). Records, not commits: a group commit (the
# async client's journal thread) may hold a write of every task in flight.
CHECKPOINT_EVERY = 200  # records written (a claim or a completion writes ~3 pages: ~600 of SQLite's 1,000)
FULL_TRIES = 4  # a busy one gives up at once; the next checkpoint tries again anyway
FULL_RETRY_PAUSE = 0.002  # seconds
# the writer still checkpoints by itself past this many WAL pages (~32 MB): a bound on the WAL
# if the background checkpoints cannot keep up (a reader pinning an old snapshot, a slow disk)
FALLBACK_AUTOCHECKPOINT = 8000


class _Checkpointer:
    """Copies the WAL into the main file off the request path, from a thread that lives for
    one checkpoint only: nothing stays behind to join at close or to copy into a fork."""

    def __init__(self, database: str, wait: float) -> None:
        # mode=rw: never create a file where the journal was (moved aside, deleted); quoted as the
        # bytes the OS has (a POSIX path need not be UTF-8: surrogate escapes would not encode)
        self.uri = "file:" + urllib.parse.quote(os.fsencode(database)) + "?mode=rw"
        self.wait = wait  # how long close() waits for a checkpoint in progress
        self.lock = threading.Lock()  # held while the thread is inside SQLite: a fork waits for it
        self.thread: threading.Thread | None = None
        self.written = 0  # records written since the last checkpoint started

    def committed(self, records: int) -> None:
        """Count a commit's records; start a checkpoint every CHECKPOINT_EVERY (connection lock held)."""
        self.written += records
        if self.written < CHECKPOINT_EVERY or (self.thread is not None and self.thread.is_alive()):
            return  # one at a time: the next commit tries again
        self.written = 0
        thread = threading.Thread(target=self._checkpoint, name="samekey-checkpoint", daemon=True)
        with contextlib.suppress(RuntimeError):  # no thread to be had (interpreter exiting): SQLite's fallback
            thread.start()
            self.thread = thread

    def _checkpoint(self) -> None:
        with self.lock, contextlib.suppress(Exception):  # a checkpoint not done now is done by the next
            # Linux only: elsewhere (macOS, the BSDs) setpriority takes that id for a process id
            if sys.platform.startswith("linux") and hasattr(os, "setpriority"):
                # the lowest CPU priority: on a busy machine the requests go first, the copy waits
                with contextlib.suppress(OSError):  # refused (a sandbox): the copy is done all the same
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            self._copy()

    def _copy(self) -> None:
        # no busy wait (timeout=0): FULL below holds the writers off while SQLite's busy handler
        # sleeps, and it would sleep 1, 2, 5, 10 ms for a reader of an older snapshot (`samekey list`
        # in another process). Instead each try gives up at once, and it tries again, lock-free.
        conn = sqlite3.connect(self.uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # syncs the WAL, then the main file (OFF would not)
            # the bulk of the copy, writers going on meanwhile: their new frames are left over
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            # the few left over, writers held off for that short copy: only a WAL copied to its
            # end starts over at the next commit (instead of growing)
            for _ in range(FULL_TRIES):
                busy, _frames, _copied = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
                if not busy:
                    break
                time.sleep(FULL_RETRY_PAUSE)  # a writer mid-commit, or a reader still on an old snapshot
        finally:
            conn.close()  # never the last connection: the writer's stays open until close() joins this

    def join(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.join(self.wait)


class Journal:
    """The embedded journal: one SQLite file, shared safely by threads and processes.

    ``durability="fsync"`` (default) makes a new record survive power loss before the
    request is sent; ``"process"`` survives a killed process (the OS still holds the
    write) but not a power cut, and is faster. Completion records never pay an
    fsync of their own: losing one only means the next run replays via the server.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durability: Durability = "fsync",
        lock_timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        if durability not in ("fsync", "process"):
            raise ValueError(f"durability must be 'fsync' or 'process', got {durability!r}")
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not 0 < lock_timeout < inf:
            raise ValueError(f"lock_timeout must be a positive, finite number of seconds, got {lock_timeout!r}")
        refuse_dsn_as_path(path)
        # absolute once, here: a later os.chdir (a daemon, a task runner) must neither point the
        # WAL sync at a missing file nor let a forked child reopen another, empty journal
        # (absolute(), not resolve(): `..` after a symlinked folder means what the OS says)
        self.path = Path(path).expanduser().absolute() if path is not None else default_journal_path()
        self.location = str(self.path)
        self.durability: Durability = durability
        self.lock_timeout = float(lock_timeout)
        self.read_only = bool(read_only)  # for inspection (`samekey list/show`): creates and changes nothing
        self._lock = threading.Lock()  # guards the connection
        self._queue_lock = threading.Lock()  # guards the group-commit queue
        self._queue: list[_Job[Any]] = []
        self._writing = False
        self._wal_fd: int | None = None  # kept open for `_sync_wal`
        self._conn: sqlite3.Connection | None = None
        self._pid = PROCESS.pid  # the process that opened the connection
        # how long a fork waits for a call in another thread to leave the connection (see _before_fork):
        # a busy wait for the write lock, then one for BEGIN IMMEDIATE, then an fsync
        self._fork_wait = 2 * self.lock_timeout + FORK_WAIT_EXTRA
        self._forked_in_use = False  # forked while another thread held the connection past _fork_wait
        self._made_side_files = False  # read_only: the -wal/-shm were not there before it opened
        # "process" mode only: in "fsync" mode each claim has synced the WAL already, so SQLite's own
        # checkpoint is cheap, and one from another thread competes with the claims' fsyncs (p99 +3-7%)
        self._checkpoints_off_path = durability == "process" and not self.read_only
        self._checkpoints: _Checkpointer | None = None  # made once the file is open
        with _JOURNALS_LOCK:
            _JOURNALS.add(self)
        with self._lock:  # a fork meanwhile waits for the open to end
            self._conn = self._open()
            self._start_checkpoints()

    # -- opening ------------------------------------------------------------------------

    def _fail(self, problem: str, fix: str) -> JournalError:
        return JournalError(self.path, problem, fix)

    def _prepare_file(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            # a dangling symlink (a state folder linked to a volume): create its target, as for the file
            folder = Path(os.path.realpath(folder))
            try:
                # every missing folder 0700, not only the last (mkdir -p makes parents with the umask's
                # mode): a world-writable parent would let another user swap the journal folder
                for missing in reversed([folder, *(p for p in folder.parents if not p.exists())]):
                    missing.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise self._fail(
                    f"cannot create its folder ({exc.strerror})", "Choose a writable location with journal=PATH."
                ) from exc
        if self.path.is_dir():
            raise self._fail("this is a folder, not a file", "Pass the path of a file inside it.")
        if not self.path.exists():
            # a dangling symlink (a dotfiles-managed state folder, a volume): O_EXCL refuses the link
            # itself, so create its target, or SQLite would create it with the umask's 0644
            target = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
            try:  # create it private before SQLite opens it; SQLite copies the mode to -wal/-shm
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise self._fail(
                    f"cannot create the file ({exc.strerror})",
                    "Check the folder's permissions or choose another path with journal=PATH.",
                ) from exc

    def _connect(self, target: str | Path, *, uri: bool = False) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                target, timeout=self.lock_timeout, isolation_level=None, check_same_thread=False, uri=uri
            )
        except sqlite3.Error as exc:
            raise self._fail(f"cannot open it ({exc})", "Check the path and its permissions.") from exc

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            try:
                conn = self._open_read_only()
            except BaseException:
                self._drop_side_files()
                raise
            with self._closing_on_error(conn):
                conn.execute("PRAGMA busy_timeout=0")  # _read's _when_free waits, not SQLite first as well
            return conn
        self._prepare_file()
        conn = self._connect(self.path)
        with self._closing_on_error(conn):
            self._init_schema(conn)
            conn.execute("PRAGMA busy_timeout=0")  # from here on, _when_free waits (see there)
        return conn

    @contextlib.contextmanager
    def _closing_on_error(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Close ``conn`` on any error, turning SQLite's into a JournalError that says what to do."""
        try:
            yield
        except JournalError:
            self._close_untouched(conn)
            raise
        except sqlite3.OperationalError as exc:
            self._close_untouched(conn)
            raise self._classify(exc, "opening") from exc
        except sqlite3.DatabaseError as exc:
            self._close_untouched(conn)
            raise self._fail(
                f"it is not a readable SQLite database ({exc})",
                "It was left untouched. Move it aside (keep it: it may hold pending keys) "
                "or point journal= at another file.",
            ) from exc
        except BaseException:
            conn.close()
            raise

    def _read_only_uri(self) -> str:
        return "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"

    def _close_untouched(self, conn: sqlite3.Connection) -> None:
        """Close a connection to a file being refused, leaving its -wal as it is.

        The last connection to a WAL database to close copies the -wal into the main file and
        deletes it: a newer samekey's journal or another application's database would be
        rewritten. A read-only connection holding the file meanwhile keeps ``conn`` from being
        the last, and cannot checkpoint itself. (Python < 3.12 has no SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE.)
        With an empty -wal there is nothing to fold in: a plain close removes the -wal/-shm it made.
        """
        holder = None
        with contextlib.suppress(sqlite3.Error, OSError):  # no -wal, or the file cannot be read: a plain close
            if self._side_file("-wal").stat().st_size > 0:
                holder = sqlite3.connect(self._read_only_uri(), uri=True, isolation_level=None, check_same_thread=False)
                holder.execute("PRAGMA user_version").fetchone()  # a read: it holds the file from now on
        try:
            conn.close()
        finally:
            if holder is not None:
                holder.close()

    def _open_read_only(self) -> sqlite3.Connection:
        # A reader of a WAL database normally needs the -shm file, which it creates if missing:
        # impossible in a folder it may not write (a read-only mount, another user's journal).
        # With no -wal holding recent writes, the main file alone is the whole journal and
        # can be read as immutable; otherwise those writes would be skipped, so it is an error.
        if not self.path.is_file():
            raise self._fail("there is no journal file here", "Check the path (--journal PATH or $SAMEKEY_JOURNAL).")
        self._made_side_files = not any(self._side_file(end).exists() for end in ("-wal", "-shm"))
        base = self._read_only_uri()
        conn = self._connect(base, uri=True)
        try:
            self._check_header(conn)
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            wal = self._side_file("-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise self._fail(
                    f"cannot read it without writing ({exc}), and {wal.name} holds writes not yet in the main file",
                    "Run as the journal's owner, or where its folder is writable.",
                ) from exc
        except BaseException:
            with self._closing_on_error(conn):
                raise
        conn = self._connect(base + "&immutable=1", uri=True)
        with self._closing_on_error(conn):
            self._check_header(conn)
        return conn

    def _start_checkpoints(self) -> None:
        if self._checkpoints_off_path:
            self._checkpoints = _Checkpointer(str(self._opened_file("")), self._fork_wait)

    def _side_file(self, suffix: str) -> Path:
        # SQLite follows a symlinked journal path and keeps -wal/-shm beside the real file
        return Path(f"{os.path.realpath(self.path)}{suffix}")

    def _opened_file(self, suffix: str) -> Path:
        # the file SQLite itself opened: a symlinked path may point elsewhere by now (a deploy
        # switching `current`), and its WAL is the one to sync
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                for _, name, file in self._conn.execute("PRAGMA database_list").fetchall():
                    if name == "main" and file:
                        return Path(f"{file}{suffix}")
        return self._side_file(suffix)

    def _drop_side_files(self) -> None:
        """Remove the empty -wal/-shm a read-only connection made (SQLite cannot, read-only)."""
        try:
            empty = self._side_file("-wal").stat().st_size == 0
        except OSError:
            return
        if not (self._made_side_files and empty and os.access(self.path, os.W_OK)):
            return  # never a WAL holding writes, nor files that were there before it opened
        # SQLite deletes both when the last connection to the journal closes, deciding under its own
        # exclusive lock (so never while another process uses them): a plain connection that reads
        # once and closes lets it do so. Nothing to checkpoint in an empty WAL: the file is unchanged.
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()

    def _check_header(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(application id, schema version), refusing a file that is not a journal this samekey reads."""
        conn.execute("BEGIN")  # one snapshot: another process may be creating the schema right now
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            if conn.in_transaction:  # SQLite rolls back by itself on some errors (no room for the -shm): keep that one
                conn.execute("COMMIT")
        if app_id != APPLICATION_ID and (tables or version or app_id):
            raise self._fail(
                "this SQLite file is not a samekey journal",
                "It was left untouched. Point journal= at another file.",
            )
        if version > SCHEMA_VERSION:
            raise self._fail(
                f"it was written by a newer samekey (schema {version}; this one reads up to {SCHEMA_VERSION})",
                "It was left untouched. Upgrade samekey to use it.",
            )
        if self.read_only and (app_id, version) != (APPLICATION_ID, SCHEMA_VERSION):
            raise self._fail(
                f"it is empty or needs an upgrade (schema {version}, this samekey writes {SCHEMA_VERSION})",
                "Open it once with write access (any samekey client or command does it).",
            )
        return app_id, version

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        app_id, version = self._check_header(conn)
        # switching to WAL can fail at once with "locked" (no busy wait) while another process opens
        # the same new file: retry it within lock_timeout
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        # NORMAL in both modes: SQLite syncs only around checkpoints, which keeps the file
        # consistent through a power cut (OFF could corrupt it, losing every pending key).
        # fsync mode adds our own fdatasync of the WAL after a commit holding a durable write
        # (`_sync_wal`): same durability as FULL for those, and relaxed writes (completions,
        # purges) commit with no sync and no PRAGMA switch per transaction.
        conn.execute("PRAGMA synchronous=NORMAL")
        if self._checkpoints_off_path:
            conn.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT}")  # see _Checkpointer
        if app_id == APPLICATION_ID and version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the write lock: another process may have just set it up
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            # one transaction: a crash half-way leaves the file as it was (executescript would commit early)
            if version == 0:
                _run_script(conn, _SCHEMA)
                version = 1
            while version < SCHEMA_VERSION:
                try:
                    _run_script(conn, MIGRATIONS[version])
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise
                    raise self._fail(
                        f"upgrading it from schema {version} to {version + 1} failed ({exc})",
                        "The upgrade was rolled back and the file left as it was; report this as a samekey bug.",
                    ) from exc
                version += 1
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _classify(self, exc: sqlite3.Error, doing: str) -> JournalError:
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return self._fail(
                f"locked by another process for more than {self.lock_timeout:g} s while {doing}",
                "Another samekey process may be stuck; retry, or raise lock_timeout.",
            )
        if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
            return self._fail(
                f"not writable while {doing} ({text})",
                "Make the file and its folder writable, or choose another path with journal=PATH.",
            )
        if "full" in lowered:
            return self._fail(f"the disk is full while {doing}", "Free some space; nothing was sent.")
        if "malformed" in lowered or "not a database" in lowered:
            return self._fail(
                f"the file is corrupt ({text})",
                "It was left untouched. Move it aside (keep it: it may hold pending keys) "
                "or point journal= at another file.",
            )
        return self._fail(f"SQLite error while {doing} ({text})", "Check the file, its folder and the disk.")

    # -- plumbing -----------------------------------------------------------------------

    # Group commit: writers queue their job; the first becomes the leader and runs every
    # queued job in ONE transaction (one fsync), then hands leadership to the next
    # waiter. Under concurrency the fsync cost is paid per batch, not per operation;
    # a lone caller runs its own job at once, with no thread hop and no Event.
    def _write(self, doing: str, fn: Callable[[sqlite3.Connection], _T], *, durable: bool = True) -> _T:
        return self._run(_Job(fn, doing, durable))

    def _run(self, job: _Job[_T]) -> _T:
        self._submit([job])
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _forked(self, *, reopen: bool = True) -> None:
        """In a forked child: drop the connection copied from the parent, open one of our own.

        SQLite forbids using a connection across fork(): the child does not hold the parent's
        POSIX locks, so writing through it could corrupt the journal. It is closed at once,
        while the parent still has the journal open (so SQLite leaves the files alone), and it
        is idle: the fork waited for any call on it to end (_before_fork). The locks and the
        queue may have been copied mid-use by another thread: made anew.
        """
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue = []
        self._writing = False
        self._checkpoints = None  # its thread, if any, stayed in the parent
        inherited, self._conn = self._conn, None
        wal_fd, self._wal_fd = self._wal_fd, None
        if wal_fd is not None:
            os.close(wal_fd)  # the child's copy of the descriptor
        if self._forked_in_use:
            # Another thread was inside SQLite through the fork: closing its connection would wait
            # forever on the mutex copied held, or undo the parent's half-done transaction in the
            # shared WAL index. Never closed then (not even by the garbage collector at exit), and
            # no new connection either: it would share the copied lock state and hold no real
            # lock, so the parent could delete the WAL under it. Every call says so (_pid kept).
            if inherited is not None:
                _abandon(inherited)
            if reopen:
                raise self._fail(
                    "this process was forked while another thread of its parent was writing to it, "
                    f"for more than {self._fork_wait:g} s; SQLite cannot be used safely here",
                    "Fork before the journal is in use, or start workers with the 'spawn' method.",
                )
            return
        self._pid = PROCESS.pid
        if inherited is not None:
            with contextlib.suppress(sqlite3.Error):
                inherited.close()
            if reopen:
                with self._lock:
                    self._conn = self._open()
                    self._start_checkpoints()

    def _submit(self, jobs: list[_Job[Any]]) -> None:
        """Run ``jobs`` (all in the same batch) and return once they are done."""
        if self._pid != PROCESS.pid:
            self._forked()
        first = jobs[0]
        holding = queued = done = False  # holding: this caller has the writer role to pass on
        taken: list[_Job[Any]] = []  # the batch this caller leads: other callers wait on its jobs
        try:
            # one try from the first statement: an interruption (Ctrl-C, SystemExit from a SIGTERM
            # handler, a task time limit) anywhere must still pass the writer role on, take this
            # caller's jobs out of the queue and wake the callers whose jobs it took, or they and
            # every later write wait forever
            with self._queue_lock:
                if not self._writing:
                    self._writing = holding = True  # the queue is empty whenever nobody writes
                else:
                    first.done = threading.Event()
                    queued = True  # before the extend: an interruption between them leaves nothing behind
                    self._queue.extend(jobs)
            if holding:
                taken = jobs
            else:
                first.done.wait()  # type: ignore[union-attr]
                if not first.promoted:
                    done = True
                    return  # a leader ran them
                holding = True
                with self._queue_lock:
                    taken, self._queue = self._queue, []
            self._run_batch(taken)
            done = True
        finally:
            if holding or (queued and not done):
                self._clean_up(jobs, taken, holding, done)

    def _clean_up(self, jobs: list[_Job[Any]], taken: list[_Job[Any]], holding: bool, done: bool) -> None:
        """After a write (``done``) or an interruption: the writer role and the waiters, settled.

        Every step can be repeated, so a second interruption landing in the middle (a Ctrl-C
        pressed twice) makes it start over rather than leave a waiter asleep; it is raised after.
        """
        again: BaseException | None = None
        while True:
            try:
                if not done:
                    for job in taken:  # callers whose jobs were taken into an interrupted batch
                        if job.done is not None and not job.done.is_set() and all(job is not mine for mine in jobs):
                            if not job.settled and not job.ran:  # ran and unsettled: its batch committed
                                job.result, job.error = None, job.error or self._interrupted(job)
                            job.done.set()
                with self._queue_lock:
                    if not done:
                        self._queue = [job for job in self._queue if all(job is not mine for mine in jobs)]
                        holding = holding or jobs[0].promoted  # promoted while being interrupted
                    if holding:
                        self._hand_off()
                break
            except BaseException as exc:
                again = exc
        if again is not None:
            raise again

    def _interrupted(self, job: _Job[Any]) -> JournalError:
        return self._fail(
            f"the commit holding this write was interrupted while {job.doing}",
            "It may not have been written; run the call again (a pending operation keeps its key).",
        )

    def _hand_off(self) -> None:
        """Wake the next waiting writer to lead, or let the next caller lead (queue lock held)."""
        if self._queue:
            head = self._queue[0]
            head.promoted = True
            head.done.set()  # type: ignore[union-attr]
        else:
            self._writing = False

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        sync = self.durability == "fsync" and any(job.durable for job in batch)
        with self._lock:
            conn = self._conn
            if conn is None or self.read_only:
                refusal = (
                    self._fail("it is closed", "Use the journal inside the client's lifetime.")
                    if conn is None
                    else self._fail("it was opened read_only=True", "Open it without read_only to record operations.")
                )
                for job in batch:
                    job.error, job.settled = refusal, True
                    if job.done is not None:
                        job.done.set()
                return
            try:
                # Optimistic first: no savepoint per job (each statement releases and re-takes the
                # GIL, which a busy event loop thread makes slow). If a job fails, redo the batch
                # with savepoints so that job fails alone.
                changes = conn.total_changes
                if not self._execute(conn, batch, savepoints=False):
                    self._execute(conn, batch, savepoints=True)
                if conn.total_changes != changes:  # a replay or a busy claim wrote nothing
                    if sync:
                        self._sync_wal()
                    if self._checkpoints is not None:
                        self._checkpoints.committed(conn.total_changes - changes)
                sync = False  # done: nothing left to make durable
            except OSError as exc:  # committed but maybe not on the disk: the callers must not go on
                for job in batch:
                    job.result = None
                    job.error = job.error or self._fail(
                        f"the disk failed to make a record durable while {job.doing} ({exc.strerror})",
                        "Nothing was sent. Check the disk; the journal file was left as it is.",
                    )
            except sqlite3.Error as exc:  # BEGIN or COMMIT failed: nothing of the batch was written
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                for job in batch:
                    job.result, job.error = None, job.error or self._classify(exc, job.doing)
            except BaseException:
                # interrupted mid-batch (Ctrl-C, SystemExit, a task time limit): leave no transaction
                # open (it would hold the write lock against every other process), settle the other
                # callers' jobs and wake them, then let the interruption go on. A job that ran in a
                # batch that committed keeps its result (its write is there), unless it is a claim
                # still waiting for its fsync.
                committed = not conn.in_transaction
                if not committed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                for job in batch:
                    if not (committed and job.ran and not (sync and job.durable)):
                        job.result, job.error = None, job.error or self._interrupted(job)
                    job.settled = True
                    if job.done is not None:
                        job.done.set()
                raise
        for job in batch:  # all settled before any is woken: an interruption while waking loses no result
            job.settled = True
        for job in batch:
            if job.done is not None:
                job.done.set()

    def _execute(self, conn: sqlite3.Connection, batch: list[_Job[Any]], *, savepoints: bool) -> bool:
        """Run the batch in one transaction; False (all rolled back) when a job fails without savepoints."""
        several = len(batch) > 1
        if several:  # a lone job runs in autocommit; a job needing more opens its own transaction
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                self._when_free(conn, _begin_immediate, exc)
        for job in batch:
            if savepoints:
                conn.execute("SAVEPOINT job")
            try:
                try:
                    job.result = job.fn(conn)
                except sqlite3.OperationalError as exc:
                    if several:
                        raise  # inside BEGIN IMMEDIATE: the write lock is ours, this is no lock wait
                    job.result = self._when_free(conn, job.fn, exc)
                job.ran = True
            except Exception as exc:
                if several and not savepoints:
                    conn.execute("ROLLBACK")
                    for done in batch:
                        done.result, done.ran = None, False
                    return False
                job.error = self._classify(exc, job.doing) if isinstance(exc, sqlite3.Error) else exc
                if savepoints:
                    conn.execute("ROLLBACK TO job")
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
            if savepoints:
                conn.execute("RELEASE job")
        if conn.in_transaction:
            conn.execute("COMMIT")
        return True

    def _when_free(
        self, conn: sqlite3.Connection, attempt: Callable[[sqlite3.Connection], _T], error: sqlite3.OperationalError
    ) -> _T:
        """``attempt`` failed with ``error``: if another process held the lock, try again until it lets go.

        Only a statement that changed nothing is tried again: autocommit, or the BEGIN itself.
        The connection has no busy handler of its own because SQLite's sleeps 1, 2, 5, 10, 15 ms
        between tries, while a samekey write holds the lock for ~50 µs: on a journal shared by
        worker processes, one write in 40 waited 1 ms or more. Polled here from 50 µs, doubling
        to 2 ms, for up to lock_timeout.
        """
        pause, deadline = BUSY_FIRST_PAUSE, time.monotonic() + self.lock_timeout
        while _is_busy(error) and not conn.in_transaction:
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(2 * pause, BUSY_MAX_PAUSE)
            try:
                return attempt(conn)
            except sqlite3.OperationalError as exc:
                error = exc
        raise error

    def _sync_wal(self) -> None:
        """Make every committed frame of the WAL durable (called with the connection lock held)."""
        fd = self._wal_fd
        if fd is None or os.fstat(fd).st_nlink == 0:  # first time, or the WAL was deleted and made anew
            if fd is not None:
                os.close(fd)
                self._wal_fd = None
            wal = self._opened_file("-wal")
            try:
                fd = os.open(wal, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:  # no WAL: everything is in the main file, synced by SQLite
                return
            if os.name == "posix":  # Windows cannot open a folder; NTFS journals the new entry itself
                folder = os.open(wal.parent, os.O_RDONLY | _O_CLOEXEC)
                try:  # the WAL's own directory entry must survive a power cut too, as SQLite FULL does
                    os.fsync(folder)
                finally:
                    os.close(folder)
            self._wal_fd = fd
        _sync_data(fd)

    def _read(self, sql: str, params: tuple[object, ...], doing: str) -> list[tuple[object, ...]]:
        if self._pid != PROCESS.pid:
            self._forked()
        with self._lock:
            conn = self._conn
            if conn is None:
                raise self._fail("it is closed", "Use the journal inside the client's lifetime.")
            try:
                try:
                    return conn.execute(sql, params).fetchall()
                except sqlite3.OperationalError as exc:
                    return self._when_free(conn, lambda c: c.execute(sql, params).fetchall(), exc)
            except sqlite3.Error as exc:
                raise self._classify(exc, doing) from exc

    # -- JournalStore -------------------------------------------------------------------

    def claim(self, intent: Intent, owner: str, lease_seconds: float, now: float) -> ClaimResult:
        return self._run(self._claim_job(intent, owner, lease_seconds, now))

    def record_attempt(
        self, operation: str, owner: str, attempts: int, error: str | None, lease_seconds: float, now: float
    ) -> None:
        self._run(self._record_attempt_job(operation, owner, attempts, error, lease_seconds, now))

    def complete(
        self,
        operation: str,
        owner: str,
        attempts: int,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> None:
        self._run(self._complete_job(operation, owner, attempts, status, headers, body, now))

    def release(self, operation: str, owner: str, attempts: int, error: str | None, now: float) -> None:
        self._run(self._release_job(operation, owner, attempts, error, now))

    def run_batch(self, calls: Sequence[JournalCall]) -> list[Outcome]:
        """Run several calls at once, all their writes in ONE group commit (`BatchingStore`).

        The async clients' journal thread uses it to serve every task waiting on the journal
        with one transaction.
        """
        outcomes: list[Outcome] = [(None, None)] * len(calls)
        jobs: list[tuple[int, _Job[Any]]] = []
        for i, call in enumerate(calls):
            try:
                job = self._job_for(call)
                if job is not None:
                    jobs.append((i, job))
                else:
                    outcomes[i] = (call.run(self), None)
            except Exception as exc:
                outcomes[i] = (None, exc)
        if jobs:
            self._submit([job for _, job in jobs])
            for i, job in jobs:
                outcomes[i] = (job.result, job.error)
        return outcomes

    def _job_for(self, call: JournalCall) -> _Job[Any] | None:
        """The write ``call`` makes, as a job to batch; None for a call that runs on its own."""
        if isinstance(call, Claim):
            return self._claim_job(call.intent, call.owner, call.lease_seconds, call.now)
        if isinstance(call, RecordAttempt):
            return self._record_attempt_job(
                call.operation, call.owner, call.attempts, call.error, call.lease_seconds, call.now
            )
        if isinstance(call, Complete):
            return self._complete_job(
                call.operation, call.owner, call.attempts, call.status, call.headers, call.body, call.now
            )
        if isinstance(call, Release):
            return self._release_job(call.operation, call.owner, call.attempts, call.error, call.now)
        if isinstance(call, FillReserved):
            return self._fill_reserved_job(call.intent, call.owner, call.now)
        return None

    def _claim_job(self, intent: Intent, owner: str, lease_seconds: float, now: float) -> _Job[ClaimResult]:
        expires = now + lease_seconds

        def job(conn: sqlite3.Connection) -> ClaimResult:
            cur = conn.execute(
                f"INSERT INTO operations ({COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, NULL, 0, NULL, NULL, NULL, NULL, ?, ?) "
                "ON CONFLICT (operation) DO NOTHING",
                insert_params(intent, owner, now, expires),
            )
            if cur.rowcount == 1:
                return ClaimResult("created", new_record(intent, owner, now, expires))
            if not conn.in_transaction:  # ran in autocommit: read and update under the write lock
                conn.execute("BEGIN IMMEDIATE")
                return job(conn)
            row = conn.execute(f"SELECT {COLUMNS} FROM operations WHERE operation = ?", (intent.operation,)).fetchone()
            record = record_from_row(row)
            decision = lease_decision(record, owner, now)
            if decision != "claimed":
                return ClaimResult(decision, record)
            conn.execute(
                "UPDATE operations SET lease_owner = ?, lease_expires = ?, updated_at = ? WHERE operation = ?",
                (owner, expires, now, intent.operation),
            )
            return ClaimResult("claimed", with_lease(record, owner, expires, now))

        return _Job(job, f"recording operation {intent.operation!r}", True)

    def _record_attempt_job(
        self, operation: str, owner: str, attempts: int, error: str | None, lease_seconds: float, now: float
    ) -> _Job[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE operations SET attempts = ?, last_error = ?, updated_at = ?, lease_expires = ? "
                "WHERE operation = ? AND lease_owner = ? AND state = 'pending'",
                (attempts, error, now, now + lease_seconds, operation, owner),
            )

        return _Job(job, f"updating operation {operation!r}", False)

    def _complete_job(
        self,
        operation: str,
        owner: str,
        attempts: int,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> _Job[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE operations SET state = 'completed', completed_at = ?, updated_at = ?, attempts = ?, "
                "last_error = NULL, response_status = ?, response_headers = ?, response_body = ?, "
                "lease_owner = NULL, lease_expires = NULL WHERE operation = ? AND state = 'pending'",
                (now, now, attempts, status, headers_to_json(headers), body, operation),
            )

        return _Job(job, f"completing operation {operation!r}", False)

    def _release_job(self, operation: str, owner: str, attempts: int, error: str | None, now: float) -> _Job[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE operations SET attempts = max(attempts, ?), last_error = coalesce(?, last_error), "
                "updated_at = ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE operation = ? AND lease_owner = ? AND state = 'pending'",
                (attempts, error, now, operation, owner),
            )

        return _Job(job, f"updating operation {operation!r}", False)

    def fill_reserved(self, intent: Intent, owner: str, now: float) -> bool:
        """Write the request into a record `key_for` reserved (method ''), under ``owner``'s lease.

        Its key's life (``created_at``, against ``key_ttl``) starts now: no server has seen it yet.
        False when there is no such record: it was filled, forgotten or taken over meanwhile.
        """
        return self._run(self._fill_reserved_job(intent, owner, now))

    def _fill_reserved_job(self, intent: Intent, owner: str, now: float) -> _Job[bool]:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE operations SET method = ?, url = ?, fingerprint = ?, request_headers = ?, "
                "request_body = ?, created_at = ?, updated_at = ? "
                "WHERE operation = ? AND lease_owner = ? AND state = 'pending' AND method = ''",
                (
                    intent.method, intent.url, intent.fingerprint, request_headers_json(intent.request_headers),
                    intent.request_body, now, now, intent.operation, owner,
                ),
            )  # fmt: skip
            return cur.rowcount == 1

        return _Job(job, f"recording the request of operation {intent.operation!r}", True)

    def get(self, operation: str) -> OperationRecord | None:
        rows = self._read(f"SELECT {COLUMNS} FROM operations WHERE operation = ?", (operation,), "reading")
        return record_from_row(rows[0]) if rows else None

    def pending(self, prefix: str | None = None) -> list[OperationRecord]:
        return self.records(prefix, include_completed=False)

    def records(
        self, prefix: str | None = None, *, include_completed: bool = True, bodies: bool = True
    ) -> list[OperationRecord]:
        """Records in creation order. ``bodies=False`` leaves their headers and bodies empty: a
        listing of many records (`samekey list` after an outage) reads no more than it shows."""
        where, params = [], []
        if not include_completed:
            where.append("state = 'pending'")
        if prefix:
            where.append("operation >= ? AND operation < ?")
            params += [prefix, prefix + "\U0010ffff"]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        columns = COLUMNS if bodies else _SUMMARY_COLUMNS
        rows = self._read(
            f"SELECT {columns} FROM operations{clause} ORDER BY created_at, operation", tuple(params), "listing"
        )
        return [record_from_row(r) for r in rows]

    def forget(self, operation: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM operations WHERE operation = ?", (operation,)).rowcount == 1

        return self._write(f"forgetting operation {operation!r}", job)

    def purge_completed(self, older_than: float, now: float, limit: int | None = None) -> int:
        """Delete completed records finished more than ``older_than`` seconds ago (the oldest
        first, at most ``limit``). Never pending ones. A big backlog goes in transactions of
        PURGE_CHUNK records, so other writers get the lock in between and the WAL stays small."""
        cutoff = now - older_than

        def delete_oldest(size: int) -> int:
            def job(conn: sqlite3.Connection) -> int:
                return conn.execute(
                    "DELETE FROM operations WHERE rowid IN (SELECT rowid FROM operations "
                    "WHERE state = 'completed' AND completed_at < ? ORDER BY completed_at LIMIT ?)",
                    (cutoff, size),
                ).rowcount

            # not durable: a purge lost in a crash is simply done again by the next one
            return self._write("purging completed operations", job, durable=False)

        return purge_in_chunks(delete_oldest, limit)

    def close(self) -> None:
        if self._pid != PROCESS.pid:
            self._forked(reopen=False)
        with self._lock:
            if self._checkpoints is not None:
                self._checkpoints.join()  # before the last connection closes (and removes the WAL)
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                if self.read_only:
                    self._drop_side_files()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = ", read_only=True" if self.read_only else ""
        return f"Journal({self.location!r}, durability={self.durability!r}{extra})"


BUSY_FIRST_PAUSE = 0.00005  # seconds: see Journal._when_free
BUSY_MAX_PAUSE = 0.002
_SQLITE_BUSY = 5


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the lock (and only that: a full disk is no wait)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return "database is locked" in str(error)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


# -- fork: no thread may be inside SQLite on a journal's connection while the process forks ------
# The child would inherit that connection's mutex held (closing it there would wait forever) or a
# transaction half done. So a fork takes every open journal's connection lock first, waiting for a
# call in progress to end, and lets go of it on both sides.

_JOURNALS: weakref.WeakSet[Journal] = weakref.WeakSet()
_JOURNALS_LOCK = threading.Lock()  # held across a fork too, so the child's copy is never taken
_HELD_AT_FORK: list[threading.Lock] = []  # the lock objects taken: _forked() may swap a journal's
_BUSY_AT_FORK: list[Journal] = []
_REGISTRY_HELD: list[bool] = []  # whether _before_fork got _JOURNALS_LOCK
_ABANDONED: list[sqlite3.Connection] = []  # a forked child's unusable copies, kept from their close


def _before_fork() -> None:
    # bounded: held only for an add, but a signal handler forking in the middle of one must not hang
    _REGISTRY_HELD.append(_JOURNALS_LOCK.acquire(timeout=FORK_WAIT_EXTRA))
    for journal in list(_JOURNALS):
        _hold_at_fork(journal, journal._lock, journal._fork_wait)
        checkpoints = journal._checkpoints
        if checkpoints is not None:  # a checkpoint thread inside SQLite may hold its global mutex
            deadline = time.monotonic() + journal._fork_wait
            thread = checkpoints.thread  # no new one starts while the connection lock is held
            if thread is not None:  # let it end, not only leave SQLite: a process forked with another
                thread.join(journal._fork_wait)  # thread alive gets Python 3.12+'s DeprecationWarning
            _hold_at_fork(journal, checkpoints.lock, max(0.0, deadline - time.monotonic()))


def _hold_at_fork(journal: Journal, lock: threading.Lock, wait: float) -> None:
    if lock.acquire(timeout=wait):
        _HELD_AT_FORK.append(lock)
    elif not journal._forked_in_use:  # stuck past every lock wait (or held by this very thread,
        journal._forked_in_use = True  # a signal handler forking)
        _BUSY_AT_FORK.append(journal)


def _after_fork(*, child: bool) -> None:
    try:
        for lock in _HELD_AT_FORK:
            with contextlib.suppress(RuntimeError):  # never skip the others (and the registry lock)
                lock.release()
        if not child:
            for journal in _BUSY_AT_FORK:
                journal._forked_in_use = False
    finally:
        _HELD_AT_FORK.clear()
        _BUSY_AT_FORK.clear()
        if _REGISTRY_HELD.pop():
            _JOURNALS_LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=functools.partial(_after_fork, child=False),
        after_in_child=functools.partial(_after_fork, child=True),
    )


def _abandon(conn: sqlite3.Connection) -> None:
    """Keep ``conn`` from ever being closed in this process, even when the interpreter exits."""
    _ABANDONED.append(conn)
    with contextlib.suppress(ImportError, AttributeError, OSError):  # CPython: one reference never given back
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # 0 on Windows, where handles are not inherited anyway


def _sync_data(fd: int) -> None:
    """The strongest data sync the platform has for one file (looked up per call, for tests)."""
    full = getattr(fcntl, "F_FULLFSYNC", None) if fcntl is not None else None
    if full is not None:  # macOS: a plain fsync leaves the data in the drive's volatile cache
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:  # a filesystem without it (e.g. a network mount)
            pass
    sync = getattr(os, "fdatasync", None) or os.fsync  # no fdatasync on macOS and Windows
    sync(fd)

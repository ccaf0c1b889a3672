"""Opening a SQLite journal file: creating it private, checking what it is, setting up its schema.

A journal is created 0600 (in 0700 folders) before SQLite opens it, since SQLite copies
the file's mode to its -wal and -shm; an existing one (and its -wal/-shm) loses any group
and other access, or is refused when this process cannot take it away. What is not a
regular file (``/dev/null``, a pipe) is refused before SQLite runs. A file is used only when its
header says it is a samekey journal (application_id, and a schema version this samekey reads);
anything else (another application's database, random bytes, a newer samekey's journal) is refused
and left untouched, -wal included: `_close_untouched` keeps a refused file's WAL from being
folded in by the close. A fresh file gets its schema, or an older one its forward
migrations, in one transaction under the write lock, so a crash half-way leaves it as it
was and processes opening it together set it up once.

Read-only (`samekey list/show`) creates and changes nothing: a reader of a WAL database
needs the -shm, which it creates if missing - impossible in a folder it may not write.
With no -wal holding recent writes the main file alone is the whole journal and is read
as immutable; otherwise that is an error. Empty -wal/-shm it made are removed at close.

Errors are JournalErrors that say what to do (`classify`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from ._errors import JournalError, JournalLocked

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "JournalFile"]

SCHEMA_VERSION = 1
APPLICATION_ID = 0x534B4A31  # "SKJ1": marks a file as a samekey journal
# bytes; a journal's rows are small, and a commit writes (and "fsync" syncs) whole pages:
# 1 KiB pages cut a claim's sync by ~8% (benchmarks/results/perf-notes.md)
PAGE_SIZE = 1024


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
    lease_expires    REAL,
    settled_note     TEXT,
    checksum         TEXT
);
CREATE INDEX operations_pending ON operations (created_at, operation) WHERE state = 'pending';
CREATE INDEX operations_completed ON operations (completed_at) WHERE state = 'completed';
CREATE INDEX operations_created ON operations (created_at, operation);
"""

# Forward migrations: MIGRATIONS[n] upgrades a journal from version n to n + 1.
MIGRATIONS: dict[int, str] = {}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # statements separated by ';' (no ';' inside literals), run in the caller's transaction
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


class JournalFile:
    """One journal file's path and how to open it; the connection is the store's."""

    def __init__(
        self, path: Path, *, lock_timeout: float, read_only: bool, autocheckpoint: int | None
    ) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.read_only = read_only
        self.autocheckpoint = autocheckpoint  # pages; None: SQLite's default
        self._made_side_files = False  # read_only: the -wal/-shm were not there before it opened

    def fail(self, problem: str, fix: str) -> JournalError:
        return JournalError(self.path, problem, fix)

    def _prepare_file(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            # a dangling symlink (a state folder
            # linked to a volume): create its target, as for the file
            folder = Path(os.path.realpath(folder))
            try:
                # every missing folder 0700, not only the last (mkdir -p makes parents with the
                # umask's mode): a world-writable parent would let another user swap the journal
                # folder
                for missing in reversed([folder, *(p for p in folder.parents if not p.exists())]):
                    missing.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise self.fail(
                    f"cannot create its folder ({exc.strerror})",
                    "Choose a writable location with journal=PATH.",
                ) from exc
        if self.path.is_dir():
            raise self.fail("this is a folder, not a file", "Pass the path of a file inside it.")
        if self.path.exists():
            self._make_private()
        else:
            # a dangling symlink (a dotfiles-managed state folder, a volume): O_EXCL refuses the
            # link itself, so create its target, or SQLite would create it with the umask's 0644
            target = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
            try:  # create it private before SQLite opens it; SQLite copies the mode to -wal/-shm
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise self.fail(
                    f"cannot create the file ({exc.strerror})",
                    "Check the folder's permissions or choose another path with journal=PATH.",
                ) from exc

    def _make_private(self) -> None:
        """Refuse what is not a regular file; take group and other access away from the journal.

        SQLite writes ``<path>-journal``/``-wal``/``-shm`` beside whatever it is given
        (``/dev/null`` left a world-writable ``/dev/null-journal``), and copies the main file's mode
        to them: so the main file is made 0600-like first, then any -wal/-shm already there.
        """
        real = Path(os.path.realpath(self.path))
        try:
            kind = real.stat().st_mode
        except OSError as exc:
            raise self.fail(f"cannot read its status ({exc.strerror})", "Check the path.") from exc
        if not stat.S_ISREG(kind):
            raise self.fail(
                "this is not a regular file (a device, a pipe or a socket)",
                "Point journal= at a file (it is created if missing), e.g. "
                "journal='payments.sqlite3'.",
            )
        for file in (real, self.side_file("-wal"), self.side_file("-shm")):
            self._tighten(file)

    def _tighten(self, file: Path) -> None:
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            return
        if not mode & 0o077:
            return
        try:
            os.chmod(file, mode & 0o700)
        except OSError as exc:
            raise self.fail(
                f"{file.name} can be read or written by other users (mode {mode:04o}) "
                "and this process "
                f"cannot change that ({exc.strerror})",
                f"Run `chmod 600 {file}` as its owner, or use a journal this process owns.",
            ) from exc

    def _connect(self, target: str | Path, *, uri: bool = False) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                target,
                timeout=self.lock_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise self.fail(
                f"cannot open it ({exc})", "Check the path and its permissions."
            ) from exc

    def open(self) -> sqlite3.Connection:
        if self.read_only:
            try:
                conn = self._open_read_only()
            except BaseException:
                self.drop_side_files()
                raise
            with self._closing_on_error(conn):
                conn.execute(
                    "PRAGMA busy_timeout=0"
                )  # the store's lock waits poll instead (_group_commit)
            return conn
        self._prepare_file()
        conn = self._connect(self.path)
        with self._closing_on_error(conn):
            self._init_schema(conn)
            conn.execute(
                "PRAGMA busy_timeout=0"
            )  # from here on, the store's lock waits poll (_group_commit)
        return conn

    @contextlib.contextmanager
    def _closing_on_error(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Close ``conn`` on any error, turning
        SQLite's into a JournalError that says what to do."""
        try:
            yield
        except JournalError:
            self._close_untouched(conn)
            raise
        except sqlite3.OperationalError as exc:
            self._close_untouched(conn)
            raise self.classify(exc, "opening") from exc
        except sqlite3.DatabaseError as exc:
            self._close_untouched(conn)
            raise self.fail(
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
        the last, and cannot checkpoint itself (Python 3.11 has no
        SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE). With an empty -wal there is nothing to fold in: a plain
        close removes the -wal/-shm it made.
        """
        holder = None
        with contextlib.suppress(
            sqlite3.Error, OSError
        ):  # no -wal, or the file cannot be read: a plain close
            if self.side_file("-wal").stat().st_size > 0:
                holder = sqlite3.connect(
                    self._read_only_uri(), uri=True, isolation_level=None, check_same_thread=False
                )
                holder.execute(
                    "PRAGMA user_version"
                ).fetchone()  # a read: it holds the file from now on
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
            raise self.fail(
                "there is no journal file here",
                "Check the path (--journal PATH or $SAMEKEY_JOURNAL).",
            )
        self._made_side_files = not any(self.side_file(end).exists() for end in ("-wal", "-shm"))
        base = self._read_only_uri()
        conn = self._connect(base, uri=True)
        try:
            self._check_header(conn)
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            wal = self.side_file("-wal")
            if "locked" in str(exc).lower() and wal.exists() and wal.stat().st_size > 0:
                raise self.classify(
                    exc, "reading it"
                ) from exc  # a lock to wait out, not a permission
            if wal.exists() and wal.stat().st_size > 0:
                raise self.fail(
                    f"cannot read it without writing ({exc}), and {wal.name} holds "
                    "writes not yet in the main file",
                    "Run as the journal's owner, or where its folder is writable.",
                ) from exc
        except BaseException:
            with self._closing_on_error(conn):
                raise
        conn = self._connect(base + "&immutable=1", uri=True)
        with self._closing_on_error(conn):
            self._check_header(conn)
        return conn

    def side_file(self, suffix: str) -> Path:
        # SQLite follows a symlinked journal path and keeps -wal/-shm beside the real file
        return Path(f"{os.path.realpath(self.path)}{suffix}")

    def opened_file(self, conn: sqlite3.Connection | None, suffix: str) -> Path:
        # the file SQLite itself opened: a symlinked path may point elsewhere by now (a deploy
        # switching `current`), and its WAL is the one to sync
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                for _, name, file in conn.execute("PRAGMA database_list").fetchall():
                    if name == "main" and file:
                        return Path(f"{file}{suffix}")
        return self.side_file(suffix)

    def drop_side_files(self) -> None:
        """Remove the empty -wal/-shm a read-only connection made (SQLite cannot, read-only)."""
        try:
            empty = self.side_file("-wal").stat().st_size == 0
        except OSError:
            return
        if not (self._made_side_files and empty and os.access(self.path, os.W_OK)):
            return  # never a WAL holding writes, nor files that were there before it opened
        # SQLite deletes both when the last connection to the journal closes, deciding under its own
        # exclusive lock (so never while another process uses them): a plain connection that reads
        # once and closes lets it do so. Nothing to
        # checkpoint in an empty WAL: the file is unchanged.
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(
                self.path, timeout=1.0, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()

    def _check_header(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(application id, schema version), refusing
        a file that is not a journal this samekey reads."""
        conn.execute("BEGIN")  # one snapshot: another process may be creating the schema right now
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            if (
                conn.in_transaction
            ):  # SQLite rolls back by itself on some errors (no room for the -shm): keep that one
                conn.execute("COMMIT")
        if app_id != APPLICATION_ID and (tables or version or app_id):
            raise self.fail(
                "this SQLite file is not a samekey journal",
                "It was left untouched. Point journal= at another file.",
            )
        if version > SCHEMA_VERSION:
            raise self.fail(
                f"it was written by a newer samekey (schema {version}; this one reads up "
                f"to {SCHEMA_VERSION})",
                "It was left untouched. Upgrade samekey to use it.",
            )
        if self.read_only and (app_id, version) != (APPLICATION_ID, SCHEMA_VERSION):
            raise self.fail(
                f"it is empty or needs an upgrade (schema {version}, this samekey writes "
                f"{SCHEMA_VERSION})",
                "Open it once with write access (any samekey client or command does it).",
            )
        return app_id, version

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        app_id, version = self._check_header(conn)
        if (app_id, version) == (0, 0):
            # a new file (WAL fixes the page size once on): a claim's commit touches ~6 pages
            # (the row, three indexes, the answer it takes along), and "fsync" syncs them all
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._use_wal(conn)
        # NORMAL in both modes: SQLite syncs only around checkpoints, which keeps the file
        # consistent through a power cut (OFF could corrupt it, losing every pending key);
        # durable writes get the store's own WAL sync (_wal)
        conn.execute("PRAGMA synchronous=NORMAL")
        if self.autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint}")
        if app_id == APPLICATION_ID and version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._create_or_migrate(conn)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # switching to WAL can fail at once with "locked" (no busy wait) while another process opens
        # the same new file: retry it within lock_timeout
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        """The schema, or the migrations up to it, in the caller's transaction (write lock held)."""
        # re-read under the write lock: another process may have just set it up
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            _run_script(conn, _SCHEMA)
            version = 1
        while version < SCHEMA_VERSION:
            try:
                _run_script(conn, MIGRATIONS[version])
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise
                raise self.fail(
                    f"upgrading it from schema {version} to {version + 1} failed ({exc})",
                    "The upgrade was rolled back and the file left as it was; report "
                    "this as a samekey bug.",
                ) from exc
            version += 1

    def classify(self, exc: sqlite3.Error, doing: str) -> JournalError:
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return JournalLocked(
                self.path,
                f"locked by another process for more than {self.lock_timeout:g} s while {doing}",
                "Another samekey process may be stuck; retry, or raise lock_timeout.",
            )
        if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
            return self.fail(
                f"not writable while {doing} ({text})",
                "Make the file and its folder writable, or choose another path with journal=PATH.",
            )
        if "full" in lowered:
            return self.fail(
                f"the disk is full while {doing}", "Free some space; nothing was sent."
            )
        if "malformed" in lowered or "not a database" in lowered:
            return self.fail(
                f"the file is corrupt ({text})",
                "It was left untouched. Move it aside (keep it: it may hold pending keys) "
                "or point journal= at another file.",
            )
        return self.fail(
            f"SQLite error while {doing} ({text})", "Check the file, its folder and the disk."
        )

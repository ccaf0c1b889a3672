"""The journal's write-ahead log: made durable after a commit, copied back off the request path.

Durability. SQLite runs with ``synchronous=NORMAL``: it syncs only around checkpoints,
which keeps the file consistent through a power cut. In "fsync" mode the store adds its
own data sync of the WAL after a commit that holds a durable write (a claim): the same
guarantee as ``synchronous=FULL`` for those, while completions and purges commit with no
sync at all. `WalSync` keeps the WAL's descriptor open for that, syncs the WAL's folder
once when the file is new (its directory entry must survive a power cut too), and uses
the strongest sync the platform has (F_FULLFSYNC on macOS, fdatasync, else fsync).

Checkpoints. SQLite's own auto-checkpoint runs inside the commit that takes the WAL past
1,000 pages: that one request pays the copy into the main file and two syncs. In
"process" mode the store leaves that to a `Checkpointer` instead: it counts the records
commits write and, every CHECKPOINT_EVERY, a thread that lives for one checkpoint copies
the WAL on a connection of its own (PASSIVE while writers go on, at the lowest CPU priority,
then a short FULL at the normal one so the WAL starts over). Nothing stays behind to join at
close or to copy into a fork. In "fsync" mode each claim has synced the WAL already, so
SQLite's checkpoint is cheap and a concurrent one would only compete with the claims' syncs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CHECKPOINT_EVERY", "FALLBACK_AUTOCHECKPOINT", "Checkpointer", "WalSync", "sync_data"]

# records written (a claim or a completion writes 1-3 pages): a WAL of ~4 MB at most. Each
# checkpoint opens two connections and syncs the files twice: every 200 records it cost the
# async journal ~77k instructions an operation on its thread, every 1,000 ~6k
CHECKPOINT_EVERY = 1000
FULL_TRIES = 4  # a busy one gives up at once; the next checkpoint tries again anyway
FULL_RETRY_PAUSE = 0.002  # seconds
# the writer still checkpoints by itself past this many WAL pages (8 MB of 1 KiB pages): a bound
# on the WAL if the background checkpoints cannot keep up (a reader pinning an old snapshot, a
# slow disk)
FALLBACK_AUTOCHECKPOINT = 8000

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # 0 on Windows, where handles are not inherited anyway


def sync_data(fd: int) -> None:
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


class WalSync:
    """Makes every committed frame of one WAL durable (called with the connection lock held)."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def sync(self, wal: Callable[[], Path]) -> None:
        """Sync the WAL; ``wal`` names the file SQLite has open, asked only when it is new."""
        fd = self.fd
        if (
            fd is None or os.fstat(fd).st_nlink == 0
        ):  # first time, or the WAL was deleted and made anew
            self.close()
            fd = self._open(wal())
            if fd is None:  # no WAL: everything is in the main file, synced by SQLite
                return
        sync_data(fd)

    def _open(self, wal: Path) -> int | None:
        try:
            fd = os.open(wal, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.name == "posix":  # Windows cannot open a folder; NTFS journals the new entry itself
            folder = os.open(wal.parent, os.O_RDONLY | _O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        self.fd = fd
        return fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class Checkpointer:
    """Copies the WAL into the main file from a thread that lives for one checkpoint only."""

    def __init__(self, database: str, wait: float) -> None:
        # mode=rw: never create a file where the journal was (moved aside, deleted); quoted as the
        # bytes the OS has (a POSIX path need not be UTF-8: surrogate escapes would not encode)
        self.uri = "file:" + urllib.parse.quote(os.fsencode(database)) + "?mode=rw"
        self.wait = wait  # how long close() waits for a checkpoint in progress
        self.lock = threading.Lock()  # held while the thread is inside SQLite: a fork waits for it
        self.thread: threading.Thread | None = None
        self.written = 0  # records written since the last checkpoint started

    def committed(self, records: int) -> None:
        """Count a commit's records; start a checkpoint every CHECKPOINT_EVERY records.

        Called with the connection lock held."""
        self.written += records
        if self.written < CHECKPOINT_EVERY or (self.thread is not None and self.thread.is_alive()):
            return  # one at a time: the next commit tries again
        self.written = 0
        thread = threading.Thread(target=self._checkpoint, name="samekey-checkpoint", daemon=True)
        with contextlib.suppress(
            RuntimeError
        ):  # no thread to be had (interpreter exiting): SQLite's fallback
            thread.start()
            self.thread = thread

    def _checkpoint(self) -> None:
        # a checkpoint not done now is done by the next
        with self.lock, contextlib.suppress(Exception):
            # the bulk at the lowest CPU priority, on a thread of its own: nice cannot be undone,
            # and the short FULL holds the writers' lock, which a thread at nice 19 on a busy
            # machine could keep for milliseconds while descheduled (every request waiting)
            bulk = threading.Thread(
                target=self._in_the_background, name="samekey-checkpoint", daemon=True
            )
            bulk.start()
            bulk.join()
            self._finish()

    def _in_the_background(self) -> None:
        with contextlib.suppress(Exception):
            # Linux only: elsewhere (macOS, the BSDs) setpriority takes that id for a process id
            if sys.platform.startswith("linux") and hasattr(os, "setpriority"):
                # the lowest CPU priority: on a busy machine the requests go first, the copy waits
                with contextlib.suppress(
                    OSError
                ):  # refused (a sandbox): the copy is done all the same
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            self._copy()

    def _connect(self) -> sqlite3.Connection:
        # timeout=0: SQLite's busy handler would sleep 1, 2, 5, 10 ms while FULL holds the writers
        # off (a reader of an older snapshot, `samekey list`); each try gives up at once instead
        conn = sqlite3.connect(
            self.uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
        )
        conn.execute(
            "PRAGMA synchronous=NORMAL"
        )  # syncs the WAL, then the main file (OFF would not)
        return conn

    def _copy(self) -> None:
        conn = self._connect()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # the bulk, writers going on
        finally:
            # never the last connection: the writer's stays open until close() joins this
            conn.close()

    def _finish(self) -> None:
        # the few frames left over, writers held off briefly: only a WAL copied to its end
        # starts over at the next commit (instead of growing)
        conn = self._connect()
        try:
            for _ in range(FULL_TRIES):
                busy, _frames, _copied = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
                if not busy:
                    break
                time.sleep(
                    FULL_RETRY_PAUSE
                )  # a writer mid-commit, or a reader still on an old snapshot
        finally:
            conn.close()

    def join(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.join(self.wait)

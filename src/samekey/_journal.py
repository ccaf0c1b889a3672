"""`Journal`: the journal in a local SQLite file, shared safely by threads and processes.

Why a record exists before the first byte is sent: if the process dies after the
server acted but before the answer arrived, the next run must find the same key and
send it again, so the server replays its answer instead of acting twice.

A record is *pending* from `claim` until `complete`; a pending record carries a lease
(owner, expiry) so only one caller at a time executes it, and a caller that was killed
loses the lease when it expires. Completed records keep the server's answer for replay.

This module is the store itself: its SQL, as jobs for the group commit, and the
`JournalStore` methods. One connection per process, guarded by ``_lock``. The rest is
beside it, one concern a module: opening the file and its schema (`_sqlite_open`),
batching writers into one transaction (`_group_commit`), the WAL's sync and checkpoints
(`_wal`), completions queued off the caller's path (`_deferred`), and what a fork must
wait for (`_sqlite_fork`). A forked child never uses the parent's connection: its first
call closes that copy (idle, as the fork waited for it) and opens its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from math import inf
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import _sqlite_fork
from ._contract import (
    BatchingStore,
    Claim,
    ClaimResult,
    Complete,
    FillReserved,
    Intent,
    JournalCall,
    ListingStore,
    ListQuery,
    OperationRecord,
    Outcome,
    QueueingStore,
    RecordAttempt,
    Release,
    ReservingStore,
    SettleResult,
    SettlingStore,
    lease_decision,
    new_record,
    settle_result,
    settled_answer,
    with_lease,
)
from ._deferred import Deferred, flush_at
from ._errors import JournalError
from ._group_commit import GroupCommit, Job, refuse, run_batch, wake, when_free
from ._identity import PROCESS
from ._location import default_journal_path, refuse_dsn_as_path
from ._lock_budget import LockBudgets
from ._rows import (
    COLUMNS,
    SETTLE_SET,
    checksum,
    headers_to_json,
    insert_params,
    page_filters,
    purge_in_chunks,
    record_from_row,
    request_headers_json,
    summary_columns,
)
from ._sqlite_open import JournalFile
from ._wal import FALLBACK_AUTOCHECKPOINT, Checkpointer, WalSync

__all__ = ["Journal"]

Durability = Literal["fsync", "process"]

_SUMMARY_COLUMNS = summary_columns("X''")
# A prefix matched by more records than this is listed by walking the (created_at, operation)
# index and testing the prefix in it; fewer are read through the primary key and sorted.
_PREFIX_PROBE = 5000

_T = TypeVar("_T")


class Journal:
    """The embedded journal: one SQLite file, shared safely by threads and processes.

    ``durability="fsync"`` (default) makes a new record survive power loss before the
    request is sent; ``"process"`` survives a killed process (the OS still holds the
    write) but not a power cut, and is faster. A completion is written after the caller
    has its answer, with the next write or within milliseconds (`_deferred`), and never pays
    an fsync of its own: losing one only means the next run replays via the server.
    """

    completes_later = True  # `QueueingStore`: a completion is queued (see _deferred)

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durability: Durability = "fsync",
        lock_timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        _check_options(durability, lock_timeout)
        refuse_dsn_as_path(path)
        # absolute once, here: a later os.chdir (a daemon, a task runner) must neither point the
        # WAL sync at a missing file nor let a forked child reopen another, empty journal
        # (absolute(), not resolve(): `..` after a symlinked folder means what the OS says)
        self.path = _absolute(path)
        self.location = str(self.path)
        self.durability: Durability = durability
        self.lock_timeout = float(lock_timeout)
        # for inspection (`samekey list/show`): creates and changes nothing
        self.read_only = bool(read_only)
        # checkpoints off the request path in "process" mode only (see _wal)
        self._checkpoints_off_path = durability == "process" and not self.read_only
        self._file = JournalFile(
            self.path,
            lock_timeout=self.lock_timeout,
            read_only=self.read_only,
            autocheckpoint=FALLBACK_AUTOCHECKPOINT if self._checkpoints_off_path else None,
        )
        self._lock = threading.Lock()  # guards the connection
        self._commits = GroupCommit()
        self._budgets = LockBudgets(self.lock_timeout)  # one request's lock waits in all
        self._wal = WalSync()
        self._conn: sqlite3.Connection | None = None
        self._pid = PROCESS.pid  # the process that opened the connection
        # how long a fork waits for a call in another thread to leave the connection (_sqlite_fork):
        # a busy wait for the write lock, then one for BEGIN IMMEDIATE, then an fsync
        self._fork_wait = 2 * self.lock_timeout + _sqlite_fork.FORK_WAIT_EXTRA
        # forked while another thread held the connection past _fork_wait
        self._forked_in_use = False
        self._checkpoints: Checkpointer | None = None  # made once the file is open
        self._later = Deferred(self.location, self.flush)  # completions (see _deferred)
        _sqlite_fork.register(self)
        with self._lock:  # a fork meanwhile waits for the open to end
            self._open()

    def _open(self) -> None:
        self._conn = self._file.open()
        if self._checkpoints_off_path:
            self._checkpoints = Checkpointer(
                str(self._file.opened_file(self._conn, "")), self._fork_wait
            )

    # -- errors -------------------------------------------------------------------------

    def _fail(self, problem: str, fix: str) -> JournalError:
        return self._file.fail(problem, fix)

    def _classify(self, exc: sqlite3.Error, doing: str) -> JournalError:
        return self._file.classify(exc, doing)

    def _interrupted(self, job: Job[Any]) -> JournalError:
        return self._fail(
            f"the commit holding this write was interrupted while {job.doing}",
            "It may not have been written; run the call again (a pending operation keeps its key).",
        )

    def _not_durable(self, job: Job[Any], exc: OSError) -> JournalError:
        return self._fail(
            f"the disk failed to make a record durable while {job.doing} ({exc.strerror})",
            "Nothing was sent. Check the disk; the journal file was left as it is.",
        )

    # -- plumbing -----------------------------------------------------------------------

    def _write(
        self, doing: str, fn: Callable[[sqlite3.Connection], _T], *, durable: bool = True
    ) -> _T:
        return self._run(Job(fn, doing, durable))

    def _run(self, job: Job[_T]) -> _T:
        if self._pid != PROCESS.pid:
            self._forked()
        self._commits.submit([job], self)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _run_owned(self, owner: str, job: Job[_T], *, last: bool) -> _T:
        """Run a write of ``owner``'s request, within
        what is left of its lock_timeout (`_lock_budget`)."""
        job.patience = self._budgets.left(owner)
        try:
            return self._run(job)
        finally:
            self._budgets.spend(owner, job.waited, last=last)

    def _check_process(self) -> None:
        if self._pid != PROCESS.pid:
            self._forked()

    def _forked(self, *, reopen: bool = True) -> None:
        """In a forked child: drop the connection copied from the parent, open one of our own.

        SQLite forbids using a connection across fork(): the child does not hold the parent's
        POSIX locks, so writing through it could corrupt the journal. It is closed at once,
        while the parent still has the journal open (so SQLite leaves the files alone), and it
        is idle: the fork waited for any call on it to end (_sqlite_fork). The locks and the
        queue may have been copied mid-use by another thread: made anew.
        """
        self._lock = threading.Lock()
        self._commits = GroupCommit()
        self._checkpoints = None  # its thread, if any, stayed in the parent
        self._later = Deferred(self.location, self.flush)  # the parent writes its own
        inherited, self._conn = self._conn, None
        self._wal.close()  # the child's copy of the descriptor
        if self._forked_in_use:
            self._refuse_in_child(inherited, reopen)
            return
        self._pid = PROCESS.pid
        if inherited is not None:
            with contextlib.suppress(sqlite3.Error):
                inherited.close()
            if reopen:
                with self._lock:
                    self._open()

    def _refuse_in_child(self, inherited: sqlite3.Connection | None, reopen: bool) -> None:
        # Another thread was inside SQLite through the fork: closing its connection would wait
        # forever on the mutex copied held, or undo the parent's half-done transaction in the
        # shared WAL index. Never closed then, and no new connection either: it would share the
        # copied lock state and hold no real lock. Every call says so (_pid kept).
        if inherited is not None:
            _sqlite_fork.abandon(inherited)
        if reopen:
            raise self._fail(
                "this process was forked while another thread of its parent was writing to it, "
                f"for more than {self._fork_wait:g} s; SQLite cannot be used safely here",
                "Fork before the journal is in use, or start workers with the 'spawn' method.",
            )

    def _run_batch(self, batch: list[Job[Any]]) -> None:
        sync = self.durability == "fsync" and any(job.durable for job in batch)
        with self._lock:
            # the queued completions first, in the same transaction; they never make it wait
            later = self._later.take(patience=0.0)
            try:
                self._run_batch_locked(later + batch if later else batch, sync)
            finally:
                if later:
                    self._later.settle(later)
        wake(batch)

    def _run_batch_locked(self, batch: list[Job[Any]], sync: bool) -> None:
        """Run ``batch`` on the connection (its lock held), or refuse it, saying why."""
        conn = self._conn
        if conn is None:
            return refuse(
                batch,
                self._fail("it is closed", "Use the journal inside the client's lifetime."),
            )
        if self.read_only:
            return refuse(
                batch,
                self._fail(
                    "it was opened read_only=True",
                    "Open it without read_only to record operations.",
                ),
            )
        run_batch(conn, batch, self, sync=sync)

    def _committed(self, records: int, sync: bool) -> None:
        """After a commit that wrote ``records``
        (connection lock held): its sync, its checkpoint."""
        if sync:
            self._wal.sync(lambda: self._file.opened_file(self._conn, "-wal"))
        if self._checkpoints is not None:
            self._checkpoints.committed(records)

    def flush(self) -> None:
        """Write every answer this journal has queued now, rather than with its next write.

        A completion is queued when the call returns its answer (see `_deferred`); a process
        killed before it is written leaves the operation pending, which the next run sends
        with the same key and the server replays. Call this where a crash must not even do
        that, e.g. before acknowledging a queue message.
        """
        if self._later:
            self._run(Job(_nothing, "recording answers", False))

    def _read(self, sql: str, params: tuple[object, ...], doing: str) -> list[tuple[object, ...]]:
        self._check_process()
        flush_at(self.location)  # every completion this process has, written before we look
        with self._lock:
            conn = self._conn
            if conn is None:
                raise self._fail("it is closed", "Use the journal inside the client's lifetime.")
            try:
                try:
                    return conn.execute(sql, params).fetchall()
                except sqlite3.OperationalError as exc:
                    return when_free(
                        conn, lambda c: c.execute(sql, params).fetchall(), exc, self.lock_timeout
                    )
            except sqlite3.Error as exc:
                raise self._classify(exc, doing) from exc

    # -- JournalStore -------------------------------------------------------------------

    def claim(self, intent: Intent, owner: str, lease_seconds: float, now: float) -> ClaimResult:
        return self._run_owned(
            owner, self._claim_job(intent, owner, lease_seconds, now), last=False
        )

    def record_attempt(
        self,
        operation: str,
        owner: str,
        attempts: int,
        error: str | None,
        lease_seconds: float,
        now: float,
    ) -> None:
        job = self._record_attempt_job(operation, owner, attempts, error, lease_seconds, now)
        self._run_owned(owner, job, last=False)

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
        job = self._complete_job(operation, owner, attempts, status, headers, body, now)
        self._check_process()
        if self._conn is None or self.read_only:
            self._run_owned(owner, job, last=True)  # refused at once, saying why
            return
        self._budgets.spend(owner, 0.0, last=True)
        self._later.add(job)  # written with the next write (see _deferred)

    def release(
        self, operation: str, owner: str, attempts: int, error: str | None, now: float
    ) -> None:
        self._run_owned(owner, self._release_job(operation, owner, attempts, error, now), last=True)

    def run_batch(self, calls: Sequence[JournalCall]) -> list[Outcome]:
        """Run several calls at once, all their writes in ONE group commit (`BatchingStore`).

        The async clients' journal thread uses it to serve every task waiting on the journal
        with one transaction.
        """
        outcomes: list[Outcome] = [(None, None)] * len(calls)
        jobs: list[tuple[int, Job[Any]]] = []
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
            self._check_process()
            owned = [
                (job, calls[i].owner, isinstance(calls[i], (Complete, Release)))  # type: ignore[union-attr]
                for i, job in jobs
            ]
            for job, owner, _ in owned:
                job.patience = self._budgets.left(owner)
            try:
                self._commits.submit([job for _, job in jobs], self)
            finally:
                for job, owner, last in owned:
                    self._budgets.spend(owner, job.waited, last=last)
            for i, job in jobs:
                outcomes[i] = (job.result, job.error)
        return outcomes

    def _job_for(self, call: JournalCall) -> Job[Any] | None:
        """The write ``call`` makes, as a job to batch; None for a call that runs on its own."""
        if isinstance(call, Claim):
            return self._claim_job(call.intent, call.owner, call.lease_seconds, call.now)
        if isinstance(call, RecordAttempt):
            return self._record_attempt_job(
                call.operation, call.owner, call.attempts, call.error, call.lease_seconds, call.now
            )
        if isinstance(call, Release):
            return self._release_job(
                call.operation, call.owner, call.attempts, call.error, call.now
            )
        if isinstance(call, FillReserved):
            return self._fill_reserved_job(call.intent, call.owner, call.now)
        return None

    def _claim_job(
        self, intent: Intent, owner: str, lease_seconds: float, now: float
    ) -> Job[ClaimResult]:
        args = (intent, owner, now, now + lease_seconds, self.location)
        return Job(_claim, f"recording operation {intent.operation!r}", True, args=args)

    def _record_attempt_job(
        self,
        operation: str,
        owner: str,
        attempts: int,
        error: str | None,
        lease_seconds: float,
        now: float,
    ) -> Job[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE operations SET attempts = ?, last_error = ?, updated_at = ?, "
                "lease_expires = ? "
                "WHERE operation = ? AND lease_owner = ? AND state = 'pending'",
                (attempts, error, now, now + lease_seconds, operation, owner),
            )

        return Job(job, f"updating operation {operation!r}", False)

    def _complete_job(
        self,
        operation: str,
        owner: str,
        attempts: int,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> Job[None]:
        args = (now, attempts, status, headers, body, operation)
        return Job(_complete, f"completing operation {operation!r}", False, args=args)

    def _release_job(
        self, operation: str, owner: str, attempts: int, error: str | None, now: float
    ) -> Job[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE operations SET attempts = max(attempts, ?), last_error = "
                "coalesce(?, last_error), "
                "updated_at = ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE operation = ? AND lease_owner = ? AND state = 'pending'",
                (attempts, error, now, operation, owner),
            )

        return Job(job, f"updating operation {operation!r}", False)

    def fill_reserved(self, intent: Intent, owner: str, now: float) -> bool:
        """Write the request into a record `key_for` reserved (method ''), under ``owner``'s lease.

        Its key's life (``created_at``, against ``key_ttl``) starts now: no server has seen it yet.
        False when there is no such record: it was filled, forgotten or taken over meanwhile.
        """
        return self._run_owned(owner, self._fill_reserved_job(intent, owner, now), last=False)

    def _fill_reserved_job(self, intent: Intent, owner: str, now: float) -> Job[bool]:
        def job(conn: sqlite3.Connection) -> bool:
            headers = request_headers_json(intent.request_headers)
            cur = conn.execute(
                "UPDATE operations SET method = ?, url = ?, fingerprint = ?, request_headers = ?, "
                "request_body = ?, created_at = ?, updated_at = ?, checksum = ? "
                "WHERE operation = ? AND lease_owner = ? AND state = 'pending' AND "
                "method = '' AND key = ?",
                (
                    intent.method, intent.url, intent.fingerprint, headers, intent.request_body,
                    now, now,
                    checksum(intent, headers), intent.operation, owner, intent.key,
                ),
            )  # fmt: skip
            return cur.rowcount == 1

        return Job(job, f"recording the request of operation {intent.operation!r}", True)

    def get(self, operation: str) -> OperationRecord | None:
        rows = self._read(
            f"SELECT {COLUMNS} FROM operations WHERE operation = ?", (operation,), "reading"
        )
        return record_from_row(rows[0], self.location) if rows else None

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
            f"SELECT {columns} FROM operations{clause} ORDER BY created_at, operation",
            tuple(params),
            "listing",
        )
        return [record_from_row(r, self.location) for r in rows]

    def list_page(self, query: ListQuery) -> list[OperationRecord]:
        """`ListingStore`: one page of `samekey list`, its index chosen here (see `_index_for`)."""
        where, params = page_filters(query, "?")
        if query.prefix:
            where.append("operation >= ? AND operation < ?")
            params += [query.prefix, query.prefix + "\U0010ffff"]
        limit = -1 if query.limit is None else query.limit  # -1: no limit
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = (
            f"SELECT {_SUMMARY_COLUMNS} FROM operations INDEXED BY {self._index_for(query)}"
            f"{clause} ORDER BY created_at, operation LIMIT ?"
        )
        return [record_from_row(r) for r in self._read(sql, (*params, limit), "listing")]

    def _index_for(self, query: ListQuery) -> str:
        """The index a page is read through. SQLite has no statistics on a journal, and its own
        choice for a prefix (the primary key, then sort every match) is slow for a prefix
        most records share; walking the ordered index is slow for a rare one. Counting up to
        _PREFIX_PROBE matches first (a bounded walk of the primary key) tells them apart."""
        ordered = "operations_pending" if query.state == "pending" else "operations_created"
        if not query.prefix:
            return ordered
        ((found,),) = self._read(
            "SELECT count(*) FROM (SELECT 1 FROM operations WHERE operation >= ? AND "
            "operation < ? LIMIT ?)",
            (query.prefix, query.prefix + "\U0010ffff", _PREFIX_PROBE + 1),
            "listing",
        )
        by_key = "sqlite_autoindex_operations_1"  # the primary key's
        return ordered if int(found) > _PREFIX_PROBE else by_key  # type: ignore[call-overload]

    def settle(self, operation: str, status: int, note: str, now: float) -> SettleResult:
        """`SettlingStore`: complete a pending operation by hand, unless a live process holds it."""
        headers, body = settled_answer(status, note, now)

        def job(conn: sqlite3.Connection) -> SettleResult:
            changed = conn.execute(
                f"UPDATE operations SET {SETTLE_SET.replace('%s', '?')} "
                "WHERE operation = ? AND state = 'pending' "
                "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?)",
                (now, now, status, headers_to_json(headers), body, note, operation, now),
            ).rowcount
            select = f"SELECT {COLUMNS} FROM operations WHERE operation = ?"
            row = conn.execute(select, (operation,)).fetchone()
            return settle_result(changed == 1, None if row is None else record_from_row(row), now)

        return self._write(f"settling operation {operation!r}", job)

    def forget(self, operation: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("DELETE FROM operations WHERE operation = ?", (operation,)).rowcount
                == 1
            )

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

            # not durable: a purge lost in a crash is simply done again by the next one; not
            # patient: housekeeping never waits for the lock a request's claim then waits for in its
            # turn
            return self._run(Job(job, "purging completed operations", False, patience=0.0))

        return purge_in_chunks(delete_oldest, limit)

    def close(self) -> None:
        if self._pid != PROCESS.pid:
            self._forked(reopen=False)
        self._close_later()
        with self._lock:
            if self._checkpoints is not None:
                self._checkpoints.join()  # before the last connection closes (and removes the WAL)
            self._wal.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                if self.read_only:
                    self._file.drop_side_files()

    def _close_later(self) -> None:
        """Write the queued completions before the connection goes; say which could not be."""
        if self._later and self._conn is not None:
            with contextlib.suppress(Exception):  # settle() has logged why
                self.flush()
        self._later.close()
        self._later.report_left("the journal closed")

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = ", read_only=True" if self.read_only else ""
        return f"Journal({self.location!r}, durability={self.durability!r}{extra})"


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _absolute(path: str | os.PathLike[str] | None) -> Path:
    return Path(path).expanduser().absolute() if path is not None else default_journal_path()


def _check_options(durability: object, lock_timeout: object) -> None:
    if durability not in ("fsync", "process"):
        raise ValueError(f"durability must be 'fsync' or 'process', got {durability!r}")
    if (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, (int, float))
        or not 0 < lock_timeout < inf
    ):
        raise ValueError(
            f"lock_timeout must be a positive, finite number of seconds, got {lock_timeout!r}"
        )


if TYPE_CHECKING:  # the store contracts Journal keeps, checked by mypy
    _0: type[BatchingStore] = Journal
    _1: type[ListingStore] = Journal
    _2: type[ReservingStore] = Journal
    _3: type[SettlingStore] = Journal
    _4: type[QueueingStore] = Journal


# The two writes every request makes, as functions of their values (see Job.args).


def _claim(
    conn: sqlite3.Connection, intent: Intent, owner: str, now: float, expires: float, location: str
) -> ClaimResult:
    while True:
        cur = conn.execute(
            f"INSERT INTO operations ({COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, NULL, 0, NULL, NULL, NULL, "
            "NULL, ?, ?, NULL, ?) "
            "ON CONFLICT (operation) DO NOTHING",
            insert_params(intent, owner, now, expires),
        )
        if cur.rowcount == 1:
            return ClaimResult("created", new_record(intent, owner, now, expires))
        if conn.in_transaction:
            break
        conn.execute("BEGIN IMMEDIATE")  # ran in autocommit: again under the write lock
    row = conn.execute(
        f"SELECT {COLUMNS} FROM operations WHERE operation = ?", (intent.operation,)
    ).fetchone()
    record = record_from_row(row, location)
    decision = lease_decision(record, owner, now)
    if decision != "claimed":
        return ClaimResult(decision, record)
    conn.execute(
        "UPDATE operations SET lease_owner = ?, lease_expires = ?, updated_at = "
        "? WHERE operation = ?",
        (owner, expires, now, intent.operation),
    )
    return ClaimResult("claimed", with_lease(record, owner, expires, now))


def _complete(
    conn: sqlite3.Connection,
    now: float,
    attempts: int,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    operation: str,
) -> None:
    conn.execute(
        "UPDATE operations SET state = 'completed', completed_at = ?, "
        "updated_at = ?, attempts = ?, "
        "last_error = NULL, response_status = ?, response_headers = ?, response_body = ?, "
        "lease_owner = NULL, lease_expires = NULL WHERE operation = ? AND state "
        "= 'pending'",
        (now, now, attempts, status, headers_to_json(headers), body, operation),
    )

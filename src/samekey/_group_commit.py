"""Group commit: many writers, one SQLite transaction and one WAL sync per batch.

Writers queue a `Job`; the first becomes the leader and runs every queued job in ONE
transaction, then hands the lead to the next waiter. Under concurrency the sync is paid
per batch, not per write; a lone caller runs its own job at once, with no thread hop and
no Event.

A batch runs optimistically, with no savepoint per job (each statement releases and
re-takes the GIL, which a busy event loop thread makes slow). If a job fails, the batch
is redone with a savepoint per job, so that job fails alone.

Lock waits. The connection has no busy handler of its own: SQLite's sleeps 1, 2, 5, 10,
15 ms between tries while a samekey write holds the lock for microseconds. `when_free`
polls instead, from BUSY_FIRST_PAUSE doubling to BUSY_MAX_PAUSE, for up to the store's
lock_timeout, and only for a statement that changed nothing (autocommit, or the BEGIN).
A job may be given less ``patience`` than that: what its request has left of its own
lock_timeout (`_lock_budget`), or none at all (the lazy purge: housekeeping never eats the
wait of the request it runs before). The seconds a job waited are kept in ``job.waited``.

Interruptions (Ctrl-C, SystemExit from a SIGTERM handler, a task time limit) may land on
any line. Whatever happens, the lead passes on, the interrupted caller's jobs leave the
queue, no transaction stays open (it would hold the write lock against every other
process), and every caller whose job was taken is woken with its result or an error that
says its write may not have happened.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ._errors import JournalError

__all__ = [
    "BUSY_FIRST_PAUSE",
    "BUSY_MAX_PAUSE",
    "GroupCommit",
    "Job",
    "refuse",
    "run_batch",
    "wake",
    "when_free",
]

BUSY_FIRST_PAUSE = 0.00005  # seconds
BUSY_MAX_PAUSE = 0.002
_SQLITE_BUSY = 5

_T = TypeVar("_T")


class Job(Generic[_T]):
    """One write waiting for its group commit."""

    __slots__ = (
        "args", "doing", "done", "durable", "error", "fn", "patience", "promoted", "ran",
        "result", "settled", "waited",
    )  # fmt: skip

    def __init__(
        self,
        fn: Callable[..., _T],
        doing: str,
        durable: bool,
        *,
        patience: float | None = None,
        args: tuple[Any, ...] = (),
    ) -> None:
        # run as fn(conn, *args): the writes every request makes pass their values as args, as
        # a closure would hold them in cells the garbage collector has to walk
        self.fn = fn
        self.args = args
        self.doing = doing
        self.durable = durable
        # seconds it may wait for a busy lock; None: the store's lock_timeout
        self.patience = patience
        self.waited = 0.0  # seconds it waited for the lock
        self.done: threading.Event | None = None  # made only for a job that has to wait
        self.promoted = False  # woken to lead the next batch, not because it finished
        self.result: _T | None = None
        self.error: BaseException | None = None
        self.settled = False  # result or error final: an interrupted leader only wakes it
        self.ran = False  # its statements ran in the batch's transaction (result set)

    def run(self, conn: sqlite3.Connection) -> _T:
        return self.fn(conn, *self.args)


class Store(Protocol):
    """What the group commit needs of the store it writes to."""

    def _run_batch(self, batch: list[Job[Any]]) -> None: ...

    def _interrupted(self, job: Job[Any]) -> JournalError: ...


class GroupCommit:
    """The queue of one connection's writers and the lead among them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards the queue and the lead
        self.queue: list[Job[Any]] = []
        self.writing = False  # a leader is running a batch; the queue is empty whenever not

    def submit(self, jobs: list[Job[Any]], store: Store) -> None:
        """Run ``jobs`` (all in the same batch) on ``store`` and return once they are done."""
        first = jobs[0]
        holding = queued = done = False  # holding: this caller has the lead to pass on
        taken: list[Job[Any]] = []  # the batch this caller leads: other callers wait on its jobs
        try:  # from the first statement: an interruption anywhere must reach the clean-up
            with self.lock:
                if not self.writing:
                    self.writing = holding = True
                else:
                    first.done = threading.Event()
                    # before the extend: an interruption between them leaves nothing behind
                    queued = True
                    self.queue.extend(jobs)
            if holding:
                taken = jobs
            else:
                first.done.wait()  # type: ignore[union-attr]
                if not first.promoted:
                    done = True
                    return  # a leader ran them
                holding = True
                with self.lock:
                    taken, self.queue = self.queue, []
            store._run_batch(taken)
            done = True
        finally:
            if holding or (queued and not done):
                self._clean_up(jobs, taken, holding, done, store)

    def _clean_up(
        self, jobs: list[Job[Any]], taken: list[Job[Any]], holding: bool, done: bool, store: Store
    ) -> None:
        """After a write (``done``) or an interruption: the lead and the waiters, settled.

        Every step can be repeated, so a second interruption landing in the middle (a Ctrl-C
        pressed twice) makes it start over rather than leave a waiter asleep; it is raised after.
        """
        again: BaseException | None = None
        while True:
            try:
                if not done:
                    self._wake_taken(jobs, taken, store)
                with self.lock:
                    if not done:
                        self.queue = [
                            job for job in self.queue if all(job is not mine for mine in jobs)
                        ]
                        holding = holding or jobs[0].promoted  # promoted while being interrupted
                    if holding:
                        self._hand_off()
                break
            except BaseException as exc:
                again = exc
        if again is not None:
            raise again

    def _wake_taken(self, jobs: list[Job[Any]], taken: list[Job[Any]], store: Store) -> None:
        """Wake the other callers whose jobs were taken into an interrupted batch."""
        for job in taken:
            if (
                job.done is not None
                and not job.done.is_set()
                and all(job is not mine for mine in jobs)
            ):
                if not job.settled and not job.ran:  # ran and unsettled: its batch committed
                    job.result, job.error = None, job.error or store._interrupted(job)
                job.done.set()

    def _hand_off(self) -> None:
        """Wake the next waiting writer to lead, or let the next caller lead (queue lock held)."""
        if self.queue:
            head = self.queue[0]
            head.promoted = True
            head.done.set()  # type: ignore[union-attr]
        else:
            self.writing = False


class Committer(Protocol):
    """What running a batch needs of the store: its errors, and what follows a commit."""

    lock_timeout: float

    def _classify(self, exc: sqlite3.Error, doing: str) -> JournalError: ...

    def _interrupted(self, job: Job[Any]) -> JournalError: ...

    def _not_durable(self, job: Job[Any], exc: OSError) -> JournalError: ...

    def _committed(self, records: int, sync: bool) -> None: ...


def refuse(batch: list[Job[Any]], error: JournalError) -> None:
    """Fail every job of ``batch`` with ``error`` and wake its callers."""
    for job in batch:
        job.error, job.settled = error, True
        if job.done is not None:
            job.done.set()


def run_batch(
    conn: sqlite3.Connection, batch: list[Job[Any]], store: Committer, *, sync: bool
) -> None:
    """Run ``batch`` in one transaction on ``conn`` (its lock held); ``sync``: it owes a WAL sync.

    The callers are woken by `wake` once the lock is let go; an interrupted batch wakes them
    here."""
    try:
        changes = conn.total_changes
        if not execute(conn, batch, store, savepoints=False):
            execute(conn, batch, store, savepoints=True)
        if conn.total_changes != changes:  # a replay or a busy claim wrote nothing
            store._committed(conn.total_changes - changes, sync)
        sync = False  # done: nothing left to make durable
    except OSError as exc:  # committed but maybe not on the disk: the callers must not go on
        for job in batch:
            job.result, job.error = None, job.error or store._not_durable(job, exc)
    except sqlite3.Error as exc:  # BEGIN or COMMIT failed: nothing of the batch was written
        _rollback(conn)
        for job in batch:
            job.result, job.error = None, job.error or store._classify(exc, job.doing)
    except BaseException:
        _interrupted(conn, batch, store, sync)
        raise


def wake(batch: list[Job[Any]]) -> None:
    """Wake the callers of a batch that ran (after its connection lock is let go)."""
    for (
        job
    ) in batch:  # all settled before any is woken: an interruption while waking loses no result
        job.settled = True
    for job in batch:
        if job.done is not None:
            job.done.set()


def _interrupted(
    conn: sqlite3.Connection, batch: list[Job[Any]], store: Committer, sync: bool
) -> None:
    """Settle and wake a batch interrupted mid-way. A job that ran in a batch that committed
    keeps its result (its write is there), unless it is a durable write still owed its sync."""
    committed = not conn.in_transaction
    _rollback(conn)
    for job in batch:
        if not (committed and job.ran and not (sync and job.durable)):
            job.result, job.error = None, job.error or store._interrupted(job)
        job.settled = True
        if job.done is not None:
            job.done.set()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def execute(
    conn: sqlite3.Connection, batch: list[Job[Any]], store: Committer, *, savepoints: bool
) -> bool:
    """Run the batch in one transaction; False (all
    rolled back) when a job fails without savepoints."""
    several = len(batch) > 1
    if several:  # a lone job runs in autocommit; a job needing more opens its own transaction
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            _when_free(conn, _begin_immediate, exc, batch, store)
    for job in batch:
        if savepoints:
            conn.execute("SAVEPOINT job")
        try:
            try:
                job.result = job.run(conn)
            except sqlite3.OperationalError as exc:
                if several:
                    raise  # inside BEGIN IMMEDIATE: the write lock is ours, this is no lock wait
                job.result = _when_free(conn, job.run, exc, [job], store)
            job.ran = True
        except Exception as exc:
            if several and not savepoints:
                conn.execute("ROLLBACK")
                for done in batch:
                    done.result, done.ran = None, False
                return False
            job.error = store._classify(exc, job.doing) if isinstance(exc, sqlite3.Error) else exc
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
    conn: sqlite3.Connection,
    attempt: Callable[[sqlite3.Connection], _T],
    error: sqlite3.OperationalError,
    jobs: list[Job[Any]],
    store: Committer,
) -> _T:
    """`when_free` for ``jobs`` (a batch waits as
    long as its most patient job), the wait counted."""
    patience = max(store.lock_timeout if job.patience is None else job.patience for job in jobs)
    started = time.monotonic()
    try:
        return when_free(conn, attempt, error, patience)
    finally:
        waited = time.monotonic() - started
        for job in jobs:
            job.waited += waited


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def is_busy(error: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the lock (and only that: a full disk is no wait)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return "database is locked" in str(error)


def when_free(
    conn: sqlite3.Connection,
    attempt: Callable[[sqlite3.Connection], _T],
    error: sqlite3.OperationalError,
    lock_timeout: float,
) -> _T:
    """``attempt`` failed with ``error``: if another
    process held the lock, try again until it lets go."""
    pause, deadline = BUSY_FIRST_PAUSE, time.monotonic() + lock_timeout
    while is_busy(error) and not conn.in_transaction:
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(2 * pause, BUSY_MAX_PAUSE)
        try:
            return attempt(conn)
        except sqlite3.OperationalError as exc:
            error = exc
    raise error

"""Completions written after the caller has its answer: with the store's next write, or soon.

Only a claim must be on disk before its request is sent. A completion may follow: if the
process dies before it is written, the operation stays pending under its key, and the next
run (or `samekey resume`) sends that key again, which the server answers from its own
record. So the SQLite store queues a completion here and returns at once.

Inside the process nothing changes. The store's next write runs the queued completions
first, in its own transaction (a sequential client's next claim commits them for free);
every read of any store on the same file writes them before it looks. What no write took
is written by a flusher thread FLUSH_DELAY later, by ``close()``, or at the interpreter's
exit (and at the exit of a multiprocessing worker, which skips atexit). A forked child starts
with an empty queue: the parent writes its own.

A completion that could not be written (a full disk, a lock held too long) goes back to
the queue and is tried with the next write; its operation meanwhile stays pending, which
is safe. One still queued at exit is logged by name.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._group_commit import Job
from ._identity import PROCESS, at_fork_in_child

__all__ = ["FLUSH_DELAY", "Deferred", "flush_at"]

logger = logging.getLogger("samekey")

FLUSH_DELAY = 0.01  # seconds a completion waits for another write to take it along
IDLE_SECONDS = 2.0  # the flusher thread exits after this long with nothing queued

# Every queue that holds completions, so that a read through another store (or at exit) can
# have them written first.
_QUEUES: weakref.WeakSet[Deferred] = weakref.WeakSet()


class Deferred:
    """One store's queue of completions not yet written, and the thread that writes them."""

    def __init__(self, location: str, flush: Callable[[], None]) -> None:
        self.location = location
        self._flush = weakref.WeakMethod(flush)
        # the store, kept alive while answers wait: one dropped unclosed must still write them
        self._keep: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._jobs: list[Job[Any]] = []
        # when the oldest answer was queued (monotonic); None: nothing waits for the flusher
        self._since: float | None = None
        self._listed = False  # in _QUEUES
        self._wake = threading.Event()
        self._running = False  # the flusher thread is alive
        self._closing = threading.Event()  # set by close(): no flusher from then on

    def __bool__(self) -> bool:
        return bool(self._jobs)

    @property
    def writable(self) -> bool:
        """Answers wait, and the store is not closed (its close wrote or reported them)."""
        return bool(self._jobs) and not self._closing.is_set()

    def add(self, job: Job[Any]) -> None:
        if _finalizer_in != PROCESS.pid:
            _flush_at_worker_exit()
        with self._lock:
            self._jobs.append(job)
            if self._keep is None:
                self._keep = self._flush()
            if not self._listed:
                _QUEUES.add(self)
                self._listed = True
            if self._since is None:  # the flusher's clock starts with the oldest answer
                self._since = time.monotonic()
                if not self._wake.is_set():
                    self._wake.set()
            if not self._running and not self._closing.is_set():
                threading.Thread(target=self._serve, name="samekey-flush", daemon=True).start()
                self._running = True

    def take(self, patience: float | None) -> list[Job[Any]]:
        """Every queued completion, to run at the head of a batch; ``patience``: its lock wait."""
        with self._lock:
            jobs, self._jobs, self._since, self._keep = self._jobs, [], None, None
        for job in jobs:
            job.patience, job.error, job.ran, job.waited = patience, None, False, 0.0
        return jobs

    def settle(self, jobs: list[Job[Any]]) -> None:
        """After their batch: the completions it did not write go back to the head of the queue."""
        failed = [job for job in jobs if job.error is not None or not job.ran]
        if not failed:
            return
        with self._lock:  # no clock restarted: tried with the next write, or the next answer's
            self._jobs[:0] = failed
            self._keep = self._flush()
        # the problem alone: a journal error's fix may say "nothing was sent", untrue of an answer
        error = failed[0].error
        logger.warning(
            "samekey could not record %d answer(s) yet (%s); they stay pending and are tried "
            "again with the next write",
            len(failed),
            getattr(error, "problem", error),
        )

    def close(self) -> None:
        """No flusher from now on (the store writes what is left itself)."""
        with self._lock:
            self._closing.set()
        self._wake.set()

    def report_left(self, when: str) -> None:
        """Log the answers still queued ``when`` the queue is given up (exit, close)."""
        if self._jobs:
            logger.warning(
                "samekey: %d answer(s) could not be recorded before %s; those operations stay "
                "pending and the next run sends their keys again (%s)",
                len(self._jobs),
                when,
                ", ".join(job.doing for job in self._jobs),
            )

    def _serve(self) -> None:
        while True:
            woken = self._wake.wait(IDLE_SECONDS)
            with self._lock:
                if self._closing.is_set() or not (woken or self._since is not None):
                    self._running = False
                    return
                self._wake.clear()
            if not self._write_when_due():
                with self._lock:
                    self._running = False
                return

    def _write_when_due(self) -> bool:
        """Once the oldest queued answer is FLUSH_DELAY old, write the queue, unless a write of
        the store took it first (a busy client's next claim does). False once the store is gone.
        """
        # first a full FLUSH_DELAY, whatever is queued: a thread woken on every answer costs a
        # busy client ~50 µs a request (it takes the GIL just as the next claim has drained the
        # queue)
        if self._closing.wait(FLUSH_DELAY):  # not time.sleep: tests and users patch it
            return True  # closed: close() writes what is left
        while (since := self._since) is not None:
            left = since + FLUSH_DELAY - time.monotonic()
            if left <= 0:
                return self._write()
            if self._closing.wait(left):
                return True
        return True

    def _write(self) -> bool:
        """Write what is queued; False once the store is gone."""
        flush = self._flush()
        if flush is None:
            return False
        try:
            flush()
        except Exception:  # kept queued (settle); the next write or close tries again
            logger.debug("samekey: writing queued completions failed", exc_info=True)
        return True


def flush_at(location: str) -> None:
    """Write every queued completion of the stores on ``location`` (before a read looks)."""
    for queue in list(_QUEUES):
        if queue.location == location and queue.writable:
            queue._write()


def _forget_in_child() -> None:
    # the parent's queues are the parent's to write: a child writing them too could wait on a
    # lock copied while held
    global _QUEUES
    _QUEUES = weakref.WeakSet()


at_fork_in_child(_forget_in_child)


_finalizer_in: int | None = None  # the process whose multiprocessing exit flushes the queues


def _flush_at_worker_exit() -> None:
    """A forked multiprocessing worker ends with os._exit, past atexit: its own exit step runs
    the finalizers registered in it (it clears the parent's), so one is registered here."""
    global _finalizer_in
    util = sys.modules.get("multiprocessing.util")
    if util is None:  # no multiprocessing in this process: atexit is enough
        return
    _finalizer_in = PROCESS.pid
    util.Finalize(None, _flush_all, exitpriority=10)


@atexit.register
def _flush_all() -> None:
    for queue in list(_QUEUES):
        if queue.writable:
            queue._write()
            queue.report_left("exit")

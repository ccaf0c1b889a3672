"""SQLite journals across fork(): no thread may be inside SQLite on a journal's connection then.

The child would inherit that connection's mutex held (closing it there would wait
forever) or a transaction half done. So a fork takes every open journal's connection
lock first, waiting for a call in progress to end, lets a checkpoint thread end, and
lets go of both on each side. A journal whose lock stayed held past its fork wait (a
call stuck past every lock wait, or a signal handler forking in the thread that holds
it) is marked `_forked_in_use`: its child may neither close that connection nor open
another, and `abandon` keeps the copy from ever being closed, even at interpreter exit.

These hooks must run before the fork and after it in the parent, so they are registered
with os.register_at_fork directly; the child-side reopening is the store's own, on its
first call there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
import weakref
from typing import Protocol

from ._wal import Checkpointer

__all__ = ["FORK_WAIT_EXTRA", "abandon", "register"]

FORK_WAIT_EXTRA = 5.0  # seconds a fork waits for a journal call in progress, beyond its lock waits


class Forkable(Protocol):
    """What the fork hooks need of an open journal."""

    _lock: threading.Lock
    _fork_wait: float
    _forked_in_use: bool
    _checkpoints: Checkpointer | None


_JOURNALS: weakref.WeakSet[Forkable] = weakref.WeakSet()
_JOURNALS_LOCK = threading.Lock()  # held across a fork too, so the child's copy is never taken
_HELD_AT_FORK: list[threading.Lock] = []  # the lock objects taken: the child may swap a journal's
_BUSY_AT_FORK: list[Forkable] = []
_REGISTRY_HELD: list[bool] = []  # whether _before_fork got _JOURNALS_LOCK
_ABANDONED: list[sqlite3.Connection] = []  # a forked child's unusable copies, kept from their close


def register(journal: Forkable) -> None:
    """Have every fork from now on wait for ``journal``'s calls in progress."""
    with _JOURNALS_LOCK:
        _JOURNALS.add(journal)


def _before_fork() -> None:
    # bounded: held only for an add, but a signal handler forking in the middle of one must not hang
    _REGISTRY_HELD.append(_JOURNALS_LOCK.acquire(timeout=FORK_WAIT_EXTRA))
    for journal in list(_JOURNALS):
        _hold_at_fork(journal, journal._lock, journal._fork_wait)
        checkpoints = journal._checkpoints
        if checkpoints is not None:  # a checkpoint thread inside SQLite may hold its global mutex
            deadline = time.monotonic() + journal._fork_wait
            thread = checkpoints.thread  # no new one starts while the connection lock is held
            if (
                thread is not None
            ):  # let it end, not only leave SQLite: a process forked with another
                thread.join(
                    journal._fork_wait
                )  # thread alive gets Python 3.12+'s DeprecationWarning
            _hold_at_fork(journal, checkpoints.lock, max(0.0, deadline - time.monotonic()))


def _hold_at_fork(journal: Forkable, lock: threading.Lock, wait: float) -> None:
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


def abandon(conn: sqlite3.Connection) -> None:
    """Keep ``conn`` from ever being closed in this process, even when the interpreter exits."""
    _ABANDONED.append(conn)
    with contextlib.suppress(
        ImportError, AttributeError, OSError
    ):  # CPython: one reference never given back
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))

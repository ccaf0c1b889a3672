"""Who holds a lease: process identity, owner ids, and what a fork must redo.

An owner id is ``host/pid/pid-scope/<per-client random>-<counter>``: unique per call,
with no urandom per request. The pid scope (pid namespace and boot) says where a pid
means something: containers of one pod share a hostname, not their pids. A lease whose
owner was a process of this host and scope that no longer runs can be taken over at
once, instead of waited out.

A forked child (a preloaded web worker, a prefork task runner) shares its parent's
memory but none of its threads, locks in use or sockets; `at_fork_in_child` registers
what each module must redo there.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Callable

__all__ = ["PID_SCOPE", "PROCESS", "Owners", "at_fork_in_child", "pid_is_gone"]


def at_fork_in_child(action: Callable[[], None]) -> None:
    """Run ``action`` in every child forked from
    now on (nothing on Windows, which does not fork)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=action)


class _Process:
    """This process's id, kept without a getpid() system call per request."""

    pid = os.getpid()

    @classmethod
    def after_fork(cls) -> None:
        cls.pid = os.getpid()


PROCESS = _Process
at_fork_in_child(_Process.after_fork)


def _pid_scope() -> str:
    """Where this process's pids mean something: its pid namespace and boot (Linux), else '-'."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{namespace}.{boot.read().strip()[:8]}"
    except OSError:
        return "-"


PID_SCOPE = _pid_scope()  # the same across fork (a child shares both)


def pid_is_gone(pid: int) -> bool:
    """True only when process ``pid`` no longer
    runs here; False while it runs or cannot be probed."""
    if os.name != "posix":  # on Windows os.kill(pid, 0) would terminate it: count it as running
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours to signal
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A killed child not yet reaped by its parent still answers kill(pid, 0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


class Owners:
    """The owner ids of one client's calls, and whether another owner's process is gone."""

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self._tag = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.host}/{PROCESS.pid}/{PID_SCOPE}/{self._tag}-{next(self._counter)}"

    def is_dead(self, owner: str | None) -> bool:
        """True for an owner that was a process of this host's pid space that no longer runs.

        An owner of another host or scope is never probed: its lease is waited out.
        """
        host, pid_text, scope = [*(owner or "").split("/"), "", ""][:3]
        if (
            host != self.host
            or scope != PID_SCOPE
            or not pid_text.isdigit()
            or int(pid_text) == PROCESS.pid
        ):
            return False
        return pid_is_gone(int(pid_text))

"""How long one request may still wait for the journal's lock: ``lock_timeout`` in all.

A request makes several writes (claim, attempts, completion or release), each of which can
meet another process holding the write lock. Each waiting its own ``lock_timeout`` made
one call wait two or three times what the user set. So the store keeps, per request (its
lease owner, unique per request), the seconds it has waited so far, and gives each of its
writes only what is left. Most requests never wait: nothing is kept for them.
"""

from __future__ import annotations

import threading

__all__ = ["LockBudgets"]

# owners with a wait on record; a request that never ends its lease is dropped past this
MAX_TRACKED = 10_000


class LockBudgets:
    """Seconds of lock wait spent per owner, against one ``lock_timeout``."""

    def __init__(self, lock_timeout: float) -> None:
        self.lock_timeout = lock_timeout
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()

    def left(self, owner: str) -> float:
        """What a write of ``owner``'s may wait for the lock."""
        return max(0.0, self.lock_timeout - self._spent.get(owner, 0.0))

    def spend(self, owner: str, seconds: float, *, last: bool) -> None:
        """``owner``'s write waited ``seconds``; ``last``: its request holds no lease any more."""
        if seconds <= 0.0 and (not last or owner not in self._spent):  # most requests never wait
            return
        with self._lock:
            if last:
                self._spent.pop(owner, None)
                return
            if len(self._spent) >= MAX_TRACKED and owner not in self._spent:
                self._spent.pop(next(iter(self._spent)))  # the oldest: a request that vanished
            self._spent[owner] = self._spent.get(owner, 0.0) + seconds

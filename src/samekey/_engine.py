"""What one client's requests share: its `Config`, its journal, and state kept between requests.

The flows read the engine and never change it, except for the purge schedule (a lazy
purge of old completed records, once an hour per client) and the owner counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from ._config import Config
from ._contract import BatchingStore, JournalStore, QueueingStore
from ._identity import Owners
from ._open import open_journal
from ._plan import Plan, make_plan
from ._policy import RetryPolicy
from ._redaction import Redactor
from ._sealed_store import sealed

__all__ = ["Engine", "open_engine"]

PURGE_INTERVAL = 3600.0  # seconds between two lazy purges of completed records by one client
PURGE_BACKLOG_PAUSE = 1.0  # seconds until the next batch when a purge left old records behind
LEASE_MARGIN = 5.0  # seconds a lease adds to an attempt's timeouts: the client's own work around it


class PurgeSchedule:
    """When this client next purges: at most once per PURGE_INTERVAL, sooner after a backlog."""

    def __init__(self) -> None:
        self._next = float("-inf")
        self._lock = threading.Lock()

    def due(self, now: float) -> bool:
        if now < self._next:  # the common case, without the lock
            return False
        with self._lock:
            if now < self._next:
                return False
            self._next = now + PURGE_INTERVAL
            return True

    def soon(self, now: float) -> None:
        """A purge left old records behind: take the next batch soon, not in an hour."""
        self._next = min(self._next, now + PURGE_BACKLOG_PAUSE)


class Engine:
    """The per-client state the flow reads."""

    def __init__(
        self, config: Config, journal: JournalStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.journal = journal
        # checked once: a runtime protocol check costs ~18 µs, too much for every journal call
        self.batching: BatchingStore | None = (
            journal if isinstance(journal, BatchingStore) else None
        )
        # a completion only queued: the async driver calls it on the event loop, no thread hop
        self.completes_later = isinstance(journal, QueueingStore) and journal.completes_later
        self.clock = clock
        self.redactor = Redactor(config.key_header, config.redact_headers)
        self.owners = Owners()
        self.purges = PurgeSchedule()
        self._last_lease: tuple[tuple[object, ...], float] = ((), config.lease)

    @property
    def policy(self) -> RetryPolicy:
        return self.config.policy

    @property
    def key_header(self) -> str:
        return self.config.key_header

    def plan(self, request: httpx.Request) -> Plan | None:
        return make_plan(self.config, self.redactor, request)

    def describe(
        self, exc: BaseException | None, response: httpx.Response | None, request: httpx.Request
    ) -> str | None:
        return self.redactor.describe(exc, response, request)

    def lease_for(self, request: httpx.Request) -> float:
        """How long an attempt of ``request`` holds its operation: the client's lease, or longer.

        The lease is not renewed while a request is on the wire: an attempt its own timeouts
        let run past the lease would let another caller take the operation over and send it a
        second time meanwhile. So a lease covers the worst the timeouts allow (pool, connect,
        write, read). With no timeout (None) an attempt is unbounded: the client's lease stands.
        """
        timeouts = request.extensions.get("timeout")
        if not isinstance(timeouts, dict):
            return self.config.lease
        get = timeouts.get
        limits = (get("pool"), get("connect"), get("write"), get("read"))
        last_limits, last_lease = self._last_lease  # a client's requests mostly share one setting
        if limits == last_limits:
            return last_lease
        lease = self._lease_for(limits)
        self._last_lease = (limits, lease)  # one assignment: a thread reads the old pair or the new
        return lease

    def _lease_for(self, limits: tuple[object, ...]) -> float:
        lease = self.config.lease
        if not all(isinstance(limit, (int, float)) for limit in limits):
            return lease
        return max(lease, sum(limits) + LEASE_MARGIN)  # type: ignore[arg-type]


def open_engine(config: Config) -> tuple[Engine, bool]:
    """(the engine of ``config``, whether it opened its journal and so must close it)."""
    store, owned = open_journal(config.journal)
    return Engine(config, sealed(store, config.sealer, config.bodies)), owned

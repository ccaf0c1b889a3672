"""`PostgresJournal`: the journal in a PostgreSQL database, shared by every replica.

A service with several replicas cannot keep pending keys on a local disk that dies
with the container: when a replica is killed mid-payment another one must find the
operation and finish it with the same key. This store implements the same
`JournalStore` contract as the SQLite `Journal`, on one table:

- `claim` is atomic across hosts: ``INSERT ... ON CONFLICT DO NOTHING`` creates the
  record (durable before the request is sent); otherwise ``SELECT ... FOR UPDATE``
  locks the row while the lease is checked and taken.
- `record_attempt`, `complete` and `release` commit with ``synchronous_commit = off``:
  losing one in a server crash only means the next run sends the same key again and
  the payment server replays its answer.
- Lease expiry compares the callers' clocks (``now``), as the SQLite store does, so
  hosts sharing a journal need synchronised clocks (NTP); leases are tens of seconds.

Connections come from a `psycopg_pool.ConnectionPool`: opened lazily (min_size=0, no
thread before the first call), ``pool_size`` at most, each set up by the pool's
``configure`` (autocommit, lock, statement and idle-in-transaction timeouts). The pool
opens connections in threads of its own and keeps their errors, so the schema is checked
at opening on a connection made directly (a server that cannot be reached is said at
once, with libpq's reason), and a pool that gives no connection within ``pool_timeout``
while not all of them are in use is diagnosed by one direct attempt. A call whose
connection turns out broken (a server restart, a failover, a session the server ended)
runs once more on a fresh one, after the pool's idle ones are checked. A forked child
gets a pool of its own: the parent's is never used nor closed there (its sockets are
the parent's).

psycopg 3 and psycopg-pool are imported when a journal is opened, so ``import samekey``
works without them (``pip install 'samekey[postgres]'``).
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._contract import (
    ClaimResult,
    Intent,
    ListingStore,
    ListQuery,
    OperationRecord,
    ReservingStore,
    SettleResult,
    SettlingStore,
    lease_decision,
    new_record,
    settle_result,
    settled_answer,
    with_lease,
)
from ._errors import JournalError, JournalLocked
from ._identity import at_fork_in_child
from ._postgres_schema import init_schema
from ._redaction import mask_dsn, redact_dsn, scrub
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

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = ["PostgresJournal", "mask_dsn"]

_SELECT = f"SELECT {COLUMNS} FROM samekey_operations"
_SELECT_SUMMARY = "SELECT " + summary_columns("''::bytea") + " FROM samekey_operations"
_INSERT = (
    f"INSERT INTO samekey_operations ({COLUMNS}) VALUES "
    "(%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s, NULL, 0, NULL, NULL, NULL, "
    "NULL, %s, %s, NULL, %s) "
    "ON CONFLICT (operation) DO NOTHING"
)

# Appended to the WHERE of record_attempt, complete, release and purge. Losing those writes in a
# server crash is harmless (the next run sends the same key; the payment server replays), so
# they need not wait for the WAL flush. The condition is evaluated for every row the
# statement changes, so its one-statement transaction commits with synchronous_commit off:
# one round trip, where BEGIN; SET LOCAL ...; UPDATE; COMMIT takes four.
_NO_FLUSH = "set_config('synchronous_commit', 'off', true) IS NOT NULL"

T = TypeVar("T")


def _configure(settings: tuple[str, ...], conn: psycopg.Connection[Any]) -> None:
    for statement in settings:
        conn.execute(statement)


def _check_arguments(dsn: object, create: object, pool_size: object, **timeouts: object) -> None:
    if not isinstance(dsn, str) or not dsn.strip():
        raise ValueError(f"dsn must be a PostgreSQL connection string, got {dsn!r}")
    if not isinstance(create, bool):
        raise ValueError(f"create must be True or False, got {create!r}")
    for name, value in timeouts.items():
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not 0 < value < math.inf
        ):
            raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")


def _escape_like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class PostgresJournal:
    """The shared journal: one PostgreSQL table used by every replica of a service.

    ``dsn`` is a libpq connection string (``postgresql://user:pass@host/db`` or
    ``host=... dbname=...``); the tables ``samekey_operations`` and ``samekey_schema``
    are created in the connection's current schema (set it with
    ``options=-csearch_path=NAME``). ``pool_size`` connections at most are opened,
    lazily, and shared by threads; ``pool_timeout`` (default: statement_timeout) bounds
    the wait for one when all are in use; ``lock_timeout`` bounds the wait for a row or
    table lock held by another caller; ``connect_timeout`` bounds each connection
    attempt; ``statement_timeout`` bounds each statement, so an overloaded server
    cannot hold a payment call forever. ``idle_in_transaction_session_timeout``
    (default: statement_timeout) makes the server end a samekey session that stays
    idle inside a transaction that long (its process stalled or hung between two
    statements while holding a row lock), so the other replicas get the row back.
    Unless the DSN sets them, TCP keepalives and ``tcp_user_timeout``
    (= statement_timeout) detect a server host that vanished. ``create=False`` opens
    only a database that already has samekey's tables (JournalError otherwise, nothing
    created): for tools that inspect a journal, where a misspelt database name must not
    quietly become an empty new journal.
    """

    def __init__(
        self,
        dsn: str,
        *,
        lock_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        idle_in_transaction_session_timeout: float | None = None,
        pool_size: int = 4,
        pool_timeout: float | None = None,
        create: bool = True,
    ) -> None:
        if idle_in_transaction_session_timeout is None:
            # a transaction idle longer than one statement may run is stuck, not slow
            idle_in_transaction_session_timeout = statement_timeout
        if pool_timeout is None:
            pool_timeout = statement_timeout  # a caller holds a connection for about one statement
        _check_arguments(
            dsn,
            create,
            pool_size,
            lock_timeout=lock_timeout,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            idle_in_transaction_session_timeout=idle_in_transaction_session_timeout,
            pool_timeout=pool_timeout,
        )
        self.location, self._secrets = redact_dsn(dsn)
        self.lock_timeout = float(lock_timeout)
        self.connect_timeout = float(connect_timeout)
        self.statement_timeout = float(statement_timeout)
        self.idle_in_transaction_session_timeout = float(idle_in_transaction_session_timeout)
        self.pool_size = pool_size
        self.pool_timeout = float(pool_timeout)
        self.create = create
        self._lock = threading.Lock()  # guards _closed, _in_use and the choice of _pool
        self._closed = False
        self._in_use = 0  # connections taken from the pool and not yet given back
        self._import_driver()
        self._conninfo = self._full_conninfo(dsn)
        self._pool = self._new_pool()
        self._open_schema()
        with _JOURNALS_LOCK:
            _JOURNALS.add(self)

    def _import_driver(self) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as exc:
            raise self._fail(
                "the PostgreSQL journal needs psycopg 3 and psycopg-pool, which are not installed",
                "Install them with: pip install 'samekey[postgres]'",
            ) from exc
        self._psycopg = psycopg
        self._psycopg_pool = psycopg_pool

    def _full_conninfo(self, dsn: str) -> str:
        try:
            given = self._psycopg.conninfo.conninfo_to_dict(dsn)
        except self._psycopg.ProgrammingError as exc:
            self._hide_secrets(exc)
            raise self._fail(
                f"the DSN cannot be parsed ({' '.join(str(exc).split())})", "Check its syntax."
            ) from exc
        link = {
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": math.ceil(self.statement_timeout * 1000),
        }
        # the DSN's own settings win
        return str(
            self._psycopg.conninfo.make_conninfo(
                dsn, **{k: v for k, v in link.items() if k not in given}
            )
        )

    def _open_schema(self) -> None:
        """Check (or create) the tables on a connection of its own: one that cannot be made
        is said at once, with libpq's reason."""
        try:
            conn = self._connect()
            try:
                init_schema(conn, self._fail, create=self.create)
            finally:
                conn.close()
        except self._psycopg.Error as exc:
            raise self._classify(exc, "opening") from exc

    # -- errors -------------------------------------------------------------------------

    def _fail(self, problem: str, fix: str) -> JournalError:
        return JournalError(self.location, scrub(problem, self._secrets), fix)

    def _hide_secrets(self, exc: BaseException) -> None:
        """Scrub the DSN's passwords out of psycopg's messages: chained to the JournalError raised
        from them, they are printed with its traceback (``samekey --debug``, logging.exception),
        and libpq quotes what it could not read (a bad %-escape, a host read from a raw '@')."""
        seen: set[int] = set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            link.args = tuple(
                scrub(a, self._secrets) if isinstance(a, str) else a for a in link.args
            )
            link = link.__cause__ or link.__context__

    def _classify(self, exc: Exception, doing: str) -> JournalError:
        self._hide_secrets(exc)
        errors = self._psycopg.errors
        text = " ".join(str(exc).split())
        idle = f"{self.idle_in_transaction_session_timeout:g} s"
        if isinstance(exc, errors.LockNotAvailable):
            return JournalLocked(
                self.location,
                f"a lock was held by another caller for more than {self.lock_timeout:g} s "
                f"while {doing}",
                "Another process may be stuck in a transaction (the server ends a samekey "
                f"session idle in one after {idle}); retry, or raise lock_timeout.",
            )
        explained = {
            errors.QueryCanceled: (
                f"the server cancelled a statement while {doing} ({text}; samekey's "
                f"statement_timeout is {self.statement_timeout:g} s)",
                "The database is overloaded or something holds its locks; retry, or raise "
                "statement_timeout.",
            ),
            errors.IdleInTransactionSessionTimeout: (
                f"the server ended samekey's session while {doing}: it stayed idle in a "
                f"transaction for more than {idle} (idle_in_transaction_session_timeout), "
                "so its changes were rolled back",
                "This process stalled between two statements (overloaded, paused or swapped "
                "out); retry, or raise idle_in_transaction_session_timeout.",
            ),
            errors.InsufficientPrivilege: (
                f"the database user lacks a privilege while {doing} ({text})",
                "Grant it CREATE on the schema (first use) and SELECT, INSERT, UPDATE, DELETE "
                "on the samekey_operations and samekey_schema tables.",
            ),
            errors.DiskFull: (
                f"the database server's disk is full while {doing}",
                "Free some space; nothing was sent.",
            ),
            self._psycopg.OperationalError: (
                f"cannot reach the PostgreSQL server while {doing} ({text})",
                "Check that it runs and accepts connections from this host, and the DSN's "
                "host, port, user, password and database.",
            ),
        }
        for kind, (problem, fix) in explained.items():  # in order: the subclasses first
            if isinstance(exc, kind):
                return self._fail(problem, fix)
        return self._fail(
            f"PostgreSQL error while {doing} ({text})", "Check the database and the DSN."
        )

    # -- connections --------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection outside the pool: the schema's at opening, and the diagnosis of a pool
        that could open none (the pool connects in its own threads and keeps their errors)."""
        conn = self._psycopg.connect(self._conninfo, **self._connect_options())
        try:
            _configure(self._settings(), conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_options(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": max(1, math.ceil(self.connect_timeout))}

    def _settings(self) -> tuple[str, ...]:
        """The SET statements every connection runs once, as it is opened."""
        idle = math.ceil(self.idle_in_transaction_session_timeout * 1000)
        return (
            f"SET lock_timeout = {int(self.lock_timeout * 1000)}",
            f"SET statement_timeout = {math.ceil(self.statement_timeout * 1000)}",
            # a session stalled inside a transaction (its process hung between two statements)
            # would hold its row locks, and every other replica's claim of them, forever
            f"SET idle_in_transaction_session_timeout = {idle}",
        )

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return self._psycopg_pool.ConnectionPool(
            self._conninfo,
            kwargs=self._connect_options(),
            configure=functools.partial(
                _configure, self._settings()
            ),  # no reference back to the journal
            min_size=0,  # opened lazily, one connection at a time as callers need them
            max_size=self.pool_size,
            timeout=self.pool_timeout,
            open=False,  # no thread before the first call (a preloading server forks after opening)
            name="samekey",
        )

    def _acquire(self, doing: str = "taking a connection") -> psycopg.Connection[Any]:
        with self._lock:
            if self._closed:
                raise self._fail("it is closed", "Use the journal inside the client's lifetime.")
            pool = self._pool
            if pool.closed:
                pool.open()
        try:
            conn: psycopg.Connection[Any] = pool.getconn()
        except self._psycopg_pool.PoolTimeout as exc:
            raise self._no_connection(doing) from exc
        except self._psycopg_pool.PoolClosed as exc:
            raise self._fail(
                "it is closed", "Use the journal inside the client's lifetime."
            ) from exc
        with self._lock:
            self._in_use += 1
        return conn

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._in_use -= 1
        self._pool.putconn(conn)

    def _no_connection(self, doing: str) -> JournalError:
        """The pool gave no connection within pool_timeout: all in use, or none could be opened."""
        if self._in_use < self.pool_size:
            self._connect().close()  # raises libpq's reason when the server cannot be reached
            return self._fail(
                "no connection to the server could be opened within pool_timeout "
                f"({self.pool_timeout:g} s) "
                f"while {doing}",
                "Retry; if it goes on, look at the database server's load and its max_connections.",
            )
        return self._fail(
            f"all {self.pool_size} of its connections stayed in use for "
            f"{self.pool_timeout:g} s while {doing}",
            "Raise pool_size to the number of threads or tasks that use the journal at once, "
            "or raise pool_timeout; if statements are slow, look at the database server's load.",
        )

    def _in_child(self) -> None:
        """In a forked child: a pool of its own. The parent's is never closed here (that would
        talk on the parent's sockets), only kept from the garbage collector."""
        _INHERITED.append(self._pool)
        self._lock = threading.Lock()
        self._in_use = 0
        self._pool = self._new_pool()

    def _run(self, doing: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; once more on a fresh one if the first was broken.

        Every store method is safe to repeat: a claim that committed before the connection
        dropped is found again as this owner's ("claimed"), the other writes are guarded.
        """
        for retry in (False, True):
            try:
                conn = self._acquire(doing)
            except self._psycopg.Error as exc:
                raise self._classify(exc, doing) from exc
            try:
                return work(conn)
            except self._psycopg.Error as exc:
                if retry or not conn.broken or not self._worth_a_retry(exc):
                    raise self._classify(exc, doing) from exc
                dropped = isinstance(exc, self._psycopg.OperationalError)
            finally:
                self._give_back(conn)
            if (
                dropped
            ):  # the server restarted or failed over: its other idle connections are dead too
                self._pool.check()
        raise AssertionError("unreachable")  # pragma: no cover

    def _worth_a_retry(self, exc: Exception) -> bool:
        # a dropped connection (a server restart, a failover), or this process stalled
        # mid-transaction and the server ended the session (its locks freed for the others)
        return isinstance(
            exc,
            (self._psycopg.OperationalError, self._psycopg.errors.IdleInTransactionSessionTimeout),
        )

    # -- JournalStore -------------------------------------------------------------------

    def claim(self, intent: Intent, owner: str, lease_seconds: float, now: float) -> ClaimResult:
        expires = now + lease_seconds
        params = insert_params(intent, owner, now, expires)

        def work(conn: psycopg.Connection[Any]) -> ClaimResult:
            # A few rounds only matter if the row is forgotten between our insert and select.
            for _ in range(3):
                # the common case, a new operation, is one durable statement (one round trip)
                if conn.execute(_INSERT, params).rowcount == 1:
                    return ClaimResult("created", new_record(intent, owner, now, expires))
                with conn.transaction():
                    row = conn.execute(
                        f"{_SELECT} WHERE operation = %s FOR UPDATE", (intent.operation,)
                    ).fetchone()
                    if row is None:
                        continue
                    record = record_from_row(row, self.location)
                    decision = lease_decision(record, owner, now)
                    if decision != "claimed":
                        return ClaimResult(decision, record)
                    conn.execute(
                        "UPDATE samekey_operations SET lease_owner = %s, lease_expires "
                        "= %s, updated_at = %s "
                        "WHERE operation = %s",
                        (owner, expires, now, intent.operation),
                    )
                    return ClaimResult("claimed", with_lease(record, owner, expires, now))
            raise self._fail(
                f"operation {intent.operation!r} kept disappearing while being recorded",
                "Another caller is forgetting it repeatedly; stop that caller and retry.",
            )

        return self._run(f"recording operation {intent.operation!r}", work)

    def record_attempt(
        self,
        operation: str,
        owner: str,
        attempts: int,
        error: str | None,
        lease_seconds: float,
        now: float,
    ) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE samekey_operations SET attempts = %s, last_error = %s, updated_at = %s, "
                "lease_expires = %s WHERE operation = %s AND lease_owner = %s AND state "
                f"= 'pending' AND {_NO_FLUSH}",
                (attempts, error, now, now + lease_seconds, operation, owner),
            )

        self._run(f"updating operation {operation!r}", work)

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
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE samekey_operations SET state = 'completed', completed_at = %s, "
                "updated_at = %s, "
                "attempts = %s, last_error = NULL, response_status = %s, response_headers = %s, "
                "response_body = %s, lease_owner = NULL, lease_expires = NULL "
                f"WHERE operation = %s AND state = 'pending' AND {_NO_FLUSH}",
                (now, now, attempts, status, headers_to_json(headers), body, operation),
            )

        self._run(f"completing operation {operation!r}", work)

    def release(
        self, operation: str, owner: str, attempts: int, error: str | None, now: float
    ) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE samekey_operations SET attempts = greatest(attempts, %s), "
                "last_error = coalesce(%s, last_error), updated_at = %s, lease_owner = "
                "NULL, lease_expires = NULL "
                f"WHERE operation = %s AND lease_owner = %s AND state = 'pending' AND {_NO_FLUSH}",
                (attempts, error, now, operation, owner),
            )

        self._run(f"updating operation {operation!r}", work)

    def fill_reserved(self, intent: Intent, owner: str, now: float) -> bool:
        """Write the request into a record `key_for`
        reserved (method ''), under ``owner``'s lease."""

        def work(conn: psycopg.Connection[Any]) -> bool:
            headers = request_headers_json(intent.request_headers)
            cur = conn.execute(
                "UPDATE samekey_operations SET method = %s, url = %s, fingerprint = %s, "
                "request_headers = %s, "
                "request_body = %s, created_at = %s, updated_at = %s, checksum = %s "
                "WHERE operation = %s AND lease_owner = %s AND state = 'pending' AND "
                "method = '' AND key = %s",
                (
                    intent.method, intent.url, intent.fingerprint, headers, intent.request_body,
                    now, now,
                    checksum(intent, headers), intent.operation, owner, intent.key,
                ),
            )  # fmt: skip
            return cur.rowcount == 1

        return self._run(f"recording the request of operation {intent.operation!r}", work)

    def get(self, operation: str) -> OperationRecord | None:
        def work(conn: psycopg.Connection[Any]) -> OperationRecord | None:
            row = conn.execute(f"{_SELECT} WHERE operation = %s", (operation,)).fetchone()
            return record_from_row(row, self.location) if row is not None else None

        return self._run("reading", work)

    def pending(self, prefix: str | None = None) -> list[OperationRecord]:
        return self.records(prefix, include_completed=False)

    def records(
        self, prefix: str | None = None, *, include_completed: bool = True, bodies: bool = True
    ) -> list[OperationRecord]:
        where: list[str] = []
        params: list[object] = []
        if not include_completed:
            where.append("state = 'pending'")
        if prefix:
            where.append("operation LIKE %s")
            params.append(_escape_like(prefix))
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        def work(conn: psycopg.Connection[Any]) -> list[OperationRecord]:
            select = _SELECT if bodies else _SELECT_SUMMARY  # see Journal.records
            rows = conn.execute(
                f"{select}{clause} ORDER BY created_at, operation", params
            ).fetchall()
            return [record_from_row(r, self.location) for r in rows]

        return self._run("listing", work)

    def list_page(self, query: ListQuery) -> list[OperationRecord]:
        """`ListingStore`: one page of `samekey list` (the server's planner picks the index)."""
        where, params = page_filters(query, "%s")
        if query.prefix:
            where.append("operation LIKE %s")
            params.append(_escape_like(query.prefix))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"{_SELECT_SUMMARY}{clause} ORDER BY created_at, operation LIMIT %s"

        def work(conn: psycopg.Connection[Any]) -> list[OperationRecord]:
            rows = conn.execute(sql, (*params, query.limit)).fetchall()
            return [record_from_row(r) for r in rows]

        return self._run("listing", work)

    def settle(self, operation: str, status: int, note: str, now: float) -> SettleResult:
        """`SettlingStore`: complete a pending operation by hand, unless a live process holds it.
        Committed durably (no _NO_FLUSH): an operator's decision is not left to be redone."""
        headers, body = settled_answer(status, note, now)

        def work(conn: psycopg.Connection[Any]) -> SettleResult:
            changed = conn.execute(
                f"UPDATE samekey_operations SET {SETTLE_SET} "
                "WHERE operation = %s AND state = 'pending' "
                "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= %s)",
                (now, now, status, headers_to_json(headers), body, note, operation, now),
            ).rowcount
            row = conn.execute(f"{_SELECT} WHERE operation = %s", (operation,)).fetchone()
            return settle_result(changed == 1, None if row is None else record_from_row(row), now)

        return self._run(f"settling operation {operation!r}", work)

    def forget(self, operation: str) -> bool:
        def work(conn: psycopg.Connection[Any]) -> bool:
            return (
                conn.execute(
                    "DELETE FROM samekey_operations WHERE operation = %s", (operation,)
                ).rowcount
                == 1
            )

        return self._run(f"forgetting operation {operation!r}", work)

    def purge_completed(self, older_than: float, now: float, limit: int | None = None) -> int:
        """Delete completed records finished more than ``older_than`` seconds ago (the oldest
        first, at most ``limit``). Never pending ones. A big backlog goes in statements of
        PURGE_CHUNK records, so no transaction holds thousands of row locks for long."""
        cutoff = now - older_than

        def delete_oldest(size: int) -> int:
            def work(conn: psycopg.Connection[Any]) -> int:
                return conn.execute(
                    "DELETE FROM samekey_operations WHERE operation IN (SELECT "
                    "operation FROM samekey_operations "
                    "WHERE state = 'completed' AND completed_at < %s ORDER BY "
                    "completed_at LIMIT %s) "
                    f"AND {_NO_FLUSH}",
                    (cutoff, size),
                ).rowcount

            return self._run("purging completed operations", work)

        return purge_in_chunks(delete_oldest, limit)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.close()

    def __enter__(self) -> PostgresJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresJournal({self.location!r})"


_JOURNALS: weakref.WeakSet[PostgresJournal] = weakref.WeakSet()
_JOURNALS_LOCK = threading.Lock()
_INHERITED: list[object] = []  # a forked child's copies of its parent's pools, never closed there


def _after_fork_in_child() -> None:
    global _JOURNALS_LOCK
    _JOURNALS_LOCK = threading.Lock()  # another thread of the parent may have held it at the fork
    for journal in list(_JOURNALS):
        journal._in_child()


at_fork_in_child(_after_fork_in_child)


if TYPE_CHECKING:  # the store contracts PostgresJournal keeps, checked by mypy
    _0: type[ListingStore] = PostgresJournal
    _1: type[ReservingStore] = PostgresJournal
    _2: type[SettlingStore] = PostgresJournal

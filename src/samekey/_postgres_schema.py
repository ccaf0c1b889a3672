"""The PostgreSQL journal's tables: created on first use, checked and migrated under a lock.

Two tables in the connection's current schema: ``samekey_operations`` (the rows `_rows`
maps) and ``samekey_schema`` (its version). Processes opening a fresh database together
serialise on an advisory lock, so the tables are created once; a database whose tables
samekey did not make, or a newer samekey made, is left untouched with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import JournalError

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "init_schema", "version_of"]

Fail = Callable[[str, str], JournalError]  # (problem, fix) -> the store's JournalError

SCHEMA_VERSION = 1
# Forward migrations: MIGRATIONS[n] upgrades the tables from version n to n + 1.
MIGRATIONS: dict[int, str] = {}

# Serialises schema set-up between processes that open a fresh database together.
_SCHEMA_LOCK_ID = 0x534B4A31

_SCHEMA = """
CREATE TABLE samekey_schema (
    version integer NOT NULL
);
CREATE TABLE samekey_operations (
    operation        text COLLATE "C" PRIMARY KEY,
    key              text NOT NULL,
    key_header       text NOT NULL,
    method           text NOT NULL,
    url              text NOT NULL,
    fingerprint      text NOT NULL,
    request_headers  text NOT NULL,
    request_body     bytea NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'completed')),
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    completed_at     double precision,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    response_status  integer,
    response_headers text,
    response_body    bytea,
    lease_owner      text,
    lease_expires    double precision,
    settled_note     text,
    checksum         text
);
CREATE INDEX samekey_operations_pending ON samekey_operations (created_at, operation) WHERE state \
= 'pending';
CREATE INDEX samekey_operations_completed ON samekey_operations (completed_at) WHERE state = \
'completed';
CREATE INDEX samekey_operations_created ON samekey_operations (created_at, operation)
"""


def version_of(conn: psycopg.Connection[Any], fail: Fail) -> int | None:
    """The journal's schema version; None when the database has no samekey tables."""
    if conn.execute("SELECT to_regclass('samekey_schema')").fetchone() == (None,):
        if conn.execute("SELECT to_regclass('samekey_operations')").fetchone() != (None,):
            raise fail(
                "it has a samekey_operations table without samekey_schema, so it "
                "was not made by samekey",
                "It was left untouched. Use another database or schema "
                "(options=-csearch_path=NAME).",
            )
        return None
    versions = [
        row[0] for row in conn.execute("SELECT DISTINCT version FROM samekey_schema ORDER BY 1")
    ]
    restore = "or use another database or schema."
    if not versions:
        raise fail(
            "its samekey_schema table is empty, so its schema version is unknown",
            "It was left untouched. Restore the row (INSERT INTO samekey_schema "
            "VALUES (1) for samekey 0.1) " + restore,
        )
    if len(versions) > 1:
        raise fail(
            "its samekey_schema table holds several versions "
            f"({', '.join(map(str, versions))}), so its schema "
            "version is unknown",
            "It was left untouched. Keep only the row of the version samekey wrote "
            f"(1 for samekey 0.1) {restore}",
        )
    [version] = versions
    if not isinstance(version, int) or version < 1:
        # never taken for an old journal to
        # migrate: no samekey wrote it, so its tables are unknown
        raise fail(
            f"its samekey_schema table holds version {version}, which no samekey "
            "writes (versions start at 1), "
            "so its schema version is unknown",
            "It was left untouched. Restore the row (UPDATE samekey_schema SET "
            "version = 1 for samekey 0.1) " + restore,
        )
    return version


def init_schema(conn: psycopg.Connection[Any], fail: Fail, *, create: bool) -> None:
    """Check the tables, creating them (``create``) or migrating them under a lock."""
    try:
        if version_of(conn, fail) == SCHEMA_VERSION:
            return
    except JournalError:
        # perhaps read while another process was creating the tables: decided under the lock
        pass
    # A session lock taken before the transaction: a backend refreshes its catalog caches when
    # a transaction starts, not when an advisory lock is granted, so a transaction that waited
    # for the lock would not see the tables the holder created and would create them again.
    conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_ID,))
    try:
        _create_or_migrate(conn, fail, create)
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_ID,))


def _create_or_migrate(conn: psycopg.Connection[Any], fail: Fail, create: bool) -> None:
    with conn.transaction():
        # again under the lock: another process may have set it up
        version = version_of(conn, fail)
        if version is not None and version > SCHEMA_VERSION:
            raise fail(
                f"it was written by a newer samekey (schema {version}; this one "
                f"reads up to {SCHEMA_VERSION})",
                "It was left untouched. Upgrade samekey to use it.",
            )
        if version is None and not create:
            database, schema, path = conn.execute(
                "SELECT current_database(), current_schema(), current_setting('search_path')"
            ).fetchone() or (None, None, None)
            place = (
                f"in schema {schema!r}" if schema is not None else f"on its search_path ({path})"
            )
            raise fail(
                f"database {database!r} has no samekey tables (samekey_operations, "
                f"samekey_schema) {place}, "
                "so it holds no journal; nothing was created",
                "Check the database name and the search_path "
                "(options=-csearch_path=NAME) in the DSN. A new "
                "journal's tables are created when the application first opens it "
                "(samekey.PostgresJournal(DSN) "
                "or samekey.Client(journal=DSN)).",
            )
        if version is None:
            if conn.execute("SELECT current_schema()").fetchone() == (None,):
                raise fail(
                    "no schema on the search_path exists to create its tables in",
                    "Create the schema, or set one with options=-csearch_path=NAME in the DSN.",
                )
            for statement in _SCHEMA.split(";"):
                conn.execute(statement)  # fixed text, no user input
            conn.execute("INSERT INTO samekey_schema (version) VALUES (1)")
            version = 1
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
        conn.execute("UPDATE samekey_schema SET version = %s", (version,))

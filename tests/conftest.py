from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

import samekey
from samekey.testing import PaymentServer, PostgresServer, PostgresUnavailable


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def no_sleep() -> Iterator[None]:
    with samekey.set_testing(True):
        yield


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PaymentServer]:
    with PaymentServer(tmp_path / "server.sqlite3") as srv:
        yield srv


@pytest.fixture
def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip(
            "running as root without setpriv: cannot make a file read-only for a child process"
        )
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.fixture(autouse=True)
def _isolated_default_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a test that forgets journal= must never touch the developer's real journal
    monkeypatch.setenv("SAMEKEY_JOURNAL", str(tmp_path / "default-journal.sqlite3"))


# -- PostgreSQL: one throwaway server per test session, one fresh schema per test ------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _postgres_unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"CI is set, so the PostgreSQL tests must run, but {reason}", pytrace=False)
    pytest.skip(
        f"no PostgreSQL here: {reason}. Install it (apt-get install postgresql, pip "
        "install 'samekey[postgres]') "
        "or point SAMEKEY_TEST_PG_DSN at a database"
    )


@pytest.fixture(scope="session")
def psycopg_installed() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _postgres_unavailable("psycopg 3 is not installed")


@pytest.fixture(scope="session")
def postgres_dsn(psycopg_installed: None) -> Iterator[str]:
    """A DSN (URL form) to an empty database: $SAMEKEY_TEST_PG_DSN, else a server started here."""
    given = os.environ.get("SAMEKEY_TEST_PG_DSN")
    if given:
        yield given
        return
    server = PostgresServer(fsync=False)  # power-loss durability is not observable in tests
    try:
        server.start()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        _postgres_unavailable(f"a local server could not be started ({exc})")
    try:
        yield server.dsn
    finally:
        server.stop()


def with_search_path(dsn: str, schema: str) -> str:
    if "://" in dsn:
        return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"
    return f"{dsn} options='-csearch_path={schema}'"


@pytest.fixture
def pg_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN whose tables land in a schema of their own, dropped after the test."""
    import psycopg

    schema = f"samekey_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(postgres_dsn, schema)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

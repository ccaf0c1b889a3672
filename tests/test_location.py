"""Where a journal is: a path, the default file, or a PostgreSQL DSN in either of libpq's forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import samekey
from samekey._location import is_dsn


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:pw@db/pay",
        "postgres://db/pay",
        "host=127.0.0.1 dbname=samekey user=app password=pw",
        "  dbname = pay user=app",
        "service=payments",
    ],
)
def test_both_dsn_forms_are_dsns(text: str) -> None:
    assert is_dsn(text)


@pytest.mark.parametrize(
    "text", ["pay.sqlite3", "./host=x", "/tmp/a=b.sqlite3", "journal=x.db", "~/pay.db"]
)
def test_paths_are_paths(text: str) -> None:
    assert not is_dsn(text)


def _key_values(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return " ".join(f"{key}='{value}'" for key, value in conninfo_to_dict(url).items())


def test_a_key_value_dsn_reaches_postgresql_and_no_file_appears(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    dsn = _key_values(pg_dsn)
    transport = httpx.MockTransport(lambda request: httpx.Response(201))
    with samekey.Client(journal=dsn, transport=transport) as client:
        assert type(client.journal).__name__ == "PostgresJournal"
        assert client.post("https://pay.test/c", json={}, operation="kv-1").status_code == 201
        assert client.journal.get("kv-1") is not None
    assert list(tmp_path.iterdir()) == [], "no local file named after the DSN"


def test_the_sqlite_journal_refuses_a_key_value_dsn_without_printing_its_password() -> None:
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal("host=127.0.0.1 dbname=samekey user=app password=S3CRETPW")
    assert "PostgresJournal" in str(caught.value) and "S3CRETPW" not in str(caught.value)


def test_the_command_takes_a_key_value_dsn_and_never_prints_its_password(tmp_path: Path) -> None:
    dsn = "host=127.0.0.1 port=1 dbname=samekey user=app password=S3CRETPW connect_timeout=1"
    result = subprocess.run(
        [sys.executable, "-m", "samekey", "list", "--journal", dsn],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "S3CRETPW" not in result.stdout + result.stderr
    assert "no journal at" not in result.stderr and "PostgreSQL" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []

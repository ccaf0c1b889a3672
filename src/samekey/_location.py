"""Where the journal is: a path, the default per-user file, or a PostgreSQL DSN.

``$SAMEKEY_JOURNAL`` names the journal of clients and of the `samekey` command given none:
a file path, or a DSN for replicas configured by environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from ._errors import JournalError
from ._redaction import mask_dsn

__all__ = ["default_journal_path", "environment_dsn", "is_dsn"]

DSN_PREFIXES = ("postgresql://", "postgres://")
# libpq's connection keywords (PostgreSQL 16's list): "host=db dbname=pay" is a DSN, never a file
# name, or the password in it would name a file and be printed in its errors
LIBPQ_KEYWORDS = frozenset(
    """host hostaddr port dbname user password passfile require_auth channel_binding connect_timeout
    client_encoding options application_name fallback_application_name keepalives keepalives_idle
    keepalives_interval keepalives_count tcp_user_timeout replication gssencmode sslmode requiressl
    sslcompression sslcert sslkey sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni
    requirepeer ssl_min_protocol_version ssl_max_protocol_version krbsrvname gsslib gssdelegation
    service target_session_attrs load_balance_hosts""".split()
)
_KEYWORD = re.compile(r"\s*([A-Za-z_]+)\s*=")


def is_dsn(text: str) -> bool:
    """Whether ``text`` names a PostgreSQL journal (a URL, or libpq's ``key=value`` form)."""
    if text.lstrip().startswith(DSN_PREFIXES):
        return True
    first = _KEYWORD.match(text)
    return first is not None and first.group(1).lower() in LIBPQ_KEYWORDS


def environment_dsn() -> str | None:
    """``$SAMEKEY_JOURNAL`` when it holds a PostgreSQL DSN."""
    env = os.environ.get("SAMEKEY_JOURNAL", "")
    return env if is_dsn(env) else None


def default_journal_path() -> Path:
    """``$SAMEKEY_JOURNAL`` if set, else ``<user state dir>/samekey/journal.sqlite3``.

    A DSN there is no path: the SQLite `Journal` refuses it (``Client()`` and the command use
    it as the PostgreSQL journal, see `environment_dsn`).
    """
    dsn = environment_dsn()
    if dsn is not None:
        # taken for a path, it would be a local file that dies with a container: refused
        raise JournalError(
            mask_dsn(dsn),
            "$SAMEKEY_JOURNAL holds a PostgreSQL DSN, and samekey.Journal is the SQLite journal",
            "Use samekey.PostgresJournal(DSN), or leave journal= out of Client() to use "
            "$SAMEKEY_JOURNAL; "
            "or set $SAMEKEY_JOURNAL to a file path.",
        )
    env = os.environ.get("SAMEKEY_JOURNAL")
    if env:
        return Path(env).expanduser().absolute()  # a later chdir must not move the journal
    return platformdirs.user_state_path("samekey").absolute() / "journal.sqlite3"


def refuse_dsn_as_path(path: object) -> None:
    """The SQLite journal given a DSN: read as a path it would be a local file no replica sees."""
    if isinstance(path, str) and is_dsn(path):
        raise JournalError(
            mask_dsn(path),
            "this is a PostgreSQL DSN, and samekey.Journal is the SQLite journal",
            "Use samekey.PostgresJournal(DSN), or pass the DSN itself as journal= to the client.",
        )

"""A ``journal=`` argument (a path, a DSN, a store, or nothing) turned into an open store."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ._contract import JournalStore
from ._journal import Journal
from ._location import default_journal_path, environment_dsn, is_dsn

__all__ = ["JournalArg", "open_journal", "open_for_inspection"]

JournalArg = JournalStore | str | os.PathLike[str] | None


def open_journal(journal: JournalArg) -> tuple[JournalStore, bool]:
    """(the store, whether the caller opened it and so must close it)."""
    if journal is None:
        journal = environment_dsn()  # $SAMEKEY_JOURNAL may name a PostgreSQL journal
    if journal is None or isinstance(journal, (str, os.PathLike)):
        if isinstance(journal, str) and is_dsn(journal):
            return _postgres(journal, create=True), True
        return Journal(journal), True
    if all(hasattr(journal, m) for m in ("claim", "complete", "release", "get")):
        return journal, False
    raise TypeError(
        "journal must be a path, a postgresql:// DSN, a samekey.Journal or a "
        f"JournalStore, got {journal!r}"
    )


def open_for_inspection(location: str | None, *, read_only: bool) -> JournalStore:
    """The journal the `samekey` command works on; it never creates one just to look at it.

    A database without samekey's tables (a misspelt name) is an error, not a new empty journal;
    ``read_only`` for the commands that only look (a read-only mount must not stop `list`).
    """
    text = location or environment_dsn() or str(default_journal_path())
    if is_dsn(text):
        return _postgres(text, create=False)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no journal", str(path))
    return Journal(path, read_only=read_only)


def _postgres(dsn: str, *, create: bool) -> JournalStore:
    from ._postgres import PostgresJournal  # psycopg itself is imported when it opens

    return PostgresJournal(dsn, create=create)

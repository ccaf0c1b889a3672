"""samekey: make non-idempotent HTTP calls (payments, orders, bookings) safe to retry.

One Idempotency-Key per logical operation, journaled durably before the first byte
is sent, reused by every retry, every re-run after a crash and `samekey resume`.
"""

import logging
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from ._async_client import AsyncClient
from ._client import Client
from ._contract import ClaimResult, Intent, JournalStore, OperationRecord
from ._errors import (
    AnswerNotRecorded,
    JournalError,
    JournalLocked,
    KeyExpired,
    OperationInProgress,
    OperationMismatch,
    OperationNotFound,
    RetriesExhausted,
    SameKeyError,
)
from ._hooks import RetryDetails, RetryHook
from ._journal import Journal
from ._location import default_journal_path
from ._policy import RetryBudget, RetryPolicy, set_testing
from ._resume import ResumeResult
from ._scope import operation
from ._transport import AsyncSameKeyTransport, SameKeyTransport
from ._wire import OPERATION_EXTENSION, OperationInfo, operation_info

if TYPE_CHECKING:
    from ._postgres import PostgresJournal
else:
    # Loaded on first use so that `import samekey` never imports the PostgreSQL store. Hidden from
    # type checkers: a module __getattr__ returning Any would make every misspelt samekey.Name pass.

    def __getattr__(name: str) -> Any:
        if name == "PostgresJournal":
            from ._postgres import PostgresJournal

            return PostgresJournal
        raise AttributeError(f"module 'samekey' has no attribute {name!r}")


# a library stays quiet unless the application configures logging
logging.getLogger("samekey").addHandler(logging.NullHandler())

try:  # one source of the version: pyproject.toml, as installed
    __version__ = _metadata.version("samekey")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AnswerNotRecorded",
    "AsyncClient",
    "AsyncSameKeyTransport",
    "ClaimResult",
    "Client",
    "Intent",
    "Journal",
    "JournalError",
    "JournalLocked",
    "JournalStore",
    "KeyExpired",
    "OPERATION_EXTENSION",
    "OperationInProgress",
    "OperationInfo",
    "OperationMismatch",
    "OperationNotFound",
    "OperationRecord",
    "PostgresJournal",
    "ResumeResult",
    "RetriesExhausted",
    "RetryBudget",
    "RetryDetails",
    "RetryHook",
    "RetryPolicy",
    "SameKeyError",
    "SameKeyTransport",
    "default_journal_path",
    "operation",
    "operation_info",
    "set_testing",
]

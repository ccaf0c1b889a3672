"""samekey: make non-idempotent HTTP calls (payments, orders, bookings) safe to retry.

One Idempotency-Key per logical operation, journaled durably before the first byte
is sent, reused by every retry, every re-run after a crash and `samekey resume`.
"""

import logging
from typing import TYPE_CHECKING, Any

from . import instrumentation
from ._async_client import AsyncClient
from ._client import Client
from ._contract import (
    ClaimResult,
    Intent,
    JournalStore,
    ListQuery,
    OperationRecord,
    SettleResult,
    settled_answer,
)
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
from ._hooks import EndDetails, EndHook, RetryDetails, RetryHook
from ._journal import Journal
from ._location import default_journal_path
from ._policy import RetryBudget, RetryPolicy, set_testing
from ._resume import ResumeResult
from ._scope import operation
from ._transport import AsyncSameKeyTransport, SameKeyTransport
from ._version import __version__ as __version__
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


__all__ = [
    "AnswerNotRecorded",
    "AsyncClient",
    "AsyncSameKeyTransport",
    "ClaimResult",
    "Client",
    "EndDetails",
    "EndHook",
    "Intent",
    "Journal",
    "JournalError",
    "JournalLocked",
    "JournalStore",
    "KeyExpired",
    "ListQuery",
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
    "SettleResult",
    "default_journal_path",
    "instrumentation",
    "operation",
    "operation_info",
    "set_testing",
    "settled_answer",
]

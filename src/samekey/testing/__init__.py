"""Tools for testing code that uses samekey (and for samekey's own tests).

- `PaymentServer`: a loopback server implementing the server side of Idempotency-Key.
- `FaultPlan` / `Fault`: faults that server injects around the side effect.
- `PostgresServer`: a throwaway PostgreSQL server on 127.0.0.1 (for `PostgresJournal`).
- `set_testing`: turn off real waiting between retries in your test suite.
"""

from .._policy import set_testing
from ._postgres import PostgresServer, PostgresUnavailable
from ._server import Fault, FaultPlan, PaymentServer

__all__ = ["Fault", "FaultPlan", "PaymentServer", "PostgresServer", "PostgresUnavailable", "set_testing"]

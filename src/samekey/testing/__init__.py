"""Tools for testing code that uses samekey (and for samekey's own tests).

- `PaymentServer`: a loopback server implementing the server side of Idempotency-Key;
  ``api=STRIPE`` / ``SQUARE`` / ``INCREASE`` makes it answer those SDKs (`Api`).
- `FaultProxy`: a fault-injecting proxy on 127.0.0.1 between a client and a server.
- `FaultTransport` / `AsyncFaultTransport`: inject faults under your own httpx client.
- `Fault` / `FaultPlan`: which fault hits which request, by schedule or seeded chance.
- `PostgresServer`: a throwaway PostgreSQL server on 127.0.0.1 (for `PostgresJournal`).
- `set_testing`: turn off real waiting between retries in your test suite.
"""

from .._policy import set_testing
from ._apis import INCREASE, PLAIN, SQUARE, STRIPE, Api
from ._faults import Fault, FaultPlan
from ._postgres import PostgresServer, PostgresUnavailable
from ._proxy import FaultProxy
from ._server import PaymentServer
from ._transport import AsyncFaultTransport, FaultTransport

__all__ = [
    "INCREASE",
    "PLAIN",
    "SQUARE",
    "STRIPE",
    "Api",
    "AsyncFaultTransport",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "FaultTransport",
    "PaymentServer",
    "PostgresServer",
    "PostgresUnavailable",
    "set_testing",
]

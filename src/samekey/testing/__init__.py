"""Tools for testing code that uses samekey (and for samekey's own tests).

- `PaymentServer`: a loopback server implementing the server side of Idempotency-Key.
- `FaultPlan` / `Fault`: faults that server injects around the side effect.
- `set_testing`: turn off real waiting between retries in your test suite.
"""

from .._policy import set_testing
from ._server import Fault, FaultPlan, PaymentServer

__all__ = ["Fault", "FaultPlan", "PaymentServer", "set_testing"]

"""`samekey.operation(name)`: name the operation of requests an SDK builds for you.

Stripe's, Square's and the httpx-based SDKs (Increase, Modern Treasury, Lithic, Orb) build
their requests themselves: there is no ``operation=`` to pass. A block names them instead::

    with samekey.operation("order-1042/pi"):
        stripe_client.v1.payment_intents.create(params={...})

Theory. The name lives in a `contextvars.ContextVar`, so it follows the code that runs
inside the block: the same thread, and the asyncio tasks started inside it (they copy the
context). Every samekey transport reads it (`apply`) when a request reaches it:

- a read (GET, HEAD, OPTIONS, TRACE) without a key header passes through untouched;
- a request that names its operation (``operation=``, the extension) keeps its own: explicit wins;
- any other request is the block's: it gets the block's operation name, and a value the SDK
  put in the key header (its per-call, in-memory key) is dropped, so the journaled key goes out.

One block names ONE request. The same request sent again inside it (the SDK's own retry, a
loop of yours) is the same operation: same key, or the journaled answer. A different request
(other method, URL or body) raises `OperationMismatch` before anything is sent: open one
block per request. The innermost block names the requests sent inside it; when it ends, the
outer one is in force again.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import httpx

from ._engine import Engine
from ._errors import OperationMismatch, SameKeyError
from ._plan import fingerprint, valid_operation
from ._wire import OPERATION_EXTENSION

__all__ = ["apply", "operation"]

# RFC 9110 9.2.1: reads; a block never keys them
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _Block:
    """One ``with samekey.operation(name)`` block: its name and the one request it names."""

    __slots__ = ("_lock", "_sent", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._sent: tuple[str, str] | None = None  # its request's (fingerprint, "POST https://...")

    def admit(self, fingerprint: str, described: str) -> None:
        with self._lock:
            if self._sent is None:
                self._sent = (fingerprint, described)
                return
            first_fingerprint, first = self._sent
        if fingerprint != first_fingerprint:
            now = described + (" with another body" if first == described else "")
            raise _one_request_only(self.name, first, now)


def _one_request_only(operation: str, first: str, now: str) -> OperationMismatch:
    """An `OperationMismatch` whose message speaks of the block, not of a journaled record."""
    error = OperationMismatch.__new__(OperationMismatch)
    SameKeyError.__init__(
        error,
        f"samekey.operation({operation!r}) names one request: this block already sent {first}, "
        f"and now sends {now}. Nothing was sent. Open one block per request, each with its own "
        "name (e.g. 'order-42/customer', then 'order-42/charge').",
    )
    error.operation = operation
    return error


_CURRENT: contextvars.ContextVar[_Block | None]
_CURRENT = contextvars.ContextVar("samekey.operation", default=None)


@contextlib.contextmanager
def operation(name: str) -> Iterator[None]:
    """Name the operation of the key-bearing request sent inside this block, as ``operation=`` does.

    Works with ``with`` in sync and async code (the name follows the asyncio tasks started
    inside the block). Inside it, the journaled key replaces a key the SDK set in the key
    header. One block, one request: a second, different request raises `OperationMismatch`
    before it is sent. An explicit ``operation=`` wins over the block; the innermost block wins
    over an outer one.
    """
    if not valid_operation(name):
        raise ValueError(
            "samekey.operation() takes the operation's name: a non-empty string of at most 512 "
            "characters "
            f"(e.g. 'order-42/charge'), got {name!r}"
        )
    token = _CURRENT.set(_Block(name))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def apply(engine: Engine, request: httpx.Request) -> None:
    """Give ``request`` the enclosing block's operation, if it is the block's (see the theory)."""
    block = _CURRENT.get()
    if block is None or OPERATION_EXTENSION in request.extensions:
        return
    if request.method in SAFE_METHODS and engine.key_header not in request.headers:
        return
    request.headers.pop(engine.key_header, None)  # the SDK's per-call key: the journaled one goes
    request.extensions[OPERATION_EXTENSION] = block.name
    url = engine.redactor.url(request.url)  # as the flow journals and fingerprints it
    block.admit(fingerprint(request, url, engine.config.sealer), f"{request.method} {url}")

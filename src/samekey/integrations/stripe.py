"""stripe-python over samekey: ``StripeClient(..., http_client=StripeHTTPClient(journal=...))``.

stripe-python sends through a `stripe.HTTPClient`; this one sends through a `samekey.Client`
(sync calls) or a `samekey.AsyncClient` (``*_async`` calls), both on one journal. Name each
write with ``with samekey.operation("order-1042/pi"):``: its key is then journaled before the
first byte and goes out in place of the one stripe-python makes per call (kept in memory only).

Retries: samekey's `RetryPolicy` retries (it honours ``Stripe-Should-Retry``); give the
StripeClient ``max_network_retries=0`` so that the two do not stack. Errors: a request samekey
gave up on (`RetriesExhausted`, its key kept pending) or a network error it did not retry reaches
stripe-python as ``stripe.APIConnectionError(should_retry=False)`` with samekey's message, the
samekey error as its ``__cause__``; samekey's other errors (`OperationMismatch`, `JournalError`,
...) are raised as they are: they need a fix, not a retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import anyio
import httpx
import stripe

from .._async_client import AsyncClient
from .._client import Client
from .._errors import RetriesExhausted
from .._open import JournalArg, open_journal

__all__ = ["StripeHTTPClient"]

STRIPE_TIMEOUT = 80.0  # seconds: stripe-python's own default per request
_ConnectionError: Callable[..., stripe.APIConnectionError] = stripe.APIConnectionError  # (untyped)


class StripeHTTPClient(stripe.HTTPClient):
    """A `stripe.HTTPClient` that sends through samekey's clients.

    Takes the keywords of `samekey.Client` (``journal=``, ``policy=``, ``on_retry=``, ...) and
    the httpx ones (``timeout=`` defaults to 80 s, as stripe-python's). ``transport=`` and
    ``mounts=`` go to the sync client only; ``async_transport=`` is the async client's.
    Call ``close()`` (or ``await close_async()``) once, at shutdown.
    """

    name = "samekey"

    def __init__(
        self,
        *,
        journal: JournalArg = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.setdefault("timeout", STRIPE_TIMEOUT)
        self._store, self._owns_store = open_journal(journal)  # one store for both clients
        sync_only = ("transport", "mounts")
        self._kwargs = {key: value for key, value in kwargs.items() if key not in sync_only}
        if async_transport is not None:
            self._kwargs["transport"] = async_transport
        try:
            self.client = Client(journal=self._store, **kwargs)
        except BaseException:
            self._close_store()
            raise
        self._async: AsyncClient | None = None

    @property
    def async_client(self) -> AsyncClient:
        """The `samekey.AsyncClient` of the ``*_async`` calls, made on first use."""
        if self._async is None:
            self._async = AsyncClient(journal=self._store, **self._kwargs)
        return self._async

    def key_for(self, operation: str) -> str:
        """The durable key of ``operation`` (see `samekey.Client.key_for`)."""
        return self.client.key_for(operation)

    # -- sync ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        **_: Any,
    ) -> tuple[str, int, Mapping[str, str]]:
        with _as_stripe_errors():
            response = self.client.request(method, url, headers=headers, content=post_data)
        return response.text, response.status_code, response.headers

    def request_stream(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        **_: Any,
    ) -> tuple[Iterable[bytes], int, Mapping[str, str]]:
        request = self.client.build_request(method, url, headers=headers, content=post_data)
        with _as_stripe_errors():
            response = self.client.send(request, stream=True)
        return response.iter_bytes(), response.status_code, response.headers

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self._close_store()

    # -- async --------------------------------------------------------------------------

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        with _as_stripe_errors():
            client = self.async_client
            response = await client.request(method, url, headers=headers, content=post_data)
        return response.content, response.status_code, response.headers

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[AsyncIterable[bytes], int, Mapping[str, str]]:
        client = self.async_client
        request = client.build_request(method, url, headers=headers, content=post_data)
        with _as_stripe_errors():
            response = await client.send(request, stream=True)
        return response.aiter_bytes(), response.status_code, response.headers

    async def close_async(self) -> None:
        try:
            if self._async is not None:
                await self._async.aclose()
        finally:
            self._close_store()

    def sleep_async(self, secs: float) -> Awaitable[None]:
        return anyio.sleep(secs)

    def _close_store(self) -> None:
        if self._owns_store:
            self._store.close()


@contextlib.contextmanager
def _as_stripe_errors() -> Iterator[None]:
    """What stripe-python expects of a network failure; samekey has retried it already."""
    try:
        yield
    except RetriesExhausted as exc:
        answer = exc.last_response  # the last retryable answer (a 503...), read already
        raise _ConnectionError(
            str(exc),
            http_body=None if answer is None else answer.text,
            http_status=None if answer is None else answer.status_code,
            headers=None if answer is None else answer.headers,
            should_retry=False,
        ) from exc
    except httpx.TransportError as exc:  # one samekey's policy does not retry
        error = f"{type(exc).__name__}: {exc}"
        raise _ConnectionError(error, should_retry=False) from exc

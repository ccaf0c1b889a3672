"""`samekey.AsyncClient`: an `httpx.AsyncClient` over `AsyncSameKeyTransport`.

It shares the decision core with `Client`; only the I/O is awaited.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

import anyio.to_thread
import httpx

from ._bodies import RedactBody
from ._client import refuse_samekey_transports, with_operation
from ._config import Config, KeyFormat, OnBusy
from ._contract import JournalStore, OperationRecord
from ._engine import open_engine
from ._hooks import EndHook, RetryHook
from ._open import JournalArg
from ._plan import carry_first_bytes, multipart_operation
from ._policy import RetryPolicy
from ._reserve import AsyncKeyFor
from ._resume import HeadersArg, ResumeResult, build_resume_request, bulk_resumable
from ._transport import AsyncSameKeyTransport, EngineHolder

__all__ = ["AsyncClient"]


class AsyncClient(httpx.AsyncClient, EngineHolder, AsyncKeyFor):
    """A drop-in `httpx.AsyncClient` with the same ``operation=`` semantics as `Client`."""

    def __init__(
        self,
        *,
        journal: JournalArg = None,
        policy: RetryPolicy | None = None,
        key_header: str = "Idempotency-Key",
        key_format: KeyFormat = "uuid",
        key_ttl: float | timedelta = timedelta(hours=24),
        lease: float | timedelta = 60.0,
        on_busy: OnBusy = "wait",
        redact_headers: tuple[str, ...] = (),
        retention: float | timedelta = timedelta(days=7),
        on_retry: RetryHook | Sequence[RetryHook] | None = None,
        redact_body: RedactBody = None,
        body_key: str | bytes | None = None,
        on_end: EndHook | Sequence[EndHook] | None = None,
        **kwargs: Any,
    ) -> None:
        refuse_samekey_transports("AsyncClient", kwargs)
        config = Config.of(
            journal=journal, policy=policy, key_header=key_header, key_format=key_format,
            key_ttl=key_ttl,
            lease=lease, on_busy=on_busy, redact_headers=redact_headers, retention=retention,
            on_retry=on_retry,
            redact_body=redact_body, body_key=body_key,
            on_end=on_end,
        )  # fmt: skip
        self.engine, self._owns_journal = open_engine(config)
        engine = self.engine
        try:
            super().__init__(**kwargs)
        except BaseException:
            self._close_journal()
            raise
        self._transport = AsyncSameKeyTransport.around(self._transport, engine)
        self._mounts = {
            pattern: None if t is None else AsyncSameKeyTransport.around(t, engine)
            for pattern, t in self._mounts.items()
        }

    async def request(
        self, method: str, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await super().request(method, url, **with_operation(kwargs, operation))

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        async with super().stream(method, url, **with_operation(kwargs, operation)) as response:
            yield response

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        operation = multipart_operation(request)
        if operation is not None:  # before auth, which may sign the body (see carry_first_bytes)
            await request.aread()
            record = await anyio.to_thread.run_sync(self.engine.journal.get, operation)
            carry_first_bytes(self.engine.config, self.engine.redactor, request, record)
        return await super().send(request, **kwargs)

    async def post(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.request("POST", url, operation=operation, **kwargs)

    async def put(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.request("PUT", url, operation=operation, **kwargs)

    async def patch(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.request("PATCH", url, operation=operation, **kwargs)

    async def delete(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.request("DELETE", url, operation=operation, **kwargs)

    async def resume(self, operation: str, *, headers: HeadersArg = None) -> httpx.Response:
        """The async twin of `Client.resume`."""
        request = await anyio.to_thread.run_sync(
            build_resume_request, self, self.engine, operation, headers
        )
        return await self.send(request)

    async def resume_pending(
        self, prefix: str | None = None, *, headers: HeadersArg = None
    ) -> list[ResumeResult]:
        """The async twin of `Client.resume_pending`:
        one after the other, never stopping at a failure."""
        results = []
        pending = await anyio.to_thread.run_sync(_pending, self.engine.journal, prefix)
        records, _unnamed = bulk_resumable(pending, prefix)
        for record in records:
            try:
                response = await self.resume(record.operation, headers=headers)
            except Exception as exc:
                results.append(ResumeResult(record.operation, error=exc))
            else:
                results.append(ResumeResult(record.operation, response=response))
        return results

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            self._close_journal()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        # httpx's __aexit__ closes the transports, not through aclose(): the journal needs its own
        try:
            await super().__aexit__(exc_type, exc_value, traceback)
        finally:
            self._close_journal()


def _pending(store: JournalStore, prefix: str | None) -> list[OperationRecord]:
    return store.records(prefix, include_completed=False)

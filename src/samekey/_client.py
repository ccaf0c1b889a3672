"""`samekey.Client`: an `httpx.Client` whose transports are wrapped by `SameKeyTransport`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

import httpx

from ._bodies import RedactBody
from ._config import Config, KeyFormat, OnBusy
from ._engine import open_engine
from ._hooks import EndHook, RetryHook
from ._open import JournalArg
from ._plan import carry_first_bytes, multipart_operation
from ._policy import RetryPolicy
from ._reserve import KeyFor
from ._resume import HeadersArg, ResumeResult, build_resume_request, bulk_resumable
from ._transport import AsyncSameKeyTransport, EngineHolder, SameKeyTransport
from ._wire import OPERATION_EXTENSION

__all__ = ["Client"]


def with_operation(kwargs: dict[str, Any], operation: str | None) -> dict[str, Any]:
    """httpx keywords with ``operation`` carried in the request's extensions."""
    if operation is not None:
        kwargs["extensions"] = {**(kwargs.get("extensions") or {}), OPERATION_EXTENSION: operation}
    return kwargs


def refuse_samekey_transports(kind: str, kwargs: dict[str, Any]) -> None:
    """A samekey transport given to a samekey client would be wrapped in a second one: refused.

    The inner one takes the outer one's key for a caller's key and claims the operation again:
    on the same journal (the default one, say) it finds its own client holding the lease and
    waits it out, 25-60 s per request, in silence; on another journal it records it twice.
    """
    given = [("transport", kwargs.get("transport"))]
    given += [(f"mounts[{pattern!r}]", t) for pattern, t in (kwargs.get("mounts") or {}).items()]
    plain = "httpx.AsyncHTTPTransport" if kind == "AsyncClient" else "httpx.HTTPTransport"
    for where, transport in given:
        if isinstance(transport, (SameKeyTransport, AsyncSameKeyTransport)):
            raise TypeError(
                f"{where} is a samekey.{type(transport).__name__}, but samekey.{kind} "
                "adds one itself: the two "
                "would claim every operation twice (on one journal each request waits "
                "out its own lease, "
                f"60 s). Pass the httpx transport it wraps (e.g. {plain}(...)) and give "
                f"journal=, policy= and the other samekey options to samekey.{kind}; or "
                "keep the samekey "
                f"transport under a plain httpx.{kind}."
            )


class Client(httpx.Client, EngineHolder, KeyFor):
    """A drop-in `httpx.Client` that makes writes safe to retry.

    Every httpx.Client keyword works as in httpx. The write methods, `request` and
    `stream` take ``operation=``: your stable name for the logical operation (e.g.
    ``"order-42/charge"``); its Idempotency-Key is journaled before the first send
    and reused by every attempt, every re-run and `samekey resume`.
    """

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
        refuse_samekey_transports("Client", kwargs)
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
        self._transport = SameKeyTransport.around(self._transport, engine)
        self._mounts = {
            pattern: None if t is None else SameKeyTransport.around(t, engine)
            for pattern, t in self._mounts.items()
        }

    def request(
        self, method: str, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return super().request(method, url, **with_operation(kwargs, operation))

    @contextlib.contextmanager
    def stream(
        self, method: str, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        with super().stream(method, url, **with_operation(kwargs, operation)) as response:
            yield response

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        operation = multipart_operation(request)
        if operation is not None:  # before auth, which may sign the body (see carry_first_bytes)
            request.read()
            record = self.engine.journal.get(operation)
            carry_first_bytes(self.engine.config, self.engine.redactor, request, record)
        return super().send(request, **kwargs)

    def post(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.request("POST", url, operation=operation, **kwargs)

    def put(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.request("PUT", url, operation=operation, **kwargs)

    def patch(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.request("PATCH", url, operation=operation, **kwargs)

    def delete(
        self, url: httpx.URL | str, *, operation: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.request("DELETE", url, operation=operation, **kwargs)

    def resume(self, operation: str, *, headers: HeadersArg = None) -> httpx.Response:
        """Send ``operation``'s journaled request again, with its journaled key.

        Method, URL, body and the stored non-secret headers come from the journal;
        this client's default headers, cookies and auth apply as usual, and
        ``headers`` override stored ones. A completed operation is replayed from the
        journal (nothing is sent). Raises `OperationNotFound` for an unknown operation,
        `KeyExpired` when the key is older than ``key_ttl``, and the usual errors
        (`RetriesExhausted`, ...) when the retry policy gives up.
        """
        return self.send(build_resume_request(self, self.engine, operation, headers))

    def resume_pending(
        self, prefix: str | None = None, *, headers: HeadersArg = None
    ) -> list[ResumeResult]:
        """Resume every pending operation (whose name starts with ``prefix``), oldest first.

        Never stops at a failure: each operation gets a `ResumeResult` holding either
        its response or the error that stopped it.
        """
        results = []
        records, _unnamed = bulk_resumable(
            self.engine.journal.records(prefix, include_completed=False), prefix
        )
        for record in records:
            try:
                results.append(
                    ResumeResult(
                        record.operation, response=self.resume(record.operation, headers=headers)
                    )
                )
            except Exception as exc:
                results.append(ResumeResult(record.operation, error=exc))
        return results

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._close_journal()

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        # httpx's __exit__ closes the transports, not through close(): the journal needs its own
        try:
            super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._close_journal()

"""Resuming journaled operations: rebuild the request a crashed run was sending.

Both clients use `build_resume_request` and then send the request through their
normal flow with the operation named in its extensions, so `_flow.operation_flow`
claims the pending record and reuses its key (or replays a completed one).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from ._contract import OperationRecord
from ._engine import Engine
from ._errors import OperationNotFound, SameKeyError
from ._plan import UNNAMED_PREFIX
from ._redaction import REDACTED
from ._reserve import refuse_reserved, unreserved
from ._sealing import KEY_ENV, is_sealed
from ._wire import OPERATION_EXTENSION, header_bytes

logger = logging.getLogger("samekey")

__all__ = [
    "HeadersArg",
    "ResumeResult",
    "RetargetTransport",
    "build_resume_request",
    "bulk_resumable",
]

HeadersArg = Mapping[str, str] | Sequence[tuple[str, str]] | Sequence[tuple[bytes, bytes]] | None


@dataclass(frozen=True)
class ResumeResult:
    """The outcome of resuming one operation: a response, or the error that stopped it."""

    operation: str
    response: httpx.Response | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


UNNAMED_WARNING = (
    "an unnamed operation (sent without operation=): running the code again made a NEW "
    "operation with "
    "a new key, so the server may already have acted on a later copy. Check the server, "
    "then resume it "
    "by its name if it is still needed, or `samekey forget` it"
)


def bulk_resumable(
    records: Sequence[OperationRecord], prefix: str | None
) -> tuple[list[OperationRecord], list[OperationRecord]]:
    """(the pending records a bulk resume sends, the unnamed ones it leaves alone).

    Resuming ``auto:`` records blindly could act twice: their code cannot reuse their key,
    so a re-run of it sent the same payment again under a new one. Only a prefix that
    names them (``auto:``) or resuming one by name sends them.
    """
    records = unreserved(records)
    if prefix is not None and prefix.startswith(UNNAMED_PREFIX):
        return list(records), []
    named = [r for r in records if not r.operation.startswith(UNNAMED_PREFIX)]
    unnamed = [r for r in records if r.operation.startswith(UNNAMED_PREFIX)]
    for record in unnamed:
        logger.warning("samekey resume skipped %s: %s", record.operation, UNNAMED_WARNING)
    return named, unnamed


def build_resume_request(
    client: httpx.Client | httpx.AsyncClient,
    engine: Engine,
    operation: str,
    headers: HeadersArg = None,
) -> httpx.Request:
    """The journaled request of ``operation``, rebuilt on ``client``.

    The stored (non-secret) headers are the request's own headers, so the client's
    default headers, cookies and auth apply as for any request; ``headers`` override
    the stored ones (e.g. a header the journal never stores).
    """
    record = engine.journal.get(operation)
    if record is None:
        raise OperationNotFound(operation, engine.journal.location)
    refuse_reserved(record)
    if record.key_header.lower() != engine.key_header.lower():
        raise SameKeyError(
            f"operation {operation!r} was recorded with its key in the "
            f"{record.key_header!r} header, "
            f"this client sends keys in {engine.key_header!r}. Nothing was sent. "
            f"Resume it with a client created with key_header={record.key_header!r}."
        )
    hidden = [
        name for name, value in httpx.URL(record.url).params.multi_items() if value == REDACTED
    ]
    if record.pending and hidden:
        raise SameKeyError(
            f"operation {operation!r} carried credentials in its URL "
            f"({', '.join(hidden)}), which the journal "
            "never stores. Nothing was sent. Run the code that made it again (same "
            "operation name, same URL): "
            f"it sends the same key, {record.key}."
        )
    refuse_protected_body(record)
    # as bytes: a str header value would go out as ASCII, and fail on 'José' (see header_bytes)
    merged = httpx.Headers(
        [(header_bytes(name), header_bytes(value)) for name, value in record.request_headers]
    )
    if headers is not None:
        merged.update(httpx.Headers(headers))
    # the journaled key, as a caller key: the flow checks it against the record
    merged[engine.key_header] = record.key
    return client.build_request(
        record.method,
        record.url,
        content=record.request_body,
        headers=merged,
        extensions={OPERATION_EXTENSION: operation},
    )


def refuse_protected_body(record: OperationRecord) -> None:
    """Never send a body the journal does not hold
    whole: redacted fields, or sealed with a key not given."""
    if not record.pending:
        return  # replayed, not sent
    if record.body_redacted:
        raise SameKeyError(
            f"operation {record.operation!r} was recorded with redact_body: fields of "
            "its body (card data) were never "
            "stored, so it cannot be sent from the journal. Nothing was sent. Run the "
            "code that made it again "
            "(same operation name, same body): it sends the real body with the same "
            f"key, {record.key}."
        )
    if is_sealed(record.request_body):
        raise SameKeyError(
            f"operation {record.operation!r} has an encrypted body and this client has "
            "no body_key. Nothing was sent. "
            f"Resume it with the key its client had: body_key=... or ${KEY_ENV}."
        )


class RetargetTransport(httpx.BaseTransport):
    """Send every request to another origin (scheme, host, port), keeping path and query.

    The journal keeps the original URL as part of the operation's identity, so
    retargeting happens below samekey, on the wire only (`samekey resume --base-url`).
    """

    def __init__(self, base_url: str, transport: httpx.BaseTransport | None = None) -> None:
        self.base = self.parse_base_url(base_url)
        self.inner = transport if transport is not None else httpx.HTTPTransport()

    @staticmethod
    def parse_base_url(base_url: str) -> httpx.URL:
        """The origin to send to; ValueError for anything but http(s)://host[:port].

        A path, query or fragment is refused, not dropped: the recorded path is what is sent,
        so a prefix given here would not be (another endpoint than the operator meant).
        Credentials are refused without echoing them: they belong in a header (``-H``).
        """
        base = httpx.URL(base_url)
        if base.userinfo:
            raise ValueError(
                "a base URL must not carry credentials: pass them as a header (-H "
                "'Authorization: ...')"
            )
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"base URL must look like http://host[:port], got {base_url!r}")
        if base.raw_path not in (b"/", b"/?") or base.fragment:
            raise ValueError(
                f"base URL must look like http://host[:port], got {base_url!r}: only the "
                "origin is replaced, "
                "the recorded path and query are kept, so a path, query or fragment "
                "here would not be sent"
            )
        return base

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(
            scheme=self.base.scheme, host=self.base.host, port=self.base.port
        )
        request.headers["Host"] = request.url.netloc.decode("ascii")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

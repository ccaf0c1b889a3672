"""Between the journal and the wire: header bytes, and the answers samekey hands back.

Header values are journaled decoded as latin-1, which maps every byte to one character
and back, so a UTF-8 filename or a Latin-1 name replays byte for byte. A replayed answer
is built from the record and marked with an `OperationInfo`, as a sent one is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from ._contract import OperationRecord

__all__ = ["OPERATION_EXTENSION", "OperationInfo", "header_bytes", "header_text", "operation_info"]

logger = logging.getLogger("samekey")

OPERATION_EXTENSION = "samekey.operation"  # request.extensions key naming the logical operation
INFO_EXTENSION = "samekey"  # response.extensions key holding an OperationInfo


@dataclass(frozen=True)
class OperationInfo:
    """What samekey did for a response: ``samekey.operation_info(response)``."""

    operation: str | None
    key: str | None
    attempts: int
    replayed: bool  # True: answered from the journal, no network call was made


def operation_info(response: httpx.Response) -> OperationInfo | None:
    """The `OperationInfo` samekey attached to ``response``, or None for other responses."""
    info = response.extensions.get(INFO_EXTENSION)
    return info if isinstance(info, OperationInfo) else None


def header_bytes(value: str) -> bytes:
    """A journaled header value (or name) as the bytes that were on the wire."""
    return value.encode("latin-1")


def header_text(value: str) -> str:
    """A journaled header value for people to read: UTF-8 text shown as text."""
    if value.isascii():
        return value
    try:
        return header_bytes(value).decode("utf-8")
    except UnicodeError:  # not UTF-8 on the wire (or not journaled by samekey): shown as stored
        return value


def replay(record: OperationRecord) -> httpx.Response:
    """The completed operation's answer, from the journal: nothing is sent."""
    info = OperationInfo(record.operation, record.key, record.attempts, replayed=True)
    logger.info(
        "samekey replay operation=%s key=%s status=%s (completed earlier, not sent again)",
        record.operation, record.key, record.response_status,
        extra={"operation": record.operation, "key": record.key, "attempt": 0},
    )  # fmt: skip
    return httpx.Response(
        record.response_status or 0,
        headers=[
            (header_bytes(name), header_bytes(value)) for name, value in record.response_headers
        ],
        stream=httpx.ByteStream(record.response_body or b""),
        extensions={INFO_EXTENSION: info},
    )


def settled(request: httpx.Request, response: httpx.Response, key_header: str) -> httpx.Response:
    """``response``, with ``request`` made ready for a redirect httpx may follow.

    httpx builds a followed redirect from this request's headers and *same* extensions dict.
    The follow-up is not this operation: its name goes. A 303 (and 301/302 for POST) turns
    into a GET that needs no key; a 307/308 re-sends the same request elsewhere, key and all.
    """
    if 300 <= response.status_code < 400 and response.is_redirect:
        request.extensions.pop(OPERATION_EXTENSION, None)
        if response.status_code not in (307, 308):
            request.headers.pop(key_header, None)
    return response

"""Records shaped for the operator: escaped text, tables measured as the terminal shows them,
ages, and the JSON fields the README documents.

Widths come from `wcwidth`: a CJK character takes two columns and a combining accent none,
so ``len()`` misaligned every column after a name like ``支払い-1``.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from typing import Any, TextIO

from wcwidth import wcswidth, wcwidth

from .._contract import OperationRecord
from .._location import environment_dsn, is_dsn
from .._redaction import dsn_secrets, mask_dsn, scrub
from .._sealing import KEY_ENV, is_sealed
from .._wire import header_text

__all__ = [
    "Escaped",
    "clip",
    "details",
    "escape",
    "human_age",
    "iso",
    "summary",
    "table",
    "width",
    "without_password",
]

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class Escaped:
    """Text for a terminal: control characters out of the journal (a server's answer or header, an
    error text) are shown as escapes, never run (an ESC sequence could rewrite the screen or the
    clipboard, a bidi override could reverse what an operator reads). Newlines and tabs stay."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(escape(text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, ...
        return getattr(self.stream, name)


def escape(text: str) -> str:
    """``text`` with its control characters as escapes (``\\x1b``), as `Escaped` writes it."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal once escaped (a character wcwidth cannot measure
    counts as 1)."""
    if text.isascii() and text.isprintable():  # most cells: one column a character
        return len(text)
    text = escape(text)
    measured = wcswidth(text)
    if measured >= 0:
        return int(measured)
    return sum(max(wcwidth(char), 1 if char.isprintable() else 0) for char in text)


def clip(text: str | None, columns: int) -> str:
    """``text`` on one line, cut to ``columns`` terminal columns with an ellipsis."""
    text = (text or "").replace("\n", " ")
    if width(text) <= columns:
        return text
    kept, used = [], 0
    for char in text:
        used += width(char)
        if used > columns - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def table(rows: list[list[str]], out: TextIO) -> None:
    """Left-aligned columns two spaces apart, padded by displayed width."""
    widths = [max(width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell + " " * (w - width(cell)) for cell, w in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


def iso(ts: float | None) -> str | None:
    return (
        None
        if ts is None
        else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
    )


def human_age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return (
                f"{seconds / size:.0f}{unit}"
                if seconds >= 10 * size
                else f"{seconds / size:.1f}{unit}"
            )
    return f"{seconds:.0f}s"


def body_fields(prefix: str, body: bytes | None) -> dict[str, Any]:
    if body is None:
        return {prefix: None, f"{prefix}_encoding": None}
    if is_sealed(body):  # read without the client's body_key
        return {
            prefix: f"(encrypted; set ${KEY_ENV} to the client's body_key to read it)",
            f"{prefix}_encoding": "encrypted",
        }
    try:
        return {prefix: body.decode("utf-8"), f"{prefix}_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {prefix: base64.b64encode(body).decode("ascii"), f"{prefix}_encoding": "base64"}


def attempt_unrecorded(record: OperationRecord) -> bool:
    """Claimed, no attempt recorded, lease never freed: its first attempt may have been sent.

    The journal records an attempt's outcome after it: a process killed mid-attempt, or a
    completion that met a full disk (and the lease release with it), leaves 0 attempts behind.
    """
    return (
        record.pending
        and record.attempts == 0
        and record.lease_owner is not None
        and record.method != ""
    )


def attempts_text(record: OperationRecord) -> str:
    """ATTEMPTS as an operator reads it: ``1?`` for a first attempt that may have been sent."""
    return "1?" if attempt_unrecorded(record) else str(record.attempts)


def summary(record: OperationRecord, now: float) -> dict[str, Any]:
    """The fields of ``samekey list --json`` (documented in the README)."""
    return {
        "operation": record.operation,
        "state": record.state,
        "method": record.method,
        "url": record.url,
        "key": record.key,
        "key_header": record.key_header,
        "created_at": iso(record.created_at),
        "age_seconds": round(now - record.created_at, 3),
        "attempts": record.attempts,
        "attempt_unrecorded": attempt_unrecorded(record),  # a first attempt may have been sent
        "last_error": record.last_error,
        "completed_at": iso(record.completed_at),
        "response_status": record.response_status,
        "lease_owner": record.lease_owner,
        "lease_expires_at": iso(record.lease_expires),
        "settled_by_hand": record.settled_by_hand,
        "settled_note": record.settled_note,
    }


def details(record: OperationRecord, now: float) -> dict[str, Any]:
    """``summary`` plus what ``samekey show --json`` adds: headers and bodies."""
    return {
        **summary(record, now),
        "updated_at": iso(record.updated_at),
        "fingerprint": record.fingerprint,
        "request_headers": [[k, header_text(v)] for k, v in record.request_headers],
        **body_fields("request_body", record.request_body),
        "response_headers": [[k, header_text(v)] for k, v in record.response_headers],
        **body_fields("response_body", record.response_body),
    }


def without_password(journal: str | None, text: str) -> str:
    """``text`` with the journal DSN's password masked: a driver's message may quote it."""
    dsn = journal or environment_dsn()
    if not dsn or not is_dsn(dsn):
        return text
    return scrub(text.replace(dsn, mask_dsn(dsn)), dsn_secrets(dsn))

"""The row both SQL stores keep: its columns, the values of a new record, and the mapping back.

The SQLite and the PostgreSQL stores share one table layout, so that a record reads the
same from either; headers are kept as JSON lists of [name, value] pairs.

A record's request (its name, key and what was sent) never changes once written, so a
checksum of it goes with it and is checked on every read: a record damaged on disk is
reported as damaged, never taken for another operation (nor sent with a damaged key).
A row without one (written by hand) is not checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _quote

from ._contract import Intent, ListQuery, OperationRecord
from ._errors import JournalError

COLUMNS = (
    "operation, key, key_header, method, url, fingerprint, request_headers, request_body, state, "
    "created_at, updated_at, completed_at, attempts, last_error, response_status, "
    "response_headers, "
    "response_body, lease_owner, lease_expires, settled_note, checksum"
)
PURGE_CHUNK = 5000  # completed records deleted per transaction by a purge
# what `settle` writes (placeholders %s; SQLite's store swaps them for ?): the answer, the
# note, the lease dropped; attempts and last_error stay, the history of what was tried
SETTLE_SET = (
    "state = 'completed', completed_at = %s, updated_at = %s, response_status = %s, "
    "response_headers = %s, response_body = %s, settled_note = %s, "
    "lease_owner = NULL, lease_expires = NULL"
)


def summary_columns(empty_bytes: str) -> str:
    """``COLUMNS`` with the headers and bodies read
    as empty (``empty_bytes``: the dialect's ``b''``)."""
    empty = {
        "request_headers": "'[]'",
        "request_body": empty_bytes,
        "response_headers": "NULL",
        "response_body": "NULL",
        "checksum": "NULL",  # the request is not read: nothing to check it against
    }
    return ", ".join(empty.get(name, name) for name in COLUMNS.split(", "))


def page_filters(query: ListQuery, mark: str) -> tuple[list[str], list[object]]:
    """The WHERE terms of a `ListQuery` but its prefix (each store has its own), with ``mark`` as
    placeholder. The state is a literal, not a parameter: SQLite uses a partial index only
    for a query whose WHERE names its condition as written."""
    where: list[str] = []
    params: list[object] = []
    if query.state is not None:
        if query.state not in ("pending", "completed"):
            raise ValueError(f"state must be 'pending', 'completed' or None, got {query.state!r}")
        where.append(f"state = '{query.state}'")
    if query.created_before is not None:
        where.append(f"created_at <= {mark}")
        params.append(query.created_before)
    if query.after is not None:
        where.append(f"(created_at, operation) > ({mark}, {mark})")
        params += [float(query.after[0]), str(query.after[1])]
    return where, params


def headers_to_json(headers: Iterable[tuple[str, str]]) -> str:
    # what json.dumps(..., separators=(",", ":")) writes, without building an encoder per call
    return "[" + ",".join(f"[{_quote(k)},{_quote(v)}]" for k, v in headers) + "]"


@functools.lru_cache(
    maxsize=256
)  # a client sends the same few sets of request headers again and again
def request_headers_json(headers: tuple[tuple[str, str], ...]) -> str:
    return headers_to_json(headers)


def headers_from_json(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    return tuple((str(k), str(v)) for k, v in json.loads(text))


def insert_params(intent: Intent, owner: str, now: float, expires: float) -> tuple[object, ...]:
    """The values of a new pending record, in the order of the stores' INSERT statements."""
    headers = request_headers_json(intent.request_headers)
    return (
        intent.operation, intent.key, intent.key_header, intent.method, intent.url,
        intent.fingerprint,
        headers, intent.request_body, now, now, owner, expires, checksum(intent, headers),
    )  # fmt: skip


def checksum(intent: Intent, headers_json: str) -> str:
    """The checksum of a record's request as journaled (``intent`` carries the record's key)."""
    fields = (intent.operation, intent.key, intent.key_header, intent.method, intent.url,
              intent.fingerprint, headers_json)  # fmt: skip
    return _digest(fields, intent.request_body)


def _digest(fields: tuple[str, ...], body: bytes) -> str:
    # each field then a NUL, then the body: one buffer, one update (the same digest)
    text = "\0".join(fields) + "\0"
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
    digest.update(body)
    return digest.hexdigest()


def _check(record: OperationRecord, headers_json: str, stored: object, location: str) -> None:
    """``record`` as read matches its checksum: over the headers' stored text, as written."""
    fields = (record.operation, record.key, record.key_header, record.method, record.url,
              record.fingerprint, headers_json)  # fmt: skip
    if _digest(fields, record.request_body) != stored:
        raise JournalError(
            location,
            f"the record of operation {record.operation!r} is damaged (what it holds no longer "
            "matches its checksum: its URL, key or body may have changed on disk)",
            "Nothing was sent. Check the disk or database; ask the server what it did under "
            "this operation before you settle it by hand or `samekey forget` it.",
        )


def record_from_row(row: tuple[object, ...], location: str = "(journal)") -> OperationRecord:
    """The record of a row read with ``COLUMNS``; a JournalError if its request is damaged."""
    (op, key, key_header, method, url, fp, req_h, req_b, state, created, updated, completed,
     attempts, last_error, status, resp_h, resp_b, owner, expires, settled_note,
     stored) = row  # fmt: skip
    record = OperationRecord(
        operation=str(op),
        key=str(key),
        key_header=str(key_header),
        method=str(method),
        url=str(url),
        fingerprint=str(fp),
        request_headers=headers_from_json(req_h),  # type: ignore[arg-type]
        request_body=bytes(req_b),  # type: ignore[call-overload]
        state="completed" if state == "completed" else "pending",
        created_at=float(created),  # type: ignore[arg-type]
        updated_at=float(updated),  # type: ignore[arg-type]
        completed_at=None if completed is None else float(completed),  # type: ignore[arg-type]
        attempts=int(attempts),  # type: ignore[call-overload]
        last_error=None if last_error is None else str(last_error),
        response_status=None if status is None else int(status),  # type: ignore[call-overload]
        response_headers=headers_from_json(resp_h),  # type: ignore[arg-type]
        response_body=None if resp_b is None else bytes(resp_b),  # type: ignore[call-overload]
        lease_owner=None if owner is None else str(owner),
        lease_expires=None if expires is None else float(expires),  # type: ignore[arg-type]
        settled_note=None if settled_note is None else str(settled_note),
    )
    if stored is not None:
        _check(record, str(req_h), stored, location)
    return record


def purge_in_chunks(delete_oldest: Callable[[int], int], limit: int | None) -> int:
    """Call ``delete_oldest(n)`` (delete up to n old completed records, the oldest first, one
    transaction; returns how many) until none is left or ``limit`` records are gone."""
    removed = 0
    while limit is None or removed < limit:
        size = PURGE_CHUNK if limit is None else min(PURGE_CHUNK, limit - removed)
        done = delete_oldest(size)
        removed += done
        if done < size:
            return removed
    return removed

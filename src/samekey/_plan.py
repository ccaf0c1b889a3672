"""What a request is as an operation: its name, its key, its fingerprint, what is journaled.

A POST names its operation with ``operation=`` (or carries the caller's key, or gets an
``auto:`` name of its own). The fingerprint (method, URL as journaled, body) tells a
re-run of the same operation from another one sent under the same name. Idempotent
methods without a name are retried without a key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import httpx

from ._config import Config
from ._contract import Intent, OperationRecord, build
from ._identity import at_fork_in_child
from ._redaction import Redactor
from ._sealing import KEY_ENV, Sealer, is_sealed
from ._wire import OPERATION_EXTENSION, header_bytes

__all__ = [
    "UNNAMED_PREFIX",
    "Plan",
    "carry_first_bytes",
    "make_plan",
    "mismatch",
    "multipart_operation",
]

# Idempotent by RFC 9110: retried without a key when no operation is named. Every other method
# (POST, PATCH, LOCK, a custom one) may act twice, so it is keyed and journaled.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
MAX_OPERATION_LENGTH = 512
KEY_POOL = 512  # keys drawn from the OS at once (8 KiB of randomness)
# A POST sent without operation= is journaled as "auto:<uuid>". Running the code again makes a
# NEW unnamed operation with a new key, so nothing resumes these in bulk (see _resume).
UNNAMED_PREFIX = "auto:"
KEYED = "hmac:"  # a fingerprint keyed with the client's body_key


@dataclass(slots=True)  # not frozen: see the calls in _contract
class Plan:
    intent: Intent
    caller_key: bool  # the caller set the key header: it must match the record's


def make_plan(config: Config, redactor: Redactor, request: httpx.Request) -> Plan | None:
    """The journal intent for a request, or None when it is retried without a key."""
    operation = request.extensions.get(OPERATION_EXTENSION)
    if operation is None and request.method in IDEMPOTENT_METHODS:
        return None
    caller_key, headers = redactor.scan_headers(request.headers)
    if operation is None:
        operation = f"key:{caller_key}" if caller_key else f"{UNNAMED_PREFIX}{uuid4()}"
    elif not valid_operation(operation):
        raise ValueError(
            f"operation must be a non-empty string of at most {MAX_OPERATION_LENGTH} characters, "
            "valid text (UTF-8, no NUL), naming the logical operation (e.g. "
            f"'order-42/charge'), got {operation!r}"
        )
    url = redactor.url(request.url)
    intent = build(
        Intent,
        operation=operation,
        key=caller_key or new_key(config),
        key_header=config.key_header,
        method=request.method,
        url=url,
        fingerprint=fingerprint(request, url, config.sealer),
        request_headers=headers,
        request_body=request.content,
    )
    return Plan(intent, caller_key is not None)


def fingerprint(request: httpx.Request, url: str, sealer: Sealer | None = None) -> str:
    # with a body_key, keyed: a plain hash of a body holding a card number can be enumerated
    digest = hashlib.sha256() if sealer is None else sealer.keyed()
    digest.update(f"{request.method}\n{url}\n".encode())
    digest.update(_without_random_boundary(request.content, request.headers))
    return digest.hexdigest() if sealer is None else KEYED + digest.hexdigest()


def new_key(config: Config) -> str:
    value = uuid4()
    return f'"{value}"' if config.key_format == "structured" else value


def uuid4() -> str:
    """str(uuid.uuid4()), from a pool drawn in bulk: one os.urandom per KEY_POOL keys."""
    while True:
        try:
            return _keys.pop()  # atomic: two threads never get the same key
        except IndexError:
            _keys.extend(_draw_keys())


def _draw_keys() -> list[str]:
    pool = os.urandom(16 * KEY_POOL).hex()
    return [_as_uuid4(pool[i : i + 32]) for i in range(0, len(pool), 32)]


def _as_uuid4(h: str) -> str:
    # version 4 (nibble 12), RFC 4122 variant (nibble 16: 8, 9, a or b)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_keys: list[str] = []
# a forked child must never hand out the keys its parent still holds: it draws its own
at_fork_in_child(_keys.clear)


def valid_operation(operation: object) -> bool:
    # a lone surrogate cannot be stored; PostgreSQL refuses NUL in text
    if (
        not isinstance(operation, str)
        or not operation.strip()
        or len(operation) > MAX_OPERATION_LENGTH
    ):
        return False
    if "\0" in operation:
        return False
    try:
        operation.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _without_random_boundary(body: bytes, headers: httpx.Headers) -> bytes:
    # httpx picks a random multipart boundary per request (files=...): the same upload built
    # again by a re-run must still be the same operation, so the fingerprint ignores it
    if not body.startswith(b"--"):  # not multipart: the common case costs one check
        return body
    kind, _, params = headers.get("content-type", "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return body
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return body.replace(value.strip('"').encode("latin-1"), b"samekey-boundary")
    return body


def mismatch(plan: Plan, record: OperationRecord) -> str | None:
    """Why ``record`` is another operation than ``plan``'s, or None when it is the same."""
    intent = plan.intent
    if record.method != intent.method or record.url != intent.url:
        return f"it was {record.method} {record.url}, now {intent.method} {intent.url}"
    if record.fingerprint.startswith(KEYED) and not intent.fingerprint.startswith(KEYED):
        # also what keeps a client without the key from replaying an answer it cannot open
        return (
            "it was recorded by a client with a body_key and this one has none: pass "
            f"body_key= or set ${KEY_ENV}"
        )
    if intent.fingerprint.startswith(KEYED) and not record.fingerprint.startswith(KEYED):
        return (
            "it was recorded by a client without a body_key: its body cannot be compared "
            "with this one's"
        )
    if record.fingerprint != intent.fingerprint:
        return "same method and URL, different body"
    if plan.caller_key and record.key != intent.key:
        return f"its key is {record.key}, the request now carries {intent.key}"
    if record.pending and record.key_header.lower() != intent.key_header.lower():
        # the server knows the key under the header it came in: in another one it is no key at all
        return (
            f"its key was sent in the {record.key_header!r} header, this client sends keys in "
            f"{intent.key_header!r}; send it again with a client created with "
            f"key_header={record.key_header!r}"
        )
    return None


def multipart_operation(request: httpx.Request) -> str | None:
    """The operation of a multipart request (a re-run of it may need `carry_first_bytes`), else
    None.

    Most requests are not multipart: they cost a header lookup and no journal read.
    """
    operation = request.extensions.get(OPERATION_EXTENSION)
    if not isinstance(operation, str):
        return None
    if isinstance(request.stream, httpx.ByteStream) and not request.content.startswith(b"--"):
        return None  # read at once (json=, content=) and no multipart body: no header scan
    # the raw pairs: Headers.get decodes every header of a new request first (~2 µs)
    for name, value in request.headers.raw:
        if name.lower() == b"content-type":
            kind = value.partition(b";")[0].strip().lower()
            return operation if kind == b"multipart/form-data" else None
    return None


def carry_first_bytes(
    config: Config, redactor: Redactor, request: httpx.Request, record: OperationRecord | None
) -> None:
    """Before the client's auth runs: a re-run of a pending multipart operation carries its first
    bytes.

    The transport swaps them in too (`as_first_sent`), but only after auth: an `httpx.Auth` that
    signs the body (HMAC, SigV4) would have signed the re-run's own boundary, and the server would
    refuse the signature. ``request`` has been read.
    """
    if record is None or not record.pending or record.request_body == request.content:
        return
    plan = make_plan(config, redactor, request)
    if plan is not None and mismatch(plan, record) is None:
        as_first_sent(request, record)


def as_first_sent(request: httpx.Request, record: OperationRecord) -> None:
    """Send a multipart body built again (same fingerprint, new random boundary) as first sent.

    A server that compares raw bodies under a key (as the IETF draft allows) would take the new
    boundary for another payload and answer 422, recorded then as the operation's answer.
    """
    stored = {name.lower(): value for name, value in record.request_headers}
    content_type = stored.get("content-type")
    if content_type is None or record.body_redacted or is_sealed(record.request_body):
        return  # a body with fields never stored (or one this client cannot open) is never sent
    request.headers["Content-Type"] = header_bytes(content_type).decode("latin-1")
    if (
        "Transfer-Encoding" not in request.headers
    ):  # never both (RFC 9112 6.1): a chunked body stays chunked
        request.headers["Content-Length"] = str(len(record.request_body))
    request.stream = httpx.ByteStream(record.request_body)
    request._content = record.request_body  # what request.content (and a retry's re-read) returns

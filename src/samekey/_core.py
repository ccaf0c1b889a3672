"""The decision core, shared by the sync and the async client; it performs no I/O.

Theory. A request passes through one generator, `operation_flow`, that *decides*
and yields the I/O it needs as actions; a driver (sync or async) performs each
action and sends the result back in, like httpx's auth flows:

    Call(m, *args)     run journal.m(*args), send back its result (or throw its error)
    Send(request)      send the request once, send back the answer: read whole when
                       it is journaled (buffer=True), else still streaming, as httpx has it
    Read(response)     read a streaming answer whole (the last one, kept for the caller)
    Discard(response)  close a streaming answer that is not handed on (a retry follows)
    Sleep(seconds)     wait, then continue

The ``on_retry`` hooks are called by the flow itself, right before a retry's Sleep, so both
drivers call them once per retry; never for a first attempt, nor when the flow gives up.

A keyed operation's journal record moves through these states (h11 style):

    (none)  --claim-->  PENDING --definitive answer-->  COMPLETED --re-run--> replay
                          |  ^
       retryable answer,  |  |  same key, next attempt / next run / resume
       401/407 challenge  v  |
                        PENDING (lease released, key kept)

A PENDING record is never given a new key; a COMPLETED one is never sent again.
When to retry and how long to wait is tenacity's `Retrying.iter()` fed one outcome
at a time, so the policy's strategies decide the same way for both drivers.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import httpx
import tenacity

from ._errors import (
    AnswerNotRecorded,
    JournalError,
    KeyExpired,
    OperationInProgress,
    OperationMismatch,
    RetriesExhausted,
    command,
    error_text,
)
from ._hooks import RetryDetails, RetryHook, hooks_from, run_hooks
from ._journal import (
    PROCESS,
    Intent,
    JournalStore,
    OperationRecord,
    is_secret_header,
    is_secret_param,
    takes_keyword,
)
from ._policy import RetryPolicy, _Exhausted, server_wait, to_seconds

__all__ = ["OPERATION_EXTENSION", "Engine", "OperationInfo", "abandon", "operation_flow", "operation_info"]

logger = logging.getLogger("samekey")
logger.addHandler(logging.NullHandler())  # a library stays quiet unless the app configures logging

OPERATION_EXTENSION = "samekey.operation"  # request.extensions key naming the logical operation
INFO_EXTENSION = "samekey"  # response.extensions key holding an OperationInfo
# Idempotent by RFC 9110: retried without a key when no operation is named. Every other method
# (POST, PATCH, LOCK, a custom one) may act twice, so it is keyed and journaled.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
MAX_OPERATION_LENGTH = 512
PURGE_INTERVAL = 3600.0  # seconds between two lazy purges of completed records by one client
PURGE_BATCH = 1000  # records one lazy purge deletes at most (a few ms), so no request stalls on a backlog
PURGE_BACKLOG_PAUSE = 1.0  # seconds until the next batch when a purge left old records behind
LEASE_MARGIN = 5.0  # seconds a lease adds to an attempt's timeouts: the client's own work around it
_NOT_STORED_HEADERS = frozenset({"content-length", "host", "transfer-encoding", "connection"})
# Refused before the server acted on the request: its key stays pending (not completed), so
# httpx's auth flow (Digest) or a re-run with fixed credentials sends the same key again.
NOT_ACTED_ON = frozenset({401, 407})

REDACTED = "REDACTED"  # what a secret query value is journaled as
# A POST sent without operation= is journaled as "auto:<uuid>". Running the code again makes a
# NEW unnamed operation with a new key, so nothing resumes these in bulk (see _resume).
UNNAMED_PREFIX = "auto:"

# An HTTP field name (RFC 9110 token): the key header is sent on every request of an operation for life
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

KeyFormat = Literal["uuid", "structured"]
OnBusy = Literal["wait", "raise"]


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


# -- actions ----------------------------------------------------------------------------


class Call:
    """Run a JournalStore method with these arguments."""

    __slots__ = ("args", "method")

    def __init__(self, method: str, *args: Any) -> None:
        self.method = method
        self.args = args

    def run(self, journal: JournalStore) -> Any:
        return getattr(journal, self.method)(*self.args)


@dataclass(frozen=True)
class Send:
    request: httpx.Request
    buffer: bool = True


@dataclass(frozen=True)
class Read:
    response: httpx.Response


@dataclass(frozen=True)
class Discard:
    response: httpx.Response


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Call | Send | Read | Discard | Sleep
Flow = Generator[Action, Any, httpx.Response]


@dataclass(frozen=True)
class Plan:
    intent: Intent
    caller_key: bool  # the caller set the key header: it must match the record's


class Engine:
    """The per-client configuration the flow reads; immutable once built."""

    def __init__(
        self,
        *,
        journal: JournalStore,
        policy: RetryPolicy | None,
        key_header: str = "Idempotency-Key",
        key_format: KeyFormat = "uuid",
        key_ttl: float | timedelta = timedelta(hours=24),
        lease: float | timedelta = 60.0,
        on_busy: OnBusy = "wait",
        redact: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
        retention: float | timedelta = timedelta(days=7),
        on_retry: RetryHook | Sequence[RetryHook] | None = None,
    ) -> None:
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a samekey.RetryPolicy, got {policy!r}")
        if key_format not in ("uuid", "structured"):
            raise ValueError(
                f"key_format must be 'uuid' (bare, as Stripe) or 'structured' (IETF draft), got {key_format!r}"
            )
        if on_busy not in ("wait", "raise"):
            raise ValueError(f"on_busy must be 'wait' or 'raise', got {on_busy!r}")
        if not isinstance(key_header, str) or not FIELD_NAME.fullmatch(key_header):
            raise ValueError(
                "key_header must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, no space or "
                f"colon), e.g. 'Idempotency-Key', got {key_header!r}"
            )
        self.journal = journal
        self.policy = policy or RetryPolicy()
        self.key_header = key_header
        self.key_format: KeyFormat = key_format
        self.key_ttl = to_seconds(key_ttl, "key_ttl", allow_zero=False)
        self.lease = to_seconds(lease, "lease", allow_zero=False)
        if not math.isfinite(self.lease):  # an owner that vanished on another host would hold it forever
            raise ValueError(
                f"lease must be a finite duration, e.g. lease=60 (seconds, renewed at every retry), got {lease!r}"
            )
        self.on_busy: OnBusy = on_busy
        self.redact = frozenset(h.lower() for h in redact)
        self.clock = clock
        self.retention = to_seconds(retention, "retention", allow_zero=False)
        self.on_retry = hooks_from(on_retry)
        self._next_purge = float("-inf")  # lazy purge of old completed records, once per PURGE_INTERVAL
        self._purge_lock = threading.Lock()
        self._host = socket.gethostname()
        self._owner_tag = uuid.uuid4().hex[:12]
        self._owner_counter = itertools.count(1)
        self._key_name = self.key_header.lower()
        self._not_stored = _NOT_STORED_HEADERS | {self._key_name}
        self._hidden: dict[str, bool] = {}  # header name -> never journaled (a client sees few names)

    def purge_due(self, now: float) -> bool:
        """True at most once per PURGE_INTERVAL seconds per engine (i.e. per client)."""
        if now < self._next_purge:  # the common case, without the lock
            return False
        with self._purge_lock:
            if now < self._next_purge:
                return False
            self._next_purge = now + PURGE_INTERVAL
            return True

    def purge_soon(self, now: float) -> None:
        """A purge left old records behind: take the next batch soon, not in an hour."""
        self._next_purge = min(self._next_purge, now + PURGE_BACKLOG_PAUSE)

    def purge_takes_limit(self) -> bool:
        """Whether the store's purge_completed takes ``limit`` (a store written before it may not)."""
        return takes_keyword(self.journal.purge_completed, "limit")

    def _scan_headers(self, headers: httpx.Headers) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """(the caller's key header, the headers to journal), in one pass over the raw headers."""
        keys: list[str] = []
        stored: list[tuple[str, str]] = []
        hidden = self._hidden
        for raw_name, raw_value in headers.raw:
            name = raw_name.lower().decode("latin-1")
            if name == self._key_name:
                # as httpx reads it: the flow sets it back with request.headers[...] = key
                keys.append(raw_value.decode(headers.encoding))
            secret = hidden.get(name)
            if secret is None:
                if len(hidden) > 1024:  # names made up per request: do not grow without bound
                    hidden.clear()
                secret = hidden[name] = name in self._not_stored or is_secret_header(name, self.redact)
            if not secret:
                stored.append((name, raw_value.decode("latin-1")))  # lossless: see header_bytes
        return (", ".join(keys) if keys else None), tuple(stored)

    def stored_response_headers(self, headers: httpx.Headers) -> list[tuple[str, str]]:
        """The answer's headers as journaled: credentials (Set-Cookie, ...) removed."""
        return [
            (name, raw_value.decode("latin-1"))  # lossless: see header_bytes
            for raw_name, raw_value in headers.raw
            if not is_secret_header(name := raw_name.lower().decode("latin-1"), self.redact)
        ]

    def stored_url(self, url: httpx.URL) -> str:
        """The URL as journaled and fingerprinted: no user:password, secret query values hidden.

        Like secret headers, credentials in the URL never reach the disk and do not make a
        request with a rotated API key look like another operation.
        """
        if url.userinfo:  # httpx sends it as an Authorization header: it is a credential
            url = url.copy_with(username=None, password=None)
        if url.query:
            params = url.params.multi_items()
            if any(is_secret_param(name, self.redact) for name, _ in params):
                hidden = [(name, REDACTED if is_secret_param(name, self.redact) else value) for name, value in params]
                url = url.copy_with(params=hidden)
        return str(url)

    def describe(
        self, exc: BaseException | None, response: httpx.Response | None, request: httpx.Request
    ) -> str | None:
        """An attempt's outcome as journaled (last_error) and logged, with the request's credentials hidden.

        An error may quote them: h11 refuses a token read with its newline as
        ``Illegal header value b'Bearer sk_live_...\\n'``, and `samekey list` shows last_error.
        """
        if exc is None:
            return _describe(None, response)
        text = error_text(exc)
        for secret in sorted(self._credentials(request), key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text[:500]  # cut after hiding: a cut could leave part of a credential unmatched

    def _credentials(self, request: httpx.Request) -> set[str]:
        """The values `_scan_headers` and `stored_url` keep off the disk, as an error may print them."""
        values = [value for name, value in request.headers.raw if self._is_credential(name.lower().decode("latin-1"))]
        url = request.url
        if url.userinfo:
            values += [url.userinfo, *url.userinfo.split(b":", 1)]
        for name, param in url.params.multi_items():
            if is_secret_param(name, self.redact):
                values.append(param.encode())
        found = set()
        for value in values:
            # as the bytes read as text, and as Python prints bytes (an error's {!r}: newlines escaped)
            for form in (value.decode("latin-1"), repr(bytes(value))[2:-1]):
                if form.strip():
                    found.add(form)
        return found

    def _is_credential(self, name: str) -> bool:
        return name not in self._not_stored and is_secret_header(name, self.redact)

    def lease_for(self, request: httpx.Request) -> float:
        """How long an attempt of ``request`` holds its operation: the client's lease, or longer.

        The lease is not renewed while a request is on the wire: an attempt its own timeouts
        let run past the lease (``timeout=80``, stripe-python's, against the 60 s default) would
        let another caller take the operation over and send it a second time meanwhile. So a
        lease covers the worst the timeouts allow: waiting for a connection, connecting, writing
        and reading. With no timeout (None) an attempt is unbounded: the client's lease stands.
        """
        timeouts = request.extensions.get("timeout")
        if not isinstance(timeouts, dict):
            return self.lease
        limits = [timeouts.get(phase) for phase in ("pool", "connect", "write", "read")]
        if not all(isinstance(limit, (int, float)) for limit in limits):
            return self.lease
        return max(self.lease, sum(limits) + LEASE_MARGIN)  # type: ignore[arg-type]

    def new_key(self) -> str:
        value = _uuid4()
        return f'"{value}"' if self.key_format == "structured" else value

    def new_owner(self) -> str:
        # host/pid/pid-scope/<per-engine random>-<counter>: unique per call, no urandom per request
        return f"{self._host}/{PROCESS.pid}/{PID_SCOPE}/{self._owner_tag}-{next(self._owner_counter)}"

    def owner_is_dead(self, owner: str | None) -> bool:
        """True for a lease owner that was a process of this host's pid space that no longer runs.

        A pid means something only within its pid namespace and boot: containers of one pod
        share a hostname, not their pids. An owner written without a scope (an older samekey)
        or in another one is never probed: its lease is waited out.
        """
        host, pid_text, scope = [*(owner or "").split("/"), "", ""][:3]
        if host != self._host or scope != PID_SCOPE or not pid_text.isdigit() or int(pid_text) == PROCESS.pid:
            return False
        return pid_is_gone(int(pid_text))

    def plan(self, request: httpx.Request) -> Plan | None:
        """The journal intent for a request, or None when it is retried without a key."""
        operation = request.extensions.get(OPERATION_EXTENSION)
        if operation is None and request.method in IDEMPOTENT_METHODS:
            return None
        caller_key, headers = self._scan_headers(request.headers)
        if operation is None:
            operation = f"key:{caller_key}" if caller_key else f"{UNNAMED_PREFIX}{_uuid4()}"
        elif not _valid_operation(operation):
            raise ValueError(
                f"operation must be a non-empty string of at most {MAX_OPERATION_LENGTH} characters, "
                f"valid text (UTF-8, no NUL), naming the logical operation (e.g. 'order-42/charge'), got {operation!r}"
            )
        body = request.content
        url = self.stored_url(request.url)
        digest = hashlib.sha256(f"{request.method}\n{url}\n".encode())
        digest.update(_without_random_boundary(body, request.headers))
        intent = Intent(
            operation=operation,
            key=caller_key or self.new_key(),
            key_header=self.key_header,
            method=request.method,
            url=url,
            fingerprint=digest.hexdigest(),
            request_headers=headers,
            request_body=body,
        )
        return Plan(intent, caller_key is not None)


def _valid_operation(operation: object) -> bool:
    # a lone surrogate cannot be stored; PostgreSQL refuses NUL in text
    if not isinstance(operation, str) or not operation.strip() or len(operation) > MAX_OPERATION_LENGTH:
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


def header_bytes(value: str) -> bytes:
    """A journaled header value (or name) as the bytes that were on the wire.

    Values are journaled decoded as latin-1, which maps every byte to one character and
    back, so a UTF-8 filename or a Latin-1 name replays byte for byte (httpx would encode
    a str as ASCII and fail). Journals written before decoded UTF-8 header sets as UTF-8:
    such a value with a character past U+00FF is encoded as UTF-8 again.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def header_text(value: str) -> str:
    """A journaled header value for people to read: UTF-8 text shown as text."""
    if value.isascii():
        return value
    try:
        return header_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return value


def _uuid4() -> str:
    # str(uuid.uuid4()) without building a UUID object (this runs once per request)
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pid_scope() -> str:
    """Where this process's pids mean something: its pid namespace and boot (Linux), else '-'."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{namespace}.{boot.read().strip()[:8]}"
    except OSError:
        return "-"


PID_SCOPE = _pid_scope()  # the same across fork (a child shares both)


def pid_is_gone(pid: int) -> bool:
    """True only when process ``pid`` no longer runs here; False while it runs or cannot be probed."""
    if os.name != "posix":  # on Windows os.kill(pid, 0) would terminate it: count it as running
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours to signal
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A killed child not yet reaped by its parent still answers kill(pid, 0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _mismatch(plan: Plan, record: OperationRecord) -> str | None:
    intent = plan.intent
    if record.method != intent.method or record.url != intent.url:
        return f"it was {record.method} {record.url}, now {intent.method} {intent.url}"
    if record.fingerprint != intent.fingerprint:
        return "same method and URL, different body"
    if plan.caller_key and record.key != intent.key:
        return f"its key is {record.key}, the request now carries {intent.key}"
    if record.pending and record.key_header.lower() != intent.key_header.lower():
        # the server knows the key under the header it came in: in another one it is no key at all
        return (
            f"its key was sent in the {record.key_header!r} header, this client sends keys in "
            f"{intent.key_header!r}; send it again with a client created with key_header={record.key_header!r}"
        )
    return None


def _describe(exc: BaseException | None, response: httpx.Response | None) -> str | None:
    if response is not None:
        return f"HTTP {response.status_code}"
    if exc is not None:
        return error_text(exc)[:500]
    return None


def _replay(record: OperationRecord) -> httpx.Response:
    info = OperationInfo(record.operation, record.key, record.attempts, replayed=True)
    logger.info(
        "samekey replay operation=%s key=%s status=%s (completed earlier, not sent again)",
        record.operation, record.key, record.response_status,
        extra={"operation": record.operation, "key": record.key, "attempt": 0},
    )  # fmt: skip
    return httpx.Response(
        record.response_status or 0,
        headers=[(header_bytes(name), header_bytes(value)) for name, value in record.response_headers],
        stream=httpx.ByteStream(record.response_body or b""),
        extensions={INFO_EXTENSION: info},
    )


def operation_flow(engine: Engine, request: httpx.Request) -> Flow:
    """Decide everything about one request; yield the I/O. Returns the final response."""
    plan = engine.plan(request)
    if plan is None:
        return (yield from _attempts(engine, request, None, None))
    intent = plan.intent
    if OPERATION_EXTENSION not in request.extensions:
        # named here (auto:, key:): an auth flow answering a 401 challenge sends this same
        # request again, and that is this operation, not a new one leaving this one pending
        request.extensions[OPERATION_EXTENSION] = intent.operation
    owner = engine.new_owner()
    lease = engine.lease_for(request)
    polls = 0
    now = engine.clock()
    if engine.purge_due(now):
        # only completed records older than the retention, never a pending one; a batch at a time
        # so that no request stalls on a backlog (after a long downtime, a shorter retention)
        batched = engine.purge_takes_limit()
        try:
            args = (engine.retention, now, PURGE_BATCH) if batched else (engine.retention, now)
            removed = yield Call("purge_completed", *args)
            if batched and removed >= PURGE_BATCH:
                engine.purge_soon(now)  # more to do: the next request after PURGE_BACKLOG_PAUSE takes it
        except Exception as exc:  # housekeeping never fails a payment; the claim reports a broken journal
            logger.warning("samekey could not purge old completed records: %s", exc)
    while True:
        now = engine.clock()
        try:
            claim = yield Call("claim", intent, owner, lease, now)
        except GeneratorExit:
            raise
        except BaseException:
            # interrupted (a cancelled task, Ctrl-C) or failed after the claim may have committed:
            # free a lease this owner may hold, or the operation is stuck until the lease expires
            with contextlib.suppress(Exception):
                yield Call("release", intent.operation, owner, 0, None, engine.clock())
            raise
        record = claim.record
        if claim.status == "claimed" and record.method == "":  # reserved by key_for(): see _reserve
            from ._reserve import fill  # (it builds on this module)

            record = yield from fill(engine, intent, owner, record)
        mismatch = _mismatch(plan, record)
        holds_lease = claim.status in ("created", "claimed")
        if mismatch is not None:
            if holds_lease:
                yield Call("release", intent.operation, owner, record.attempts, None, engine.clock())
            raise OperationMismatch(intent.operation, mismatch, pending=record.pending)
        if claim.status == "completed":
            # as when it was sent: httpx follows a replayed 307/308 with this request's headers,
            # and without the key the follow-up would be a new payment
            request.headers[engine.key_header] = record.key
            return _settled(request, _replay(record), engine.key_header)
        if claim.status != "busy":
            break
        if engine.owner_is_dead(record.lease_owner):
            # killed on this host (kill -9, OOM): no need to wait out its lease
            logger.info("samekey taking over operation=%s from dead owner %s", intent.operation, record.lease_owner)
            yield Call("release", intent.operation, record.lease_owner, record.attempts, None, now)
            continue
        expires_in = (record.lease_expires or now) - now
        if engine.on_busy == "raise":
            raise OperationInProgress(intent.operation, record.lease_owner, expires_in)
        polls += 1
        logger.debug("samekey waiting operation=%s held by %s", intent.operation, record.lease_owner)
        yield Sleep(max(0.001, min(0.02 * 1.5 ** min(polls, 10), 0.5, expires_in)))  # 1.5**polls overflows
    age = engine.clock() - record.created_at
    if claim.status == "claimed" and age > engine.key_ttl:
        yield Call("release", intent.operation, owner, record.attempts, None, engine.clock())
        raise KeyExpired(intent.operation, record.key, age, engine.key_ttl)
    if claim.status == "claimed":
        logger.info(
            "samekey resuming operation=%s key=%s after %d earlier attempt(s)",
            intent.operation, record.key, record.attempts,
            extra={"operation": intent.operation, "key": record.key, "attempt": record.attempts},
        )  # fmt: skip
    if claim.status == "claimed" and record.request_body != request.content:
        _as_first_sent(request, record)
    request.headers[engine.key_header] = record.key
    return (yield from _attempts(engine, request, record, owner))


def multipart_operation(request: httpx.Request) -> str | None:
    """The operation of a multipart request (a re-run of it may need `carry_first_bytes`), else None.

    Most requests are not multipart: they cost a header lookup and no journal read.
    """
    operation = request.extensions.get(OPERATION_EXTENSION)
    if not isinstance(operation, str):
        return None
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return operation if kind == "multipart/form-data" else None


def carry_first_bytes(engine: Engine, request: httpx.Request, record: OperationRecord | None) -> None:
    """Before the client's auth runs: a re-run of a pending multipart operation carries its first bytes.

    The transport swaps them in too (`_as_first_sent`), but only after auth: an `httpx.Auth` that
    signs the body (HMAC, SigV4) would have signed the re-run's own boundary, and the server would
    refuse the signature. ``request`` has been read.
    """
    if record is None or not record.pending or record.request_body == request.content:
        return
    plan = engine.plan(request)
    if plan is not None and _mismatch(plan, record) is None:
        _as_first_sent(request, record)


def _as_first_sent(request: httpx.Request, record: OperationRecord) -> None:
    """Send a multipart body built again (same fingerprint, new random boundary) as first sent.

    The boundary is no part of the operation, but a server that compares raw bodies under a key
    (as the IETF draft allows) would take the new one for another payload and answer 422, which
    would then be the operation's recorded answer in place of what the first attempt did.
    """
    stored = {name.lower(): value for name, value in record.request_headers}
    content_type = stored.get("content-type")
    if content_type is None:
        return
    request.headers["Content-Type"] = header_bytes(content_type).decode("latin-1")
    if "Transfer-Encoding" not in request.headers:  # never both (RFC 9112 6.1): a chunked body stays chunked
        request.headers["Content-Length"] = str(len(record.request_body))
    request.stream = httpx.ByteStream(record.request_body)
    request._content = record.request_body  # what request.content (and a retry's re-read) returns


def _attempts(engine: Engine, request: httpx.Request, record: OperationRecord | None, owner: str | None) -> Flow:
    """Send until a definitive answer; journal the outcome when ``record`` is given."""
    policy = engine.policy
    operation = record.operation if record else None
    key = record.key if record else None
    earlier = record.attempts if record else 0  # attempts made by earlier runs
    started = time.monotonic()
    # Most requests succeed at once: tenacity is only brought in by the first retryable
    # outcome (its clock starts from the first attempt), so a success costs one
    # classification, not a controller step.
    retrying: tenacity.Retrying | None = None
    state: tenacity.RetryCallState | None = None
    taken = 0.0  # retry-budget tokens this request took
    tries = 1  # attempts made by this run
    begun = 0  # attempts this run has begun to send: an interrupted wait is no attempt
    waited = 0.0  # seconds this run has waited between attempts, for on_retry hooks
    last_error: str | None = None  # the last attempt's outcome, kept if an interruption follows
    try:
        while True:
            attempt = earlier + tries
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "samekey attempt operation=%s key=%s attempt=%d %s %s",
                    operation, key, attempt, request.method, engine.stored_url(request.url),
                    extra={"operation": operation, "key": key, "attempt": attempt},
                )  # fmt: skip
            response: httpx.Response | None
            try:
                # an answer that is not journaled is handed on still streaming, as bare httpx does
                begun = tries
                response, exc = (yield Send(request, buffer=record is not None)), None
            except Exception as error:  # the driver threw the transport's error in
                response, exc = None, error
            else:
                # the client sets it on what it returns; RetriesExhausted and AnswerNotRecorded
                # carry an answer past the client: .url and .raise_for_status() need it too
                response.request = request
            if state is None:
                if exc is not None:
                    retry = policy.should_retry_exception(exc)
                else:
                    retry = policy.should_retry_response(response)  # type: ignore[arg-type]
                if not retry:
                    if exc is not None:
                        raise exc
                    break
                retrying = policy.retrying()
                retrying.begin()
                state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
                state.start_time = started
            if exc is not None:
                state.set_exception((type(exc), exc, exc.__traceback__))
            else:
                state.set_result(response)
            do = retrying.iter(state)  # type: ignore[union-attr]
            if isinstance(do, _Exhausted):
                if state.attempt_number >= policy.attempts_allowed():
                    reason = "max_attempts reached"
                else:
                    reason = _deadline_reason(policy, state.upcoming_sleep, response)
                return (
                    yield from _give_up(engine, state.attempt_number, record, owner, request, response, exc, reason)
                )
            if not isinstance(do, tenacity.DoSleep):
                break  # tenacity says definitive: ``do`` is the response (an error was raised)
            budget = policy.active_budget()
            if budget is not None:
                cost = budget.try_acquire(isinstance(exc, httpx.TimeoutException))
                if cost is None:
                    reason = "the client's retry budget is empty (the server looks unhealthy)"
                    return (yield from _give_up(engine, tries, record, owner, request, response, exc, reason))
                taken += cost
            error_text = last_error = engine.describe(exc, response, request)
            logger.warning(
                "samekey retry operation=%s key=%s attempt=%d failed (%s); next in %.2f s",
                operation, key, attempt, error_text, float(do),
                extra={"operation": operation, "key": key, "attempt": attempt},
            )  # fmt: skip
            if record is not None and owner is not None:
                now = engine.clock()
                # the lease covers the wait and the next attempt: a Retry-After or backoff longer
                # than the lease must not let another caller take the operation over meanwhile
                hold = float(do) + engine.lease_for(request)
                try:
                    yield Call("record_attempt", record.operation, owner, attempt, error_text, hold, now)
                except Exception as exc:  # the journal's own "nothing was sent" would be untrue here
                    raise _not_recorded_attempt(engine, exc, record, attempt, error_text) from exc
            elif response is not None:
                yield Discard(response)  # streaming and not handed on: give its connection back
            state.prepare_for_next_attempt()
            tries = state.attempt_number
            wait = float(do)
            if engine.on_retry:  # here, not in the drivers: sync and async call them alike, once per retry
                asked = policy.retry_after(response)
                details = RetryDetails(
                    operation=operation, key=key, method=request.method, url=engine.stored_url(request.url),
                    attempt=attempt, next_wait=wait, waited_so_far=waited, reason=error_text or "",
                    status_code=None if response is None else response.status_code,
                    error_type=None if response is not None or exc is None else type(exc).__name__,
                    from_retry_after=asked is not None and asked >= wait,
                )  # fmt: skip
                run_hooks(engine.on_retry, details)
            yield Sleep(wait)
            waited += wait
    except GeneratorExit:
        raise
    except BaseException as exc:
        # a non-retryable error, or an interruption (a cancelled task, Ctrl-C): keep the key
        # pending, free the lease so that a retry can go on at once
        if record is not None and owner is not None and not isinstance(exc, RetriesExhausted):
            # an interruption says nothing about the server: the last attempt's outcome stays
            outcome = (
                engine.describe(exc, None, request) if isinstance(exc, Exception) or last_error is None else last_error
            )
            with contextlib.suppress(Exception):  # a broken journal: report the first error, not this one
                yield Call("release", record.operation, owner, earlier + begun, outcome, engine.clock())
        raise
    assert response is not None
    attempts = earlier + tries
    budget = policy.active_budget()
    if budget is not None and response.is_success:
        # only a 2xx shows the server healthy: a server answering 4xx to everything must not keep it full
        budget.refund(taken)
    if record is not None and owner is not None:
        try:
            yield from _record_answer(engine, record, owner, attempts, response)
        except (GeneratorExit, Exception):
            raise
        except BaseException:
            # interrupted (a cancelled task, Ctrl-C) while the answer was being recorded: the write may
            # never have run (a worker-thread call whose wait is cancelled before it begins is dropped),
            # so free the lease, or no retry could go on until it expires; after a completion, a no-op
            with contextlib.suppress(Exception):
                interrupted = f"HTTP {response.status_code}: interrupted before the answer was recorded"
                yield Call("release", record.operation, owner, attempts, interrupted, engine.clock())
            raise
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "samekey done operation=%s key=%s attempt=%d status=%d",
            operation, key, attempts, response.status_code,
            extra={"operation": operation, "key": key, "attempt": attempts},
        )  # fmt: skip
    response.extensions[INFO_EXTENSION] = OperationInfo(operation, key, attempts, replayed=False)
    return _settled(request, response, engine.key_header)


def _record_answer(
    engine: Engine, record: OperationRecord, owner: str, attempts: int, response: httpx.Response
) -> Generator[Action, Any, None]:
    """Journal a definitive answer as completed; a 401/407 only frees the lease, its key kept."""
    if response.status_code in NOT_ACTED_ON:
        refused = f"HTTP {response.status_code}: credentials refused, the server did not act; the key is kept"
        yield Call("release", record.operation, owner, attempts, refused, engine.clock())
        return
    headers = engine.stored_response_headers(response.headers)
    body = b"".join(response.stream)  # type: ignore[arg-type]  # the raw body: drivers buffer it in a ByteStream
    now = engine.clock()
    try:
        yield Call("complete", record.operation, owner, attempts, response.status_code, headers, body, now)
    except Exception as exc:  # a full disk, a lost database: the server HAS acted, say so
        with contextlib.suppress(Exception):  # free the lease if the journal still can
            unrecorded = f"HTTP {response.status_code}: the answer could not be recorded"
            yield Call("release", record.operation, owner, attempts, unrecorded, engine.clock())
        response.read()  # in memory already: `error.response.json()` works at once
        raise _not_recorded(engine, exc, record, response) from exc


def _journal_failure(engine: Engine, exc: Exception) -> tuple[str, str]:
    """(the journal's location, what went wrong) of a failed journal call, from any store."""
    if isinstance(exc, JournalError):
        return exc.path, exc.problem
    return getattr(engine.journal, "location", "(journal)"), f"{type(exc).__name__}: {exc}"


def _not_recorded(
    engine: Engine, exc: Exception, record: OperationRecord, response: httpx.Response
) -> AnswerNotRecorded:
    path, problem = _journal_failure(engine, exc)
    return AnswerNotRecorded(path, problem, operation=record.operation, key=record.key, response=response)


def _not_recorded_attempt(
    engine: Engine, exc: Exception, record: OperationRecord, attempt: int, error_text: str | None
) -> JournalError:
    path, problem = _journal_failure(engine, exc)
    return JournalError(
        path,
        f"operation {record.operation!r} was sent (attempt {attempt}, {error_text}), "
        f"but recording the attempt failed: {problem}",
        f"The key {record.key} stays pending: once the journal works again, run the same operation again "
        f"(or `{command('resume', record.operation)}`) to send it with the same key. Do not start it under a new "
        "operation name: that would be a new key, and the server could act twice.",
    )


def abandon(flow: Flow, interruption: BaseException, run: Callable[[Call], Any]) -> None:
    """An interruption (a cancelled task, Ctrl-C) reached a driver: let the flow free its lease.

    The flow's journal calls go to ``run``, whose result the flow does not need: the sync
    driver runs them at once; the async driver queues them behind the calls already queued
    for its journal thread (so the release lands after a claim the interruption cut short)
    and then awaits them shielded, leaving the event loop free (a coroutine being closed only
    queues them). The driver then re-raises.
    """
    try:
        action = flow.throw(interruption)
        while isinstance(action, Call):
            action = flow.send(run(action))
    except BaseException:  # the flow re-raised it (its normal end) or the journal failed too
        pass
    finally:
        flow.close()


def _settled(request: httpx.Request, response: httpx.Response, key_header: str) -> httpx.Response:
    # httpx builds a followed redirect from this request's headers and *same* extensions dict.
    # The follow-up is not this operation: drop its name. A 303 (and 301/302 for POST) turns
    # into a GET that needs no key; a 307/308 re-sends the same request elsewhere, key and all.
    if 300 <= response.status_code < 400 and response.is_redirect:
        request.extensions.pop(OPERATION_EXTENSION, None)
        if response.status_code not in (307, 308):
            request.headers.pop(key_header, None)
    return response


def _deadline_reason(policy: RetryPolicy, wait: float, response: httpx.Response | None) -> str:
    asked = server_wait(response)
    if asked is not None and min(asked, policy.max_retry_after) >= wait:  # the server's wait, not the backoff's
        capped = f", capped at max_retry_after={policy.max_retry_after:g} s" if asked > policy.max_retry_after else ""
        return f"the server asked to wait {asked:g} s (Retry-After{capped}), past the {policy.deadline:g} s deadline"
    return f"the next wait would pass the {policy.deadline:g} s deadline"


def _give_up(
    engine: Engine,
    tries: int,
    record: OperationRecord | None,
    owner: str | None,
    request: httpx.Request,
    response: httpx.Response | None,
    exc: BaseException | None,
    reason: str,
) -> Generator[Action, Any, httpx.Response]:
    attempts = (record.attempts if record else 0) + tries
    error = engine.describe(exc, response, request)
    if record is not None and owner is not None:
        yield Call("release", record.operation, owner, attempts, error, engine.clock())
    elif response is not None:
        yield Read(response)  # still streaming: read it whole for RetriesExhausted.last_response
    if response is not None:
        response.read()  # in memory by now: `last_response.json()` works without a read() of the caller's
    raise RetriesExhausted(
        operation=record.operation if record else "(unkeyed request)",
        key=record.key if record else None,
        attempts=attempts,
        this_run=tries,
        last_response=response,
        last_exception=exc,
        reason=reason,
        last_error=error,  # credentials hidden, as journaled
    )

"""Every error samekey raises, under one root so callers can catch them all.

    SameKeyError
     ├── RetriesExhausted      the policy gave up; the operation stays pending with its key
     ├── OperationMismatch     the operation name was reused for a different request
     ├── OperationInProgress   another caller holds the operation right now
     ├── KeyExpired            the pending key is older than the server keeps keys
     ├── OperationNotFound     resume/forget named an operation the journal does not hold
     └── JournalError          the journal cannot be opened, read or written
          └── AnswerNotRecorded  the server answered, the journal could not record it

Each message says what happened and what the caller can do about it.
"""

from __future__ import annotations

import pickle
import shlex
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "AnswerNotRecorded",
    "JournalError",
    "JournalLocked",
    "KeyExpired",
    "OperationInProgress",
    "OperationMismatch",
    "OperationNotFound",
    "RetriesExhausted",
    "SameKeyError",
]


def command(verb: str, operation: str) -> str:
    """``samekey VERB OPERATION`` as a shell reads it when pasted: the name quoted (a space, quote,
    ``$`` or ``;`` in it would split it or run something else), after ``--`` when it starts with
    ``-`` (else it would be read as an option)."""
    return f"samekey {verb} {'-- ' if operation.startswith('-') else ''}{shlex.quote(operation)}"


class SameKeyError(Exception):
    """Root of every samekey error."""

    def __reduce__(self) -> tuple[Any, ...]:
        # A worker process (multiprocessing, ProcessPoolExecutor, celery's pickle serializer)
        # pickles the error back to its parent. Exception's own reduce calls type(self)(*self.args),
        # the message alone, which the subclasses' __init__ refuse (TypeError, a BrokenProcessPool
        # in the parent): rebuilt instead from the message and the attributes, without __init__.
        state = {name: _portable(value) for name, value in self.__dict__.items()}
        return _rebuilt, (type(self), self.args), state


def _rebuilt(cls: type[SameKeyError], args: tuple[object, ...]) -> SameKeyError:
    return cls.__new__(cls, *args)  # sets .args (the message); the attributes follow as the state


def _portable(value: object) -> object:
    """``value`` if it survives a pickle round trip, else None.

    A read httpx.Response makes the trip (body included, stream dropped: it is read), so
    AnswerNotRecorded.response still holds the server's answer; an error whose own class cannot
    be unpickled (httpx.HTTPStatusError's keyword-only arguments) would fail the whole error in
    the parent: it arrives as None, and the message still says what it was.
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return None
    return value


class RetriesExhausted(SameKeyError):
    """The retry policy stopped before a definitive answer arrived.

    The journal record stays *pending*: running the same ``operation`` again
    (or ``samekey resume``) re-sends with the same Idempotency-Key.
    """

    def __init__(
        self,
        *,
        operation: str,
        key: str | None,
        attempts: int,
        last_response: httpx.Response | None,
        last_exception: BaseException | None,
        reason: str,
        this_run: int | None = None,
        last_error: str | None = None,
    ) -> None:
        """``last_error``: ``last_exception`` as the message shows it, with the request's
        credentials hidden (an error may quote a token; messages end up in logs). Defaults to its
        text."""
        self.operation = operation
        self.key = key
        self.attempts = attempts  # all runs together (the journal's count)
        self.last_response = last_response
        self.last_exception = last_exception
        self.reason = reason  # why the policy stopped: max_attempts, a deadline, the budget
        last = _last_outcome(last_response, last_exception, last_error)
        pending = _what_now(operation, key)
        runs = f", {this_run} in this run" if this_run is not None and this_run != attempts else ""
        super().__init__(
            f"operation {operation!r}: gave up after {attempts} attempt(s){runs} "
            f"({reason}; {last}). " + pending
        )


def _last_outcome(
    response: httpx.Response | None, exception: BaseException | None, shown: str | None
) -> str:
    if response is not None:
        return f"last answer HTTP {response.status_code}"
    if exception is not None:
        return f"last error {shown if shown is not None else error_text(exception)}"
    return "no answer"


def _what_now(operation: str, key: str | None) -> str:
    """What the caller of a request samekey gave up on should do next."""
    if key is None:
        return "The request carried no Idempotency-Key; it is safe to send again."
    if operation.startswith("auto:"):  # see _plan.UNNAMED_PREFIX
        return (
            "It was sent without operation=, so running the code again makes a NEW key and "
            f"could act twice. Retry it with the same key: `{command('resume', operation)}` "
            "(or client.resume). Name your operations (operation='order-42/charge') to make "
            "re-runs reuse the key."
        )
    return (
        f"The operation is still pending with key {key}: run it again with the same operation "
        f"name (or `{command('resume', operation)}`) to retry safely with the same key."
    )


class OperationMismatch(SameKeyError):
    """An operation name was reused with a different method, URL, body or key."""

    def __init__(self, operation: str, detail: str, *, pending: bool = False) -> None:
        self.operation = operation
        if (
            pending
        ):  # a new name alone would send a second request while the first may have been acted on
            advice = (
                "The first request is still pending, and the server may have acted on "
                "it: finish it first "
                f"(`{command('resume', operation)}`), or check on the server before "
                f"`{command('forget', operation)}`. "
                "A new logical operation needs a new operation name."
            )
        else:
            advice = (
                "If this is a new logical operation, give it a new operation name; "
                f"if the old one is settled, remove it with `{command('forget', operation)}`."
            )
        super().__init__(
            f"operation {operation!r} was first recorded with a different request "
            f"({detail}). Nothing was sent. " + advice
        )


class OperationInProgress(SameKeyError):
    """Another thread, task or process is executing this operation now."""

    def __init__(self, operation: str, owner: str | None, expires_in: float) -> None:
        self.operation = operation
        self.owner = owner
        self.expires_in = expires_in
        super().__init__(
            f"operation {operation!r} is being executed by {owner or 'another caller'} "
            f"(its lease expires in {max(expires_in, 0.0):.1f} s). Wait for it, retry later, "
            "or create the client with on_busy='wait' to wait for its outcome."
        )


class KeyExpired(SameKeyError):
    """A pending operation's key is older than the client's ``key_ttl``."""

    def __init__(self, operation: str, key: str, age: float, key_ttl: float) -> None:
        self.operation = operation
        self.key = key
        self.age = age
        self.key_ttl = key_ttl
        super().__init__(
            f"operation {operation!r} is pending with key {key}, created {_duration(age)} ago, "
            f"longer than key_ttl ({_duration(key_ttl)}). The server may no longer recognise "
            "this key, so sending again could act twice. Nothing was sent. Check on the server "
            "whether the first attempt took effect, then run "
            f"`{command('forget', operation)}` and start a new operation if it did not."
        )


def error_text(exc: BaseException) -> str:
    """``Type: message``; an error without a message names its cause instead.

    httpx's async transport turns a reset into ReadError('') from httpcore's ReadError from anyio's
    BrokenResourceError('') from the ConnectionResetError that says what happened: "ReadError: "
    alone tells nothing.
    """
    name = type(exc).__name__
    text = str(exc)
    if text:
        return f"{name}: {text}"
    deepest = exc
    for _ in range(8):  # httpx <- httpcore <- anyio <- OSError; bounded, as a chain may loop
        # the context even when suppressed: httpcore's pool re-raises its ReadError `from None`
        below = deepest.__cause__ or deepest.__context__
        if below is None:
            break
        if str(below):
            return f"{name} ({type(below).__name__}: {below})"
        deepest = below
    if type(deepest).__name__ != name:  # ReadError from EndOfStream: "ReadError (EndOfStream)"
        return f"{name} ({type(deepest).__name__})"
    # a cancelled task's CancelledError has no message: "CancelledError", not "CancelledError: "
    return name


def _duration(seconds: float) -> str:
    # in hours, a short key_ttl read "created 0.1 h ago, longer than key_ttl (0.1 h)"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class OperationNotFound(SameKeyError, LookupError):
    """The journal holds no record of this operation (also a LookupError)."""

    def __init__(self, operation: str, location: str) -> None:
        self.operation = operation
        self.location = location
        super().__init__(
            f"operation {operation!r} is not in the journal {location}: nothing was sent. "
            "Check the name (`samekey list --all` shows what the journal holds) and the "
            "journal path."
        )


class JournalError(SameKeyError):
    """The journal cannot be used. The file is never deleted, truncated or replaced."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"journal {self.path}: {problem}. {fix}")


class JournalLocked(JournalError):
    """Another process held the journal's lock for the whole ``lock_timeout``: nothing was written.

    The caller has waited its budget: a follow-up write (freeing a lease the failed call never
    took) would only wait as long again.
    """


class AnswerNotRecorded(JournalError):
    """The request was sent and the server answered, but the journal could not record it.

    The server acted on the request (``response`` is its answer). The operation stays
    *pending* with its key: once the journal works again, running the same operation (or
    ``samekey resume``) sends that key again and the server returns its stored answer.
    """

    def __init__(
        self, path: str | Path, problem: str, *, operation: str, key: str, response: httpx.Response
    ) -> None:
        self.operation = operation
        self.key = key
        self.response = response
        super().__init__(
            path,
            f"operation {operation!r} was sent and the server answered HTTP "
            f"{response.status_code}, "
            f"but recording that answer failed: {problem}",
            f"The answer is in this error's .response. The key {key} stays pending: once "
            "the journal "
            "works again, run the same operation again "
            f"(or `{command('resume', operation)}`) and the server returns its stored "
            "answer for that key. "
            "Do not start it under "
            "a new operation name: that would be a new key, and the server would act twice.",
        )

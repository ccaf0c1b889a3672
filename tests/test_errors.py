"""samekey's errors (_errors.py): what they say of an error with an empty message (its cause), and
they cross process boundaries: multiprocessing and ProcessPoolExecutor pickle them.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httpx
import pytest

import samekey
from client_helpers import make_client, raising

URL = "https://pay.example/charges"
REQUEST = httpx.Request("POST", URL, json={"amount": 1})


def _answer(status: int) -> httpx.Response:
    response = httpx.Response(status, json={"id": "ch_1", "status": status}, request=REQUEST)
    response.read()  # as samekey hands them on: read whole
    return response


# One instance of each class, every argument given: a class missing here fails the test below.
ERRORS: dict[str, Callable[[], samekey.SameKeyError]] = {
    "SameKeyError": lambda: samekey.SameKeyError("something went wrong"),
    "RetriesExhausted": lambda: samekey.RetriesExhausted(
        operation="order-1/charge",
        key="3f0c7b9e-key",
        attempts=3,
        last_response=_answer(503),
        last_exception=None,
        reason="max_attempts reached",
        this_run=2,
    ),
    "OperationMismatch": lambda: samekey.OperationMismatch(
        "order-1/charge", "same method and URL, different body"
    ),
    "OperationInProgress": lambda: samekey.OperationInProgress(
        "order-1/charge", "host/42/scope/abc-1", 12.5
    ),
    "KeyExpired": lambda: samekey.KeyExpired("order-1/charge", "3f0c7b9e-key", 90000.0, 86400.0),
    "OperationNotFound": lambda: samekey.OperationNotFound(
        "order-1/charge", "/var/lib/app/journal.sqlite3"
    ),
    "JournalError": lambda: samekey.JournalError(
        Path("/var/lib/app/journal.sqlite3"), "disk full", "Free space."
    ),
    "JournalLocked": lambda: samekey.JournalLocked(
        "/var/lib/app/journal.sqlite3", "locked by another process for more than 10 s", "Retry."
    ),
    "AnswerNotRecorded": lambda: samekey.AnswerNotRecorded(
        "/var/lib/app/journal.sqlite3",
        "disk full",
        operation="order-1/charge",
        key="3f0c7b9e-key",
        response=_answer(201),
    ),
}
MORE = {  # the other arguments that change what an error holds or says
    "RetriesExhausted, after an error": lambda: samekey.RetriesExhausted(
        operation="auto:1234",
        key=None,
        attempts=2,
        last_response=None,
        last_exception=httpx.ReadError("connection reset", request=REQUEST),
        reason="the client's retry budget is empty (the server looks unhealthy)",
    ),
    "OperationMismatch, pending": lambda: samekey.OperationMismatch(
        "order-1/charge", "a new body", pending=True
    ),
}


def _public_errors() -> set[str]:
    return {
        name
        for name in samekey.__all__
        if isinstance(obj := getattr(samekey, name), type) and issubclass(obj, BaseException)
    }


def test_every_public_error_has_a_case_here() -> None:
    assert _public_errors() == set(ERRORS)
    # and every error samekey defines is public
    found: set[str] = set()
    below: list[type[samekey.SameKeyError]] = [samekey.SameKeyError]
    while below:
        cls = below.pop()
        found.add(cls.__name__)
        below += [sub for sub in cls.__subclasses__() if sub.__module__.startswith("samekey.")]
    assert found == set(ERRORS)


def _same_response(before: httpx.Response | None, after: httpx.Response | None) -> None:
    assert before is not None and after is not None
    assert (after.status_code, after.headers, after.json()) == (
        before.status_code,
        before.headers,
        before.json(),
    )
    assert after.request.method == "POST" and after.request.url == URL


CARRIED = (
    "response",
    "last_response",
    "last_exception",
)  # objects of their own, compared by what they hold


@pytest.mark.parametrize("case", [*ERRORS, *MORE])
def test_an_error_survives_a_pickle_round_trip(case: str) -> None:
    # every class but the root took other arguments than its message: unpickling raised TypeError
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        error = {**ERRORS, **MORE}[case]()
        copy = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.args == error.args
        assert set(vars(copy)) == set(vars(error))
        plain = {name: value for name, value in vars(error).items() if name not in CARRIED}
        assert {name: value for name, value in vars(copy).items() if name not in CARRIED} == plain
        for name in ("response", "last_response"):
            if getattr(error, name, None) is not None:  # the answer itself, body included
                _same_response(getattr(error, name), getattr(copy, name))
        if getattr(error, "last_exception", None) is not None:
            assert type(copy.last_exception) is type(error.last_exception)
            assert str(copy.last_exception) == str(error.last_exception)


def test_an_attribute_that_cannot_cross_arrives_as_none_the_message_intact() -> None:
    # httpx.HTTPStatusError takes keyword-only arguments: unpickling it alone raises TypeError
    raised = httpx.HTTPStatusError("503 from the gateway", request=REQUEST, response=_answer(503))
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(raised))
    error = samekey.RetriesExhausted(
        operation="order-1/charge",
        key="k",
        attempts=2,
        last_response=None,
        last_exception=raised,
        reason="max_attempts reached",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert copy.last_exception is None and copy.attempts == 2
    assert str(copy) == str(error) and "last error HTTPStatusError: 503 from the gateway" in str(
        copy
    )


# -- end to end: a worker process raises, its parent catches
# -----------------------------------------------


def _charge_twice_with_another_body(journal: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(201, json={"id": "ch_1"}))
    with samekey.Client(journal=journal, transport=transport) as client:
        client.post(URL, json={"amount": 1}, operation="order-1/charge")
        client.post(URL, json={"amount": 2}, operation="order-1/charge")  # raises OperationMismatch


def _charge_a_server_that_is_down(journal: str) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(503, json={"error": "maintenance"})
    )
    policy = samekey.RetryPolicy(max_attempts=2)
    with (
        samekey.set_testing(True),
        samekey.Client(journal=journal, transport=transport, policy=policy) as client,
    ):
        client.post(URL, json={"amount": 1}, operation="order-2/charge")


def test_an_error_raised_in_a_process_pool_worker_reaches_the_parent(tmp_path: Path) -> None:
    # the parent got BrokenProcessPool ("A process in
    # the process pool was terminated abruptly"), not the error
    journal = str(tmp_path / "journal.sqlite3")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        mismatch = pool.submit(_charge_twice_with_another_body, journal)
        exhausted = pool.submit(_charge_a_server_that_is_down, journal)
        with pytest.raises(samekey.OperationMismatch) as caught_mismatch:
            mismatch.result(timeout=60)
        with pytest.raises(samekey.RetriesExhausted) as caught_exhausted:
            exhausted.result(timeout=60)
    assert caught_mismatch.value.operation == "order-1/charge" and "different body" in str(
        caught_mismatch.value
    )
    error: Any = caught_exhausted.value
    assert (error.operation, error.attempts) == ("order-2/charge", 2)
    assert error.last_response.status_code == 503 and error.last_response.json() == {
        "error": "maintenance"
    }
    with samekey.Journal(journal) as opened:
        record = opened.get("order-2/charge")
    assert (
        record is not None
        and error.key == record.key
        and "samekey resume order-2/charge" in str(error)
    )


def _reset_by_peer() -> httpx.ReadError:
    """A reset as httpx's async transport raises it: no message, the reason three errors down."""
    try:
        try:
            try:
                raise anyio.BrokenResourceError from ConnectionResetError(
                    errno.ECONNRESET, "Connection reset by peer"
                )
            except anyio.BrokenResourceError as exc:
                raise httpcore.ReadError(
                    exc
                ) from None  # as httpcore's connection pool re-raises it
        except httpcore.ReadError as exc:
            raise httpx.ReadError(str(exc)) from exc
    except httpx.ReadError as exc:
        return exc


def _bare_read_error() -> httpx.ReadError:
    error = httpx.ReadError("")
    error.__cause__ = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    return error


RESET_TEXT = (
    f"ReadError (ConnectionResetError: [Errno {errno.ECONNRESET}] Connection reset by peer)"
)


@pytest.mark.parametrize("make_error", [_reset_by_peer, _bare_read_error])
def test_an_empty_read_error_is_reported_with_its_cause(
    journal_path: Path, no_sleep: None, make_error: Any
) -> None:
    # the async transport raises a reset as ReadError(''):
    # last_error said "ReadError", the error "ReadError: "
    async def story() -> tuple[samekey.RetriesExhausted, httpx.ReadError]:
        transport = raising(make_error(), make_error())
        policy = samekey.RetryPolicy(max_attempts=2)
        async with samekey.AsyncClient(
            journal=journal_path, transport=transport, policy=policy
        ) as client:
            with pytest.raises(samekey.RetriesExhausted) as exhausted:
                await client.post(URL, json={"amount": 1}, operation="exhausted")
        # not retried: the error itself reaches the caller, and the journal says why
        transport, policy = raising(make_error()), samekey.RetryPolicy(retry_exceptions=())
        async with samekey.AsyncClient(
            journal=journal_path, transport=transport, policy=policy
        ) as client:
            with pytest.raises(httpx.ReadError) as raised:
                await client.post(URL, json={"amount": 2}, operation="raised")
        return exhausted.value, raised.value

    exhausted, raised = asyncio.run(story())
    assert f"last error {RESET_TEXT})" in str(exhausted)
    assert str(raised) == ""  # the caller's error is the transport's own, untouched
    with samekey.Journal(journal_path) as journal:
        for operation, attempts in (("exhausted", 2), ("raised", 1)):
            record = journal.get(operation)
            assert record is not None and record.state == "pending" and record.attempts == attempts
            assert record.last_error == RESET_TEXT


def test_an_empty_error_with_no_message_below_names_the_deepest_cause(journal_path: Path) -> None:
    # a clean close mid-answer: ReadError('') from
    # httpcore's ReadError from EndOfStream, no message anywhere
    below, alone = httpx.ReadError(""), httpx.ReadError("")
    below.__cause__ = httpcore.ReadError(anyio.EndOfStream())
    below.__cause__.__cause__ = anyio.EndOfStream()
    policy = samekey.RetryPolicy(retry_exceptions=())
    with make_client(journal_path, transport=raising(below, alone), policy=policy) as client:
        for operation in ("below", "alone"):
            with pytest.raises(httpx.ReadError):
                client.post(URL, json={"amount": 1}, operation=operation)
        records = [client.journal.get(operation) for operation in ("below", "alone")]
    assert [r.last_error for r in records if r is not None] == [
        "ReadError (EndOfStream)",
        "ReadError",
    ]

"""Helpers shared by the tests of the client core's
modules (_plan, _flow, _attempts, _redaction, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import samekey
from samekey._actions import Send, Sleep
from samekey._contract import JournalCall
from samekey._engine import Engine
from samekey._flow import operation_flow

URL = "https://pay.example/charges"


def sent_keys(route: respx.Route, header: str = "Idempotency-Key") -> list[str | None]:
    return [call.request.headers.get(header) for call in route.calls]


def make_client(journal_path: Path, **kwargs: object) -> samekey.Client:
    return samekey.Client(journal=journal_path, **kwargs)  # type: ignore[arg-type]


def raising(*errors: Exception) -> httpx.MockTransport:
    # not respx: it re-raises a side effect `from` its own SideEffectError, replacing the cause
    queue = list(errors)

    def handler(request: httpx.Request) -> httpx.Response:
        raise queue.pop(0)

    return httpx.MockTransport(handler)


def behind_digest_auth(
    seen: list[tuple[str | None, str | None]] | None = None,
) -> httpx.MockTransport:
    """A server behind Digest auth: a 401 challenge to a request without credentials, else 201.
    ``seen`` gets each request's (Authorization, Idempotency-Key)."""

    def server(request: httpx.Request) -> httpx.Response:
        headers = request.headers
        if seen is not None:
            seen.append((headers.get("Authorization"), headers.get("Idempotency-Key")))
        if "Authorization" not in headers:
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Digest realm="pay", nonce="n1", qop="auth"'}
            )
        return httpx.Response(201, json={"id": "ch_1"})

    return httpx.MockTransport(server)


class NeverAnswers(httpx.MockTransport):
    """A server that takes a request and never answers; ``sent`` is set once one reached it."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            self.sent.set()
            await asyncio.sleep(60)
            raise AssertionError("cancelled before")

        super().__init__(handler)


async def cancelled_once_sent(
    client: samekey.AsyncClient, transport: NeverAnswers, url: str, **kwargs: Any
) -> None:
    """POST operation "order-1/charge" to ``url``; cancel its task once the request is out."""
    task = asyncio.create_task(client.post(url, operation="order-1/charge", **kwargs))
    await transport.sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def drive(
    engine: Engine,
    request: httpx.Request,
    answers: list[httpx.Response],
    on_sleep: Callable[[float], None],
) -> httpx.Response:
    """Run the decision core by hand: journal calls
    for real, answers from the list, sleeps reported."""
    flow = operation_flow(engine, request)
    action = next(flow)
    try:
        while True:
            if isinstance(action, JournalCall):
                action = flow.send(action.run(engine.journal))
            elif isinstance(action, Send):
                action = flow.send(answers.pop(0))
            elif isinstance(action, Sleep):
                on_sleep(action.seconds)
                action = flow.send(None)
            else:
                action = flow.send(None)
    except StopIteration as done:
        response: httpx.Response = done.value
        return response

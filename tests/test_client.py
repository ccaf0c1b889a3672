"""Client and AsyncClient themselves (_client.py, _async_client.py): operation= on stream(), httpx's
event hooks around the retries, the journal closed on leaving `with`, a samekey transport refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import samekey
from client_helpers import URL, make_client


def test_leaving_with_closes_the_journal_and_leaves_one_self_contained_file(
    journal_path: Path,
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(201))
    with make_client(journal_path, transport=transport) as client:
        client.post(URL, json={}, operation="sync-op")

    async def story() -> samekey.AsyncClient:
        async_transport = httpx.MockTransport(lambda request: httpx.Response(201))
        async with samekey.AsyncClient(
            journal=journal_path, transport=async_transport
        ) as async_client:
            await async_client.post(URL, json={}, operation="async-op")
        return async_client

    async_client = asyncio.run(story())
    for journal in (client.journal, async_client.journal):
        with pytest.raises(samekey.JournalError, match="it is closed"):
            journal.get("sync-op")
    # the last connection closed: SQLite merged its write-ahead log into the file
    assert sorted(p.name for p in journal_path.parent.iterdir()) == [journal_path.name]
    with samekey.Journal(journal_path) as reopened:
        assert {r.operation for r in reopened.records()} == {"sync-op", "async-op"}


def test_stream_takes_operation_like_request(journal_path: Path) -> None:
    transport = httpx.MockTransport(
        lambda r: httpx.Response(201, json={"key": r.headers.get("Idempotency-Key")})
    )
    with make_client(journal_path, transport=transport) as client:
        for replayed in (False, True):
            with client.stream(
                "POST", URL, json={"amount": 1}, operation="order-1/charge"
            ) as response:
                body = b"".join(response.iter_bytes())
            info = samekey.operation_info(response)
            assert (
                info is not None
                and info.operation == "order-1/charge"
                and info.replayed is replayed
            )
            assert body == f'{{"key":"{info.key}"}}'.encode()

    async def story() -> samekey.OperationInfo | None:
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            async with client.stream(
                "POST", URL, json={"amount": 1}, operation="order-1/charge"
            ) as response:
                await response.aread()
                return samekey.operation_info(response)

    info = asyncio.run(story())
    assert info is not None and info.operation == "order-1/charge" and info.replayed


def test_event_hooks_run_once_per_call_around_the_retries(
    journal_path: Path, no_sleep: None
) -> None:
    # as README says: a request hook before the key
    # is added, a response hook on the final answer only
    answers = iter([httpx.Response(503), httpx.Response(201, json={"id": "ch_1"})])
    seen: list[tuple[str, object]] = []
    hooks = {
        "request": [
            lambda request: seen.append(("request", request.headers.get("Idempotency-Key")))
        ],
        "response": [lambda response: seen.append(("response", response.status_code))],
    }
    transport = httpx.MockTransport(lambda request: next(answers))
    with make_client(journal_path, transport=transport, event_hooks=hooks) as client:
        response = client.post(URL, json={"amount": 1}, operation="order-1/charge")
    info = samekey.operation_info(response)
    assert info is not None and info.attempts == 2
    assert seen == [("request", None), ("response", 201)]


def test_a_samekey_transport_given_to_a_samekey_client_is_refused_not_waited_on(
    journal_path: Path,
) -> None:
    # samekey.Client(transport=samekey.SameKeyTransport()) wrapped it in a second one: the inner one
    # found its own client holding the lease on the shared journal and waited it out on every
    # request (25 s with httpx's default timeouts, 60 s with a longer lease), in silence
    inner = samekey.SameKeyTransport(
        httpx.MockTransport(lambda r: httpx.Response(201)), journal=journal_path
    )
    with pytest.raises(
        TypeError, match=r"transport is a samekey.SameKeyTransport.*httpx.HTTPTransport"
    ):
        samekey.Client(journal=journal_path, transport=inner)
    with pytest.raises(TypeError, match=r"mounts\['all://'\] is a samekey.SameKeyTransport"):
        samekey.Client(journal=journal_path, mounts={"all://": inner})
    ainner = samekey.AsyncSameKeyTransport(
        httpx.MockTransport(lambda r: httpx.Response(201)), journal=journal_path
    )
    with pytest.raises(
        TypeError, match=r"transport is a samekey.AsyncSameKeyTransport.*httpx.AsyncHTTPTransport"
    ):
        samekey.AsyncClient(journal=journal_path, transport=ainner)
    inner.close()
    asyncio.run(ainner.aclose())

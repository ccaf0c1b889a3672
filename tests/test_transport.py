"""The sync and async drivers (_transport.py): under any httpx client, streaming what is not journaled;
a cancelled task or a Ctrl-C frees its lease and keeps its key; a forked child's own connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import respx

import samekey
from client_helpers import URL, make_client, sent_keys


@respx.mock
def test_transport_plugs_under_an_existing_httpx_client(journal_path: Path) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(502), httpx.Response(201)])
    transport = samekey.SameKeyTransport(journal=journal_path)
    with samekey.set_testing(True), httpx.Client(transport=transport) as client:
        response = client.post(URL, json={}, extensions={samekey.OPERATION_EXTENSION: "op"})
    assert response.status_code == 201 and len(set(sent_keys(route))) == 1


class _Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that records how far it was read and whether it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.read, self.closed = chunks, 0, False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_an_unkeyed_download_is_handed_on_streaming_not_buffered(journal_path: Path, no_sleep: None) -> None:
    bodies = [_Chunks([b"busy"]), _Chunks([b"x" * 65536] * 64)]  # a 503, then a 4 MiB file

    def server(request: httpx.Request) -> httpx.Response:
        body = bodies[len(served)]
        served.append(body)
        return httpx.Response(503 if body is bodies[0] else 200, stream=body)

    served: list[_Chunks] = []
    with make_client(journal_path, transport=httpx.MockTransport(server)) as client:
        with client.stream("GET", URL) as response:
            assert response.status_code == 200
            assert bodies[1].read == 0, "nothing of the body was read before the caller got the response"
            size = sum(len(chunk) for chunk in response.iter_raw())
        assert size == 64 * 65536
        assert bodies[0].closed, "the 503 that was retried gave its connection back"
        assert client.journal.records() == [], "an unkeyed GET is never journaled"


def test_an_unkeyed_request_that_gives_up_keeps_its_last_answer_readable(journal_path: Path, no_sleep: None) -> None:
    policy = samekey.RetryPolicy(max_attempts=2)
    transport = httpx.MockTransport(lambda request: httpx.Response(503, stream=_Chunks([b'{"error":', b'"down"}'])))
    with make_client(journal_path, transport=transport, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.get(URL)
        with pytest.raises(samekey.RetriesExhausted) as keyed:
            client.post(URL, json={"amount": 1}, operation="op")  # journaled: read whole on every attempt
    for error in (caught.value, keyed.value):
        last = error.last_response
        assert last is not None and last.status_code == 503 and last.json() == {"error": "down"}


def test_the_async_client_streams_an_unkeyed_download_too(journal_path: Path) -> None:
    body = _Chunks([b"y" * 65536] * 16)

    async def story() -> int:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            async with client.stream("GET", URL) as response:
                assert body.read == 0
                return sum([len(chunk) async for chunk in response.aiter_raw()])

    assert asyncio.run(story()) == 16 * 65536

"""The sync and async drivers (_transport.py): under any httpx client, streaming what is not
journaled; a cancelled task or a Ctrl-C frees its lease and keeps its key; a forked child's own
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import http.server
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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


def test_an_unkeyed_download_is_handed_on_streaming_not_buffered(
    journal_path: Path, no_sleep: None
) -> None:
    bodies = [_Chunks([b"busy"]), _Chunks([b"x" * 65536] * 64)]  # a 503, then a 4 MiB file

    def server(request: httpx.Request) -> httpx.Response:
        body = bodies[len(served)]
        served.append(body)
        return httpx.Response(503 if body is bodies[0] else 200, stream=body)

    served: list[_Chunks] = []
    with make_client(journal_path, transport=httpx.MockTransport(server)) as client:
        with client.stream("GET", URL) as response:
            assert response.status_code == 200
            assert bodies[1].read == 0, (
                "nothing of the body was read before the caller got the response"
            )
            size = sum(len(chunk) for chunk in response.iter_raw())
        assert size == 64 * 65536
        assert bodies[0].closed, "the 503 that was retried gave its connection back"
        assert client.journal.records() == [], "an unkeyed GET is never journaled"


def test_an_unkeyed_request_that_gives_up_keeps_its_last_answer_readable(
    journal_path: Path, no_sleep: None
) -> None:
    policy = samekey.RetryPolicy(max_attempts=2)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(503, stream=_Chunks([b'{"error":', b'"down"}']))
    )
    with make_client(journal_path, transport=transport, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.get(URL)
        with pytest.raises(samekey.RetriesExhausted) as keyed:
            client.post(
                URL, json={"amount": 1}, operation="op"
            )  # journaled: read whole on every attempt
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


@respx.mock
async def _async_story(journal_path: Path) -> None:
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(503), httpx.ConnectError("x"), httpx.Response(201)]
    )
    async with samekey.AsyncClient(journal=journal_path) as client:
        first = await client.post(URL, json={"a": 1}, operation="op")
        again = await client.post(URL, json={"a": 1}, operation="op")
        with pytest.raises(samekey.OperationMismatch):
            await client.post(URL, json={"a": 2}, operation="op")
        route.reset()
        route.mock(return_value=httpx.Response(503))
        with pytest.raises(samekey.RetriesExhausted):
            await client.post(URL, json={}, operation="down", timeout=1)
        record = client.journal.get("down")
    assert first.status_code == 201 and again.status_code == 201
    assert samekey.operation_info(again).replayed  # type: ignore[union-attr]
    assert record is not None and record.state == "pending" and record.attempts == 8


def test_async_client_has_the_same_semantics(journal_path: Path, no_sleep: None) -> None:
    asyncio.run(_async_story(journal_path))


async def _warm_up(client: samekey.AsyncClient) -> None:
    """A first call: the journal thread started and the hourly purge done before the test's."""
    await client.post("https://pay.test/charges", json={}, operation="warm-up")


async def _cut_short(client: samekey.AsyncClient, *, after: float) -> None:
    """A call for operation "op" whose task is cancelled ``after`` seconds in (asyncio.wait_for)."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            client.post("https://pay.test/charges", json={}, operation="op"), after
        )


def test_a_cancelled_task_frees_its_lease_so_a_retry_goes_at_once(journal_path: Path) -> None:
    # asyncio.wait_for / asyncio.timeout / a disconnecting web client cancel the task mid-request
    keys: list[str] = []

    async def server(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            await asyncio.sleep(30)  # the first answer never comes in time
        return httpx.Response(201, json={"id": "ch_1"})

    async def story() -> tuple[float, httpx.Response, samekey.OperationRecord | None]:
        transport = httpx.MockTransport(server)
        async with samekey.AsyncClient(
            journal=journal_path, transport=transport, on_busy="raise"
        ) as client:
            await _cut_short(client, after=0.2)
            pending = client.journal.get("op")
            assert pending is not None and pending.pending and pending.lease_owner is None, (
                "lease freed, key kept"
            )
            assert (
                pending.last_error == "CancelledError"
            )  # as `samekey list` shows it, no dangling ": "
            started = time.monotonic()
            again = await client.post("https://pay.test/charges", json={}, operation="op")
            return time.monotonic() - started, again, client.journal.get("op")

    waited, again, record = asyncio.run(story())
    assert again.status_code == 201 and waited < 5, "no wait for a lease nobody holds"
    assert len(keys) == 2 and keys[0] == keys[1], "the retry sent the same key"
    assert record is not None and record.state == "completed"


class _SlowJournalThread(samekey.Journal):
    def run_batch(self, calls: Any) -> Any:
        time.sleep(
            0.2
        )  # a busy disk: the claim is still queued or running when the task is cancelled
        return super().run_batch(calls)


def test_a_task_cancelled_during_its_claim_frees_the_lease(journal_path: Path) -> None:
    # The release must run after the claim it interrupts, not before it (it then found nothing
    # to free, and the claim held the lease for 60 s while nobody worked on the operation).
    async def story() -> tuple[samekey.OperationRecord | None, float]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        journal = _SlowJournalThread(journal_path)
        async with samekey.AsyncClient(
            journal=journal, transport=transport, on_busy="raise"
        ) as client:
            await _warm_up(client)
            await _cut_short(client, after=0.05)
            record = client.journal.get(
                "op"
            )  # the release ran behind the claim, before the cancel ended
            started = time.monotonic()
            await client.post(
                "https://pay.test/charges", json={}, operation="op"
            )  # no OperationInProgress
        journal.close()
        return record, time.monotonic() - started

    record, took = asyncio.run(story())
    assert record is not None and record.pending and record.lease_owner is None
    assert took < 5


async def _lease_freed(
    journal: samekey.Journal, operation: str, since: float
) -> samekey.OperationRecord | None:
    """The record once its lease is free (a release
    running in the background), or after 5 s from ``since``."""
    record = journal.get(operation)
    while (record is None or record.lease_owner is not None) and time.monotonic() - since < 5:
        await asyncio.sleep(0.01)
        record = journal.get(operation)
    return record


def test_a_call_whose_coroutine_is_closed_mid_claim_frees_the_lease(journal_path: Path) -> None:
    # What the garbage collector does to a task dropped mid-call: close() its coroutine, which
    # raises GeneratorExit inside. A closing generator cannot yield its release, so the lease was
    # held for its full length (60 s) with nobody working on the operation.
    async def story() -> tuple[float, float, samekey.OperationRecord | None]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        journal = _SlowJournalThread(journal_path)
        async with samekey.AsyncClient(
            journal=journal, transport=transport, on_busy="raise"
        ) as client:
            await _warm_up(client)
            coroutine = client.post("https://pay.test/charges", json={}, operation="op")
            task = asyncio.ensure_future(coroutine)
            await asyncio.sleep(0.05)  # its claim is on the journal thread now
            started = time.monotonic()
            coroutine.close()
            closing = time.monotonic() - started  # a finalizer: it must not wait for the journal
            record = await _lease_freed(journal, "op", started)
            freed = time.monotonic() - started
            task.cancel()
            with contextlib.suppress(
                BaseException
            ):  # asyncio: "cannot reuse already awaited coroutine"
                await task
        journal.close()
        return closing, freed, record

    closing, freed, record = asyncio.run(story())
    assert closing < 0.1
    assert record is not None and record.pending and record.lease_owner is None, (
        "lease freed, key kept"
    )
    assert freed < 2


def test_a_task_cancelled_while_the_journal_is_busy_does_not_stall_the_event_loop(
    journal_path: Path,
) -> None:
    # Another process holds the journal's write lock for 2 s (a long batch, a backup): the
    # cancelled task's claim waits for it, and its release behind the claim. That wait was on the
    # event loop's thread, so every other task of the service stood still for the 2 s.
    async def story() -> tuple[float, float, samekey.OperationRecord | None]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        async with samekey.AsyncClient(
            journal=journal_path, transport=transport, on_busy="raise"
        ) as client:
            await _warm_up(client)
            gaps: list[float] = []

            async def tick() -> None:  # another task of the service
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            other = sqlite3.connect(journal_path, isolation_level=None, check_same_thread=False)
            other.execute("BEGIN IMMEDIATE")
            unlock = threading.Timer(2.0, other.rollback)
            unlock.start()
            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            try:
                await _cut_short(client, after=0.2)
                took = time.monotonic() - started
            finally:
                await asyncio.sleep(0.05)  # the ticker records the gap it is in (a stall ends one)
                ticker.cancel()
                unlock.join()
                other.close()
            return max(gaps), took, client.journal.get("op")

    longest_stall, took, record = asyncio.run(story())
    assert longest_stall < 1.0, f"the event loop stood still for {longest_stall:.2f} s"
    # the cancellation reached the caller once the lease was free, as before: a retry goes at once
    assert took >= 1.5
    assert record is not None and record.pending and record.lease_owner is None


def test_ctrl_c_mid_request_frees_the_lease_and_keeps_the_key(journal_path: Path) -> None:
    keys: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while waiting for the answer
        return httpx.Response(201)

    with samekey.Client(
        journal=journal_path, transport=httpx.MockTransport(server), on_busy="raise"
    ) as client:
        with pytest.raises(KeyboardInterrupt):
            client.post("https://pay.test/charges", json={}, operation="op")
        record = client.journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None
        assert record.attempts == 1 and "KeyboardInterrupt" in (record.last_error or "")
        assert client.post("https://pay.test/charges", json={}, operation="op").status_code == 201
    assert len(keys) == 2 and keys[0] == keys[1]


class _OtherStore:
    """A JournalStore that is not the SQLite Journal
    (PostgresJournal, one of your own): worker threads."""

    def __init__(self, journal: samekey.Journal) -> None:
        self.journal = journal
        self.location = journal.location

    def __getattr__(self, name: str) -> Any:
        if name in ("run_batch", "completes_later"):  # worker threads for all its calls
            raise AttributeError(name)
        return getattr(self.journal, name)


class _SlowStore(_OtherStore):
    # a slow database: the claim still runs on its worker thread when the task is cancelled
    delay = 0.3

    def claim(self, *args: Any) -> Any:
        time.sleep(self.delay)
        return self.journal.claim(*args)


def test_a_task_cancelled_during_its_claim_on_another_store_frees_the_lease(
    journal_path: Path,
) -> None:
    # asyncio cancels the task's wait, not the worker thread running the claim: the release must
    # wait for that claim, or it frees nothing and the claim then holds the lease for 60 s
    async def story() -> tuple[samekey.OperationRecord | None, int]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        with samekey.Journal(journal_path) as journal:
            store = _SlowStore(journal)
            async with samekey.AsyncClient(
                journal=store, transport=transport, on_busy="raise"
            ) as client:
                await _warm_up(client)
                await _cut_short(client, after=0.05)
                record = journal.get("op")
                again = await client.post(
                    "https://pay.test/charges", json={}, operation="op"
                )  # no OperationInProgress
                # cancelled before its claim began (anyio then never runs it): nothing to wait for
                started = time.monotonic()
                task = asyncio.create_task(
                    client.post("https://pay.test/charges", json={}, operation="early")
                )
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert time.monotonic() - started < 5, (
                    "the cancelled task waited for a claim that never ran"
                )
                assert journal.get("early") is None
                return record, again.status_code

    record, status = asyncio.run(story())
    assert record is not None and record.pending and record.lease_owner is None, (
        "lease freed, key kept"
    )
    assert status == 201


def test_a_task_cancelled_twice_during_its_claim_on_another_store_still_frees_the_lease(
    journal_path: Path,
) -> None:
    # A second cancel (a shutdown after a timeout) ends the task's wait for the release at once;
    # the release must still run behind the claim (it runs on a thread of its own, not on the
    # awaiting task: a release not yet awaited would otherwise never start).
    async def story() -> tuple[float, samekey.OperationRecord | None]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        with samekey.Journal(journal_path) as journal:
            store = _SlowStore(journal)
            store.delay = 1.0  # far longer than the two cancels take, even on a loaded machine
            async with samekey.AsyncClient(
                journal=store, transport=transport, on_busy="raise"
            ) as client:
                await _warm_up(client)
                task = asyncio.create_task(
                    client.post("https://pay.test/charges", json={}, operation="op")
                )
                started = time.monotonic()
                for _ in range(2):
                    await asyncio.sleep(0.05)
                    task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                took = time.monotonic() - started
                return took, await _lease_freed(journal, "op", started)

    took, record = asyncio.run(story())
    assert took < 0.8, "the second cancel did not end the wait for the claim (1 s)"
    assert record is not None and record.pending and record.lease_owner is None, (
        "lease freed, key kept"
    )


def test_a_task_cancelled_as_its_answer_arrives_frees_the_lease(journal_path: Path) -> None:
    # the web client disconnects just as the server's answer comes in: the completion never ran
    # (a worker-thread call whose wait is cancelled before it begins is dropped), and the lease
    # was held for 60 s although nobody worked on the operation any more
    keys: list[str] = []

    async def server(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
        return httpx.Response(201)

    async def story() -> tuple[samekey.OperationRecord | None, int]:
        with samekey.Journal(journal_path) as journal:
            store = _OtherStore(journal)
            transport = httpx.MockTransport(server)
            async with samekey.AsyncClient(
                journal=store, transport=transport, on_busy="raise"
            ) as client:
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.create_task(
                        client.post("https://pay.test/charges", json={}, operation="op")
                    )
                record = journal.get("op")
                again = await client.post(
                    "https://pay.test/charges", json={}, operation="op"
                )  # no OperationInProgress
                return record, again.status_code

    record, status = asyncio.run(story())
    assert record is not None and record.pending and record.lease_owner is None, (
        "lease freed, key kept"
    )
    assert status == 201 and len(keys) == 2 and keys[0] == keys[1], "the retry sent the same key"


class _InterruptedCompletion(samekey.Journal):
    def complete(self, *args: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C as the answer is being recorded


def test_ctrl_c_while_the_answer_is_recorded_frees_the_lease(journal_path: Path) -> None:
    with _InterruptedCompletion(journal_path) as journal:
        client = samekey.Client(
            journal=journal, transport=httpx.MockTransport(lambda r: httpx.Response(201))
        )
        with pytest.raises(KeyboardInterrupt):
            client.post("https://pay.test/charges", json={}, operation="op")
        record = journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None, (
            "nobody holds it now"
        )
        assert record.attempts == 1
        client.close()


class _InterruptedAfterClaim(samekey.Journal):
    def claim(self, *args: Any) -> Any:
        result = super().claim(*args)
        if result.status == "created":
            raise KeyboardInterrupt  # between the claim's commit and the send
        return result


def test_an_interruption_right_after_the_claim_frees_the_lease(journal_path: Path) -> None:
    with _InterruptedAfterClaim(journal_path) as journal:
        client = samekey.Client(
            journal=journal, transport=httpx.MockTransport(lambda r: httpx.Response(201))
        )
        with pytest.raises(KeyboardInterrupt):
            client.post("https://pay.test/charges", json={}, operation="op")
        record = journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None, (
            "nobody holds it now"
        )
        assert client.post("https://pay.test/charges", json={}, operation="op").status_code == 201
        client.close()


class _PeerPortHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the client's TCP port and the body it got (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"port": self.client_address[1], "body": body.decode()}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_sends_on_its_own_connection_not_the_parents(journal_path: Path) -> None:
    # A batch pays its first item, then forks workers (multiprocessing 'fork', a prefork runner)
    # that share the client. Were a child to send on the parent's pooled keep-alive socket, two
    # processes would read each other's answers: one payment's answer journaled as another's.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PeerPortHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with samekey.Client(journal=journal_path, base_url=url) as client:
            parent_port = client.post("/charges", json={"n": 0}, operation="op-0").json()["port"]
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    faulthandler.dump_traceback_later(10, exit=True)
                    answer = client.post("/charges", json={"n": 1}, operation="op-1").json()
                    os.write(writer, json.dumps(answer).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(writer)
            with os.fdopen(reader) as pipe:
                child_answer = json.loads(pipe.read() or "{}")
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            # the parent's connection is still its own
            assert (
                client.post("/charges", json={"n": 2}, operation="op-2").json()["port"]
                == parent_port
            )
    finally:
        server.shutdown()
        server.server_close()
    assert child_answer["body"] == '{"n":1}'
    assert child_answer["port"] != parent_port, (
        "the child sent on the parent's keep-alive connection"
    )

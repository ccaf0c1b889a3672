"""What the performance rests on: one journal transaction before the send, none after.

The claim is written before the send; the answer is queued (samekey._deferred) and written
with the next claim, in its transaction. FLUSH_DELAY is raised here so that the flusher
thread never takes a completion first on a slow machine.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import types
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import samekey

# the previous request's completion and this request's claim, one commit, then the request
ONE_TRANSACTION_THEN_SEND = ["BEGIN", "UPDATE", "INSERT", "COMMIT", "send"]


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_one_journal_statement_before_the_send_and_one_after(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    events: list[str] = []
    monkeypatch.setattr("samekey._deferred.FLUSH_DELAY", 60.0)

    def server(request: httpx.Request) -> httpx.Response:
        events.append("send")
        return httpx.Response(201, json={"id": "ch_1"})

    journal = samekey.Journal(journal_path, durability=durability)  # type: ignore[arg-type]
    with samekey.Client(journal=journal, transport=httpx.MockTransport(server)) as client:
        client.post(
            "https://pay.test/charges", json={"amount": 1}, operation="warm-up"
        )  # the hourly purge check
        journal._conn.set_trace_callback(lambda sql: events.append(sql.split()[0]))  # type: ignore[union-attr]
        connects: list[object] = []
        real_connect = sqlite3.connect
        monkeypatch.setattr(
            sqlite3, "connect", lambda *a, **k: connects.append(a) or real_connect(*a, **k)
        )
        for n in range(3):
            events.clear()
            response = client.post(
                "https://pay.test/charges", json={"amount": 1}, operation=f"op-{n}"
            )
            assert response.status_code == 201
            assert events == ONE_TRANSACTION_THEN_SEND, "the last answer and this claim, then send"
        events.clear()
        # op-2's answer is still queued: the replay's claim writes it first, and finds it there
        replayed = client.post("https://pay.test/charges", json={"amount": 1}, operation="op-2")
        assert samekey.operation_info(replayed).replayed and "send" not in events  # type: ignore[union-attr]
        assert connects == [], "no database connection per request"
    journal.close()


def test_the_async_client_pays_the_same_two_statements(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr("samekey._deferred.FLUSH_DELAY", 60.0)

    def server(request: httpx.Request) -> httpx.Response:
        events.append("send")
        return httpx.Response(201, json={"id": "ch_1"})

    async def story(journal: samekey.Journal) -> None:
        async with samekey.AsyncClient(
            journal=journal, transport=httpx.MockTransport(server)
        ) as client:
            await client.post("https://pay.test/charges", json={"amount": 1}, operation="warm-up")
            journal._conn.set_trace_callback(lambda sql: events.append(sql.split()[0]))  # type: ignore[union-attr]
            for n in range(3):
                events.clear()
                await client.post(
                    "https://pay.test/charges", json={"amount": 1}, operation=f"op-{n}"
                )
                assert events == ONE_TRANSACTION_THEN_SEND
            assert journal.get("op-2").state == "completed"  # type: ignore[union-attr]

    with samekey.Journal(journal_path, durability="process") as journal:
        asyncio.run(story(journal))


def _samekey_garbage(send: Callable[[int], object]) -> list[str]:
    """What of samekey's the collector finds in reference cycles after 50 requests."""
    gc.collect()
    gc.disable()
    try:
        for n in range(50):
            send(n)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [type(thing).__name__ for thing in gc.garbage if _of_samekey(thing)]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


def _of_samekey(thing: object) -> bool:
    if isinstance(thing, types.FunctionType):
        return thing.__module__.startswith("samekey")
    if isinstance(thing, types.GeneratorType):  # a generator has no __module__: its code's file
        return Path(thing.gi_code.co_filename).parent.name == "samekey"
    # an answer's OperationInfo goes with httpx's Response, which is in a cycle of httpx's own
    kind = type(thing)
    return kind.__module__.startswith("samekey") and kind is not samekey.OperationInfo


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_requests_leave_no_garbage_cycles_of_samekey(journal_path: Path, driver: str) -> None:
    # garbage in a cycle waits for the collector, whose runs then cost every request
    transport = httpx.MockTransport(lambda request: httpx.Response(201, json={"id": "ch_1"}))
    with samekey.Journal(journal_path) as journal:
        if driver == "sync":
            with samekey.Client(journal=journal, transport=transport) as client:
                client.post("https://pay.test/charges", json={}, operation="warm-up")
                found = _samekey_garbage(
                    lambda n: client.post("https://pay.test/charges", json={}, operation=f"{n}")
                )
        else:
            found = asyncio.run(_async_garbage(journal, transport))
    assert found == []


async def _async_garbage(journal: samekey.Journal, transport: httpx.MockTransport) -> list[str]:
    loop = asyncio.get_running_loop()
    async with samekey.AsyncClient(journal=journal, transport=transport) as client:
        await client.post("https://pay.test/charges", json={}, operation="warm-up")

        def send(n: int) -> object:
            post = client.post("https://pay.test/charges", json={}, operation=f"{n}")
            return asyncio.run_coroutine_threadsafe(post, loop).result()

        return await asyncio.to_thread(_samekey_garbage, send)

"""The async clients' journal thread: off the event loop, batched, correct for several loops."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import httpx
import pytest

import samekey
from samekey._contract import Claim


def _counting(journal: samekey.Journal) -> tuple[list[int], list[int]]:
    """Wrap the journal's commit step; return (batch sizes, threads that committed)."""
    sizes: list[int] = []
    threads: list[int] = []
    original = journal._run_batch_locked  # the batch with the queued completions at its head

    def counting(batch: list[object], sync: bool) -> None:
        sizes.append(len(batch))
        threads.append(threading.get_ident())
        original(batch, sync)  # type: ignore[arg-type]

    journal._run_batch_locked = counting  # type: ignore[method-assign]
    return sizes, threads


async def _handler(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(0.001)
    return httpx.Response(201, json={"key": request.headers["Idempotency-Key"]})


def test_concurrent_async_operations_share_commits_off_the_loop(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)
    sizes, threads = _counting(journal)
    loop_thread = threading.get_ident()

    async def main() -> list[httpx.Response]:
        async with samekey.AsyncClient(
            journal=journal, transport=httpx.MockTransport(_handler)
        ) as client:
            return await asyncio.gather(
                *(
                    client.post("http://pay.test/charges", json={"n": i}, operation=f"op-{i}")
                    for i in range(200)
                )
            )

    responses = asyncio.run(main())
    written_on = list(threads)  # before the read below writes what is still queued, here
    assert [r.status_code for r in responses] == [201] * 200
    records = journal.records()
    assert len(records) == 200 and all(r.state == "completed" for r in records)
    # each operation's key reached the server and was journaled
    assert {r.json()["key"] for r in responses} == {r.key for r in records}
    assert loop_thread not in written_on, "a journal write ran on the event loop"
    assert sum(sizes) >= 400  # one claim and one completion per operation (and a retention purge)
    assert len(sizes) < 200, f"{len(sizes)} commits for 400 writes: no grouping"
    journal.close()


def test_one_client_used_from_two_event_loops(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path, durability="process")
    client = samekey.AsyncClient(journal=journal, transport=httpx.MockTransport(_handler))
    results: dict[str, list[int]] = {}

    def run(name: str) -> None:
        async def main() -> list[int]:
            responses = await asyncio.gather(
                *(
                    client.post("http://pay.test/c", json={}, operation=f"{name}-{i}")
                    for i in range(50)
                )
            )
            return [r.status_code for r in responses]

        results[name] = asyncio.run(main())

    workers = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert results == {"a": [201] * 50, "b": [201] * 50}
    assert len(journal.records()) == 100
    asyncio.run(client.aclose())
    journal.close()


def test_journal_errors_reach_the_awaiting_task(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)

    async def main() -> None:
        async with samekey.AsyncClient(
            journal=journal, transport=httpx.MockTransport(_handler)
        ) as client:
            await client.post("http://pay.test/c", json={}, operation="first")
            journal.close()
            with pytest.raises(samekey.JournalError, match="closed"):
                await client.post("http://pay.test/c", json={}, operation="second")

    asyncio.run(main())


def test_cancelled_task_does_not_disturb_the_others(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)

    async def main() -> list[int]:
        async with samekey.AsyncClient(
            journal=journal, transport=httpx.MockTransport(_handler)
        ) as client:
            victim = asyncio.create_task(
                client.post("http://pay.test/c", json={}, operation="victim")
            )
            others = [
                asyncio.create_task(client.post("http://pay.test/c", json={}, operation=f"o-{i}"))
                for i in range(20)
            ]
            await asyncio.sleep(0)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            return [r.status_code for r in await asyncio.gather(*others)]

    assert asyncio.run(main()) == [201] * 20
    assert all(journal.get(f"o-{i}").state == "completed" for i in range(20))  # type: ignore[union-attr]
    journal.close()


def test_a_failing_write_in_a_batch_fails_alone(journal_path: Path) -> None:
    from samekey._contract import Intent

    journal = samekey.Journal(journal_path)

    def intent(name: str, body: bytes) -> Intent:
        return Intent(name, f"key-{name}", "Idempotency-Key", "POST", "http://x/", "fp", (), body)

    outcomes = journal.run_batch(
        [
            Claim(intent("good-1", b"{}"), "me", 60.0, 1.0),
            Claim(
                intent("bad", b"{}"), "me", 60.0, float("nan")
            ),  # NaN is NULL to SQLite: created_at refuses it
            Claim(intent("good-2", b"{}"), "me", 60.0, 1.0),
        ]
    )
    assert [type(error).__name__ if error else result.status for result, error in outcomes] == [
        "created",
        "JournalError",  # classified, with what to do
        "created",
    ]
    assert sorted(r.operation for r in journal.records()) == ["good-1", "good-2"]
    journal.close()


def test_a_forked_child_runs_its_own_journal_thread(journal_path: Path) -> None:
    # an AsyncClient made before a fork (a preloaded app) is used by the forked worker
    transport = httpx.MockTransport(lambda request: httpx.Response(201))
    client = samekey.AsyncClient(journal=journal_path, transport=transport)

    async def pay(operation: str) -> int:
        return (
            await client.post("https://pay.test/charges", json={}, operation=operation)
        ).status_code

    assert asyncio.run(pay("parent")) == 201  # the parent's journal thread is running now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if asyncio.run(asyncio.wait_for(pay("child"), 10)) == 201 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's journal calls were answered"
    asyncio.run(client.aclose())
    with samekey.Journal(journal_path) as journal:
        assert {r.operation for r in journal.records()} == {"parent", "child"}


def test_a_journal_thread_that_could_not_start_does_not_wedge_the_client(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "can't start new thread" (a pids cgroup limit, memory): the calls of that moment fail,
    # the next ones start the thread again instead of queueing behind one that never ran
    start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")] * 2  # the purge's call, then the claim's

    def flaky_start(thread: threading.Thread) -> None:
        if thread.name == "samekey-journal" and failures:
            raise failures.pop()
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", flaky_start)

    async def main() -> int:
        async with samekey.AsyncClient(
            journal=journal_path, transport=httpx.MockTransport(_handler)
        ) as client:
            with pytest.raises(
                RuntimeError, match="can't start new thread"
            ):  # no hang, nothing sent
                await asyncio.wait_for(
                    client.post("http://pay.test/c", json={}, operation="o-1"), 10
                )
            response = await asyncio.wait_for(
                client.post("http://pay.test/c", json={}, operation="o-1"), 10
            )
            return response.status_code

    assert asyncio.run(main()) == 201
    journal = samekey.Journal(journal_path)
    assert journal.get("o-1").state == "completed"  # type: ignore[union-attr]
    journal.close()

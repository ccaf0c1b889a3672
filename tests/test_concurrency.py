"""One key per operation under threads, asyncio tasks and processes; the retry budget."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import samekey
from journal_helpers import in_thread, intent
from samekey import _journal
from samekey._actions import Send, Sleep
from samekey._config import Config
from samekey._contract import JournalCall
from samekey._engine import Engine
from samekey._flow import operation_flow
from samekey.testing import Fault, FaultPlan, PaymentServer

HERE = Path(__file__).parent
URL = "https://pay.example/charges"


def _assert_exactly_once(server: PaymentServer, n: int) -> None:
    charges = server.charges()
    amounts = Counter(c["amount"] for c in charges)
    assert sorted(amounts) == list(range(n)), "an operation was lost"
    assert max(amounts.values()) == 1, f"double charges: {[a for a, k in amounts.items() if k > 1]}"
    key_of_amount = {c["amount"]: c["key"] for c in charges}
    assert len(set(key_of_amount.values())) == n
    assert set(server.keys_seen()) == set(key_of_amount.values()), "a request carried a second key"


# -- async: the same semantics as the sync client ----------------------------------------------


@respx.mock
async def _async_story(journal_path: Path) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(503), httpx.ConnectError("x"), httpx.Response(201)])
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
        async with samekey.AsyncClient(journal=journal_path, transport=transport, on_busy="raise") as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.post("https://pay.test/charges", json={}, operation="op"), 0.2)
            pending = client.journal.get("op")
            assert pending is not None and pending.pending and pending.lease_owner is None, "lease freed, key kept"
            assert pending.last_error == "CancelledError"  # as `samekey list` shows it, no dangling ": "
            started = time.monotonic()
            again = await client.post("https://pay.test/charges", json={}, operation="op")
            return time.monotonic() - started, again, client.journal.get("op")

    waited, again, record = asyncio.run(story())
    assert again.status_code == 201 and waited < 5, "no wait for a lease nobody holds"
    assert len(keys) == 2 and keys[0] == keys[1], "the retry sent the same key"
    assert record is not None and record.state == "completed"


class _SlowJournalThread(samekey.Journal):
    def run_batch(self, calls: Any) -> Any:
        time.sleep(0.2)  # a busy disk: the claim is still queued or running when the task is cancelled
        return super().run_batch(calls)


def test_a_task_cancelled_during_its_claim_frees_the_lease(journal_path: Path) -> None:
    # The release must run after the claim it interrupts, not before it (it then found nothing
    # to free, and the claim held the lease for 60 s while nobody worked on the operation).
    async def story() -> tuple[samekey.OperationRecord | None, float]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        journal = _SlowJournalThread(journal_path)
        async with samekey.AsyncClient(journal=journal, transport=transport, on_busy="raise") as client:
            await client.post("https://pay.test/charges", json={}, operation="warm-up")  # (and the hourly purge)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.post("https://pay.test/charges", json={}, operation="op"), 0.05)
            record = client.journal.get("op")  # the release ran behind the claim, before the cancel ended
            started = time.monotonic()
            await client.post("https://pay.test/charges", json={}, operation="op")  # no OperationInProgress
        journal.close()
        return record, time.monotonic() - started

    record, took = asyncio.run(story())
    assert record is not None and record.pending and record.lease_owner is None
    assert took < 5


async def _lease_freed(journal: samekey.Journal, operation: str, since: float) -> samekey.OperationRecord | None:
    """The record once its lease is free (a release running in the background), or after 5 s from ``since``."""
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
        async with samekey.AsyncClient(journal=journal, transport=transport, on_busy="raise") as client:
            await client.post("https://pay.test/charges", json={}, operation="warm-up")  # (and the hourly purge)
            coroutine = client.post("https://pay.test/charges", json={}, operation="op")
            task = asyncio.ensure_future(coroutine)
            await asyncio.sleep(0.05)  # its claim is on the journal thread now
            started = time.monotonic()
            coroutine.close()
            closing = time.monotonic() - started  # a finalizer: it must not wait for the journal
            record = await _lease_freed(journal, "op", started)
            freed = time.monotonic() - started
            task.cancel()
            with contextlib.suppress(BaseException):  # asyncio: "cannot reuse already awaited coroutine"
                await task
        journal.close()
        return closing, freed, record

    closing, freed, record = asyncio.run(story())
    assert closing < 0.1
    assert record is not None and record.pending and record.lease_owner is None, "lease freed, key kept"
    assert freed < 2


def test_a_task_cancelled_while_the_journal_is_busy_does_not_stall_the_event_loop(journal_path: Path) -> None:
    # Another process holds the journal's write lock for 2 s (a long batch, a backup): the
    # cancelled task's claim waits for it, and its release behind the claim. That wait was on the
    # event loop's thread, so every other task of the service stood still for the 2 s.
    async def story() -> tuple[float, float, samekey.OperationRecord | None]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        async with samekey.AsyncClient(journal=journal_path, transport=transport, on_busy="raise") as client:
            await client.post("https://pay.test/charges", json={}, operation="warm-up")  # (and the hourly purge)
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
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.post("https://pay.test/charges", json={}, operation="op"), 0.2)
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

    with samekey.Client(journal=journal_path, transport=httpx.MockTransport(server), on_busy="raise") as client:
        with pytest.raises(KeyboardInterrupt):
            client.post("https://pay.test/charges", json={}, operation="op")
        record = client.journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None
        assert record.attempts == 1 and "KeyboardInterrupt" in (record.last_error or "")
        assert client.post("https://pay.test/charges", json={}, operation="op").status_code == 201
    assert len(keys) == 2 and keys[0] == keys[1]


class _OtherStore:
    """A JournalStore that is not the SQLite Journal (PostgresJournal, one of your own): worker threads."""

    def __init__(self, journal: samekey.Journal) -> None:
        self.journal = journal
        self.location = journal.location

    def __getattr__(self, name: str) -> Any:
        if name == "run_batch":  # a store that does not batch: its calls go to worker threads
            raise AttributeError(name)
        return getattr(self.journal, name)


class _SlowStore(_OtherStore):
    def claim(self, *args: Any) -> Any:
        time.sleep(0.3)  # a slow database: the claim still runs on its worker thread when the task is cancelled
        return self.journal.claim(*args)


def test_a_task_cancelled_during_its_claim_on_another_store_frees_the_lease(journal_path: Path) -> None:
    # asyncio cancels the task's wait, not the worker thread running the claim: the release must
    # wait for that claim, or it frees nothing and the claim then holds the lease for 60 s
    async def story() -> tuple[samekey.OperationRecord | None, int]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        with samekey.Journal(journal_path) as journal:
            store = _SlowStore(journal)
            async with samekey.AsyncClient(journal=store, transport=transport, on_busy="raise") as client:
                await client.post("https://pay.test/charges", json={}, operation="warm-up")  # (and the hourly purge)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.post("https://pay.test/charges", json={}, operation="op"), 0.05)
                record = journal.get("op")
                again = await client.post("https://pay.test/charges", json={}, operation="op")  # no OperationInProgress
                # cancelled before its claim began (anyio then never runs it): nothing to wait for
                started = time.monotonic()
                task = asyncio.create_task(client.post("https://pay.test/charges", json={}, operation="early"))
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert time.monotonic() - started < 5, "the cancelled task waited for a claim that never ran"
                assert journal.get("early") is None
                return record, again.status_code

    record, status = asyncio.run(story())
    assert record is not None and record.pending and record.lease_owner is None, "lease freed, key kept"
    assert status == 201


def test_a_task_cancelled_twice_during_its_claim_on_another_store_still_frees_the_lease(journal_path: Path) -> None:
    # A second cancel (a shutdown after a timeout) ends the task's wait for the release at once;
    # the release must still run behind the claim (it runs on a thread of its own, not on the
    # awaiting task: a release not yet awaited would otherwise never start).
    async def story() -> tuple[float, samekey.OperationRecord | None]:
        transport = httpx.MockTransport(lambda request: httpx.Response(201))
        with samekey.Journal(journal_path) as journal:
            store = _SlowStore(journal)
            async with samekey.AsyncClient(journal=store, transport=transport, on_busy="raise") as client:
                await client.post("https://pay.test/charges", json={}, operation="warm-up")  # (and the hourly purge)
                task = asyncio.create_task(client.post("https://pay.test/charges", json={}, operation="op"))
                started = time.monotonic()
                for _ in range(2):
                    await asyncio.sleep(0.05)
                    task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                took = time.monotonic() - started
                return took, await _lease_freed(journal, "op", started)

    took, record = asyncio.run(story())
    assert took < 0.25, "the second cancel did not end the wait for the claim"
    assert record is not None and record.pending and record.lease_owner is None, "lease freed, key kept"


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
            async with samekey.AsyncClient(journal=store, transport=transport, on_busy="raise") as client:
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.create_task(client.post("https://pay.test/charges", json={}, operation="op"))
                record = journal.get("op")
                again = await client.post("https://pay.test/charges", json={}, operation="op")  # no OperationInProgress
                return record, again.status_code

    record, status = asyncio.run(story())
    assert record is not None and record.pending and record.lease_owner is None, "lease freed, key kept"
    assert status == 201 and len(keys) == 2 and keys[0] == keys[1], "the retry sent the same key"


class _InterruptedCompletion(samekey.Journal):
    def complete(self, *args: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C as the answer is being recorded


def test_ctrl_c_while_the_answer_is_recorded_frees_the_lease(journal_path: Path) -> None:
    with _InterruptedCompletion(journal_path) as journal:
        client = samekey.Client(journal=journal, transport=httpx.MockTransport(lambda r: httpx.Response(201)))
        with pytest.raises(KeyboardInterrupt):
            client.post("https://pay.test/charges", json={}, operation="op")
        record = journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None, "nobody holds it now"
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
        client = samekey.Client(journal=journal, transport=httpx.MockTransport(lambda r: httpx.Response(201)))
        with pytest.raises(KeyboardInterrupt):
            client.post("https://pay.test/charges", json={}, operation="op")
        record = journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None, "nobody holds it now"
        assert client.post("https://pay.test/charges", json={}, operation="op").status_code == 201
        client.close()


def test_ctrl_c_inside_a_journal_write_leaves_the_journal_usable(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a pending operation: its next claim reads it back inside BEGIN IMMEDIATE
    down = httpx.MockTransport(lambda r: httpx.Response(503))
    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(journal=journal_path, transport=down, policy=policy) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post("https://pay.test/charges", json={}, operation="op")
    real_record = _journal.record_from_row
    interruptions = [KeyboardInterrupt()]

    def interrupted(row: Any, location: str) -> Any:
        if interruptions:
            raise interruptions.pop()  # Ctrl-C lands while the claim holds the write lock
        return real_record(row, location)

    monkeypatch.setattr(_journal, "record_from_row", interrupted)
    with samekey.Client(journal=journal_path, transport=down, policy=policy) as client:
        raised = in_thread(lambda: client.post("https://pay.test/charges", json={}, operation="op"))
        assert isinstance(raised, KeyboardInterrupt), "post() returns: its clean-up did not wait forever"
        assert client.journal._conn is not None and not client.journal._conn.in_transaction
        other = samekey.Journal(journal_path, lock_timeout=1)  # another process's view: not locked
        assert other.claim(intent("other"), "other", 60.0, time.time()).status == "created"
        other.close()
        record = client.journal.get("op")
        assert record is not None and record.pending and record.lease_owner is None
        assert isinstance(in_thread(lambda: client.post("https://pay.test/charges", json={}, operation="op")),
                          samekey.RetriesExhausted)  # fmt: skip


# -- threads -----------------------------------------------------------------------------------


def test_threads_on_one_operation_get_one_charge_and_the_same_answer(journal_path: Path, tmp_path: Path) -> None:
    with PaymentServer(tmp_path / "s.sqlite3", work_seconds=0.2) as server:
        results: list[httpx.Response] = []
        with samekey.Client(journal=journal_path, base_url=server.url) as client:

            def pay() -> None:
                results.append(client.post("/charges", json={"amount": 1}, operation="shared-op"))

            threads = [threading.Thread(target=pay) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        assert len(results) == 8 and {r.status_code for r in results} == {201}
        assert len({r.json()["id"] for r in results}) == 1
        assert server.charge_count() == 1 and len(server.requests()) == 1
        assert sum(1 for r in results if samekey.operation_info(r).replayed) == 7  # type: ignore[union-attr]


def test_on_busy_raise_reports_the_operation_in_progress(journal_path: Path, tmp_path: Path) -> None:
    with PaymentServer(tmp_path / "s.sqlite3", work_seconds=0.5) as server:
        with samekey.Client(journal=journal_path, base_url=server.url, on_busy="raise") as client:
            worker = threading.Thread(target=lambda: client.post("/charges", json={}, operation="busy-op"))
            worker.start()
            deadline = time.monotonic() + 5
            while not server.requests() and time.monotonic() < deadline:
                # wait until the first call holds the lease and is on the wire
                rec = client.journal.get("busy-op")
                if rec is not None and rec.lease_owner:
                    break
                time.sleep(0.01)
            with pytest.raises(samekey.OperationInProgress, match=r"being executed by .*on_busy='wait'"):
                client.post("/charges", json={}, operation="busy-op")
            worker.join(timeout=10)
        assert server.charge_count() == 1


def test_an_expired_lease_from_another_host_is_taken_over_with_the_same_key(journal_path: Path) -> None:
    journal = samekey.Journal(journal_path)
    with respx.mock, samekey.Client(journal=journal, lease=0.3) as client:
        route = respx.post(URL).mock(return_value=httpx.Response(201))
        request = client.build_request("POST", URL, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "op"})
        request.read()
        plan = client.engine.plan(request)
        assert plan is not None
        # a replica on another host claimed it, then vanished mid-payment
        journal.claim(plan.intent, "other-host/4242/abcd", 0.3, time.time())
        started = time.monotonic()
        response = client.post(URL, json={"a": 1}, operation="op")
        waited = time.monotonic() - started
    journal.close()
    assert response.status_code == 201 and 0.2 <= waited < 5
    assert route.calls[0].request.headers["Idempotency-Key"] == plan.intent.key


# -- processes -----------------------------------------------------------------------------------


def _worker(journal: Path, url: str, seed: int, n: int) -> subprocess.Popen[bytes]:
    journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(journal.parent / f"worker-{seed}-{time.monotonic_ns()}.log", "wb")
    return subprocess.Popen(
        [sys.executable, str(HERE / "race_worker.py"), str(journal), url, str(seed), str(n)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _workers(journal: Path, url: str, count: int, n: int) -> list[subprocess.Popen[bytes]]:
    return [_worker(journal, url, seed, n) for seed in range(count)]


def _wait_all(workers: list[subprocess.Popen[bytes]], journal: Path) -> None:
    codes = [w.wait(timeout=120) for w in workers]
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(journal.parent.glob("worker-*.log")))
    assert codes == [0] * len(workers), logs


@pytest.fixture
def race_server(tmp_path: Path) -> Iterator[PaymentServer]:
    with PaymentServer(tmp_path / "race.sqlite3") as server:
        yield server


def test_8_processes_race_over_200_operations(journal_path: Path, race_server: PaymentServer) -> None:
    workers = _workers(journal_path, race_server.url, 8, 200)
    _wait_all(workers, journal_path)
    _assert_exactly_once(race_server, 200)


def test_8_processes_race_with_one_killed_and_restarted(journal_path: Path, race_server: PaymentServer) -> None:
    workers = _workers(journal_path, race_server.url, 8, 200)
    deadline = time.monotonic() + 60
    while race_server.charge_count() < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(workers[3].pid, signal.SIGKILL)
    assert workers[3].wait(timeout=10) == -signal.SIGKILL
    # the restarted process runs the same program on the same journal
    workers[3] = _worker(journal_path, race_server.url, 3, 200)
    _wait_all(workers, journal_path)
    _assert_exactly_once(race_server, 200)


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
            assert client.post("/charges", json={"n": 2}, operation="op-2").json()["port"] == parent_port
    finally:
        server.shutdown()
        server.server_close()
    assert child_answer["body"] == '{"n":1}'
    assert child_answer["port"] != parent_port, "the child sent on the parent's keep-alive connection"


# -- asyncio at scale -------------------------------------------------------------------------------


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PaymentServer in its own process, so it does not share our GIL."""
    db = tmp_path / "proc-server.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "samekey.testing", "--db", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url, db
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


class _SlowDiskJournal(samekey.Journal):
    """The real journal (so the async clients' journal thread runs it), 2 ms slower per batch of
    calls, as on a slow disk, recording which thread ran each batch."""

    threads: list[int]
    calls = 0

    def run_batch(self, calls: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        self.threads.append(threading.get_ident())
        self.calls += len(calls)
        time.sleep(0.002)
        return super().run_batch(calls)


async def _thousand(journal: object | None, url: str) -> tuple[list[float], list[httpx.Response]]:
    """1,000 POSTs at concurrency 100 with a heartbeat; bare httpx when journal is None."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    limits = httpx.Limits(max_connections=100)
    if journal is None:
        client = httpx.AsyncClient(base_url=url, limits=limits)
    else:
        client = samekey.AsyncClient(journal=journal, base_url=url, limits=limits)  # type: ignore[arg-type]
    async with client:
        gate = asyncio.Semaphore(100)

        async def pay(i: int) -> httpx.Response:
            async with gate:
                if journal is None:
                    return await client.post("/charges", json={"amount": i}, headers={"Idempotency-Key": f"bare-{i}"})
                return await client.post("/charges", json={"amount": i}, operation=f"op-{i}")  # type: ignore[call-arg]

        beat = asyncio.create_task(heartbeat())
        responses = await asyncio.gather(*(pay(i) for i in range(1000)))
        stop.set()
        await beat
    return sorted(lags), responses


def test_1000_async_operations_at_concurrency_100(journal_path: Path, server_process: tuple[str, Path]) -> None:
    url, db = server_process
    journal = _SlowDiskJournal(journal_path)  # fsync durability, the default
    journal.threads = []
    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    try:
        lags, responses = asyncio.run(_thousand(journal, url))
    finally:
        journal.close()
    assert [r.status_code for r in responses] == [201] * 1000
    import sqlite3

    with sqlite3.connect(db) as conn:
        amounts = [row[0] for row in conn.execute("SELECT json_extract(body, '$.amount') FROM charges")]
    assert sorted(amounts) == list(range(1000))
    # every journal call (2 per operation) ran off the event loop, grouped in batches of 2 ms + fsync
    assert journal.calls >= 2000 and journal.threads and loop_thread not in journal.threads
    print(f"{journal.calls} journal calls in {len(journal.threads)} batches")
    # The same load through bare httpx, on the same server, for the loop's own baseline: at
    # concurrency 100 httpx itself keeps the loop busy for tens of ms per turn on 2 cores.
    bare_lags, _ = asyncio.run(_thousand(None, url))
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    bare_p50, bare_p99 = bare_lags[len(bare_lags) // 2], bare_lags[int(len(bare_lags) * 0.99)]
    print(
        f"heartbeat lag p50/p99: samekey {p50 * 1000:.1f}/{p99 * 1000:.1f} ms, "
        f"bare httpx {bare_p50 * 1000:.1f}/{bare_p99 * 1000:.1f} ms"
    )
    # every batch costs >= 2 ms: had they run on the loop, each beat would wait them out
    assert p99 < bare_p99 * 2 + 0.02, "the journal blocks the event loop"


# -- retry budget ---------------------------------------------------------------------------------


def test_retry_budget_bounds_retries_while_the_server_is_down_and_recovers(journal_path: Path, tmp_path: Path) -> None:
    budget = samekey.RetryBudget(capacity=50, retry_cost=5, success_refund=1)
    policy = samekey.RetryPolicy(max_attempts=5, initial_delay=0, max_delay=0, budget=budget)
    plan = FaultPlan([Fault("status", 503)] * 10_000)
    with PaymentServer(tmp_path / "s.sqlite3", faults=plan) as server:
        with samekey.Client(journal=journal_path, base_url=server.url, policy=policy) as client:
            for i in range(40):
                with pytest.raises(samekey.RetriesExhausted):
                    client.post("/charges", json={"amount": i}, operation=f"down-{i}")
            sent = len(server.requests())
            # 40 first attempts are never throttled; retries stop after 50 / 5 = 10
            assert sent == 40 + 10, sent
            assert budget.tokens < 5
            err_text = ""
            try:
                client.post("/charges", json={"amount": 99}, operation="down-99")
            except samekey.RetriesExhausted as exc:
                err_text = str(exc)
            assert "retry budget is empty" in err_text

            server.faults = FaultPlan()  # healthy again: successes refill the bucket
            for i in range(20):
                assert client.post("/charges", json={"amount": i}, operation=f"down-{i}").status_code == 201
            assert budget.tokens >= 20
            server.faults = FaultPlan([Fault("status", 503)])
            response = client.post("/charges", json={"amount": 1000}, operation="after-recovery")
            assert response.status_code == 201  # the retry was allowed again


def test_budget_can_be_turned_off() -> None:
    assert samekey.RetryPolicy(budget=None).budget is None
    assert isinstance(samekey.RetryPolicy().budget, samekey.RetryBudget)


def _drive(
    engine: Engine, request: httpx.Request, answers: list[httpx.Response], on_sleep: Callable[[float], None]
) -> httpx.Response:
    """Run the decision core by hand: journal calls for real, answers from the list, sleeps reported."""
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


def test_the_lease_covers_a_retry_after_longer_than_the_lease(journal_path: Path) -> None:
    # A Retry-After (or a backoff) longer than the lease must not let another caller take the
    # operation over, and send it too, while its holder waits to try again.
    journal = samekey.Journal(journal_path)
    engine = Engine(Config.of(policy=samekey.RetryPolicy(), lease=2), journal)
    request = httpx.Request("POST", URL, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "slow-op"})
    held_for: list[float] = []

    def on_sleep(seconds: float) -> None:
        record = journal.get("slow-op")
        assert record is not None and record.lease_expires is not None
        held_for.append(record.lease_expires - time.time() - seconds)

    answers = [httpx.Response(503, headers={"Retry-After": "30"}), httpx.Response(201)]
    assert _drive(engine, request, answers, on_sleep).status_code == 201
    journal.close()
    assert len(held_for) == 1 and held_for[0] > 1.5  # still held past the wait, for the next attempt


def test_waiting_a_long_time_on_a_busy_operation_does_not_overflow(journal_path: Path) -> None:
    # A holder with a long lease (a slow bank transfer): the waiter polls for an hour of its clock.
    journal = samekey.Journal(journal_path)
    clock = [time.time()]
    engine = Engine(Config.of(lease=3600), journal, clock=lambda: clock[0])
    request = httpx.Request("POST", URL, json={"a": 1}, extensions={samekey.OPERATION_EXTENSION: "transfer-1"})
    plan = engine.plan(request)
    assert plan is not None
    journal.claim(plan.intent, "bank-worker-2/4242/abc-1", 3600, clock[0])  # another host, alive
    slept: list[float] = []

    def on_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    response = _drive(engine, request, [httpx.Response(201)], on_sleep)
    journal.close()
    assert response.status_code == 201
    assert 3599 < sum(slept) < 3602 and max(slept) <= 0.5


def test_an_interrupted_wait_counts_no_attempt_and_keeps_the_last_outcome(journal_path: Path) -> None:
    # samekey list must say what the server answered, not that a task was cancelled
    transport = httpx.MockTransport(lambda request: httpx.Response(503, headers={"Retry-After": "5"}))

    async def story() -> samekey.OperationRecord | None:
        async with samekey.AsyncClient(journal=journal_path, transport=transport) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.post("https://pay.test/charges", json={}, operation="op"), 0.5)
            return client.journal.get("op")

    record = asyncio.run(story())
    assert record is not None and (record.attempts, record.last_error, record.lease_owner) == (1, "HTTP 503", None)


def test_giving_up_says_how_many_attempts_were_made_in_this_run(journal_path: Path, no_sleep: None) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    policy = samekey.RetryPolicy(max_attempts=2)
    with samekey.Client(journal=journal_path, transport=transport, policy=policy) as client:
        for _ in range(2):
            with pytest.raises(samekey.RetriesExhausted) as caught:
                client.post("https://pay.test/charges", json={}, operation="op")
    assert "gave up after 4 attempt(s), 2 in this run (max_attempts reached" in str(caught.value)


def test_a_request_whose_timeouts_outlast_the_lease_is_not_taken_over_while_on_the_wire(journal_path: Path) -> None:
    # lease=1 but timeout=3: the answer may come after the lease ran out. A second caller then
    # must see the operation in progress, not take it over and send it a second time.
    on_the_wire, second_done = threading.Event(), threading.Event()
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        if len(sent) == 1:
            on_the_wire.set()
            second_done.wait(10)  # the first answer comes once the second caller is done
        return httpx.Response(201, json={"id": "ch_1"})

    transport = httpx.MockTransport(server)
    with (
        samekey.Client(journal=journal_path, transport=transport, lease=1, timeout=3) as first,
        samekey.Client(journal=journal_path, transport=transport, lease=1, on_busy="raise") as second,
    ):
        worker = threading.Thread(target=lambda: first.post(URL, json={"a": 1}, operation="slow-charge"))
        worker.start()
        assert on_the_wire.wait(10)
        time.sleep(1.3)  # past the client's 1 s lease, within what the timeouts allow the attempt
        try:
            with pytest.raises(samekey.OperationInProgress):
                second.post(URL, json={"a": 1}, operation="slow-charge")
        finally:
            second_done.set()
            worker.join(10)
    assert len(sent) == 1, "the operation was sent twice at once"

"""Every fault kind, one at a time, against the real loopback PaymentServer.

Through the FaultProxy (real sockets, real resets and timeouts) and through the
FaultTransport users put under their own client. Each test checks what the
server's SQLite file says: one charge, one key, and where the fault struck.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import samekey
from samekey.testing import (
    AsyncFaultTransport,
    Fault,
    FaultPlan,
    FaultProxy,
    FaultTransport,
    PaymentServer,
)

PAYLOAD = {"amount": 4200, "currency": "eur"}
FAST = samekey.RetryPolicy(initial_delay=0.001, max_delay=0.005, max_retry_after=0.005)


@pytest.fixture
def pay_server(tmp_path: Path) -> Iterator[PaymentServer]:
    with PaymentServer(tmp_path / "server.sqlite3") as srv:
        yield srv


@pytest.fixture
def journal_file(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


def reset_by_peer(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionResetError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def outcomes(server: PaymentServer) -> list[str]:
    return [r["outcome"] for r in server.requests()]


def assert_charged_once(server: PaymentServer, response: httpx.Response) -> None:
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 4200
    assert server.charge_count() == 1
    assert len(set(server.keys_seen())) == 1
    (charge,) = server.charges()
    assert charge["key"] == server.keys_seen()[0]


# -- the server itself ----------------------------------------------------------------


def test_server_reset_before_is_a_tcp_reset_not_a_clean_close(pay_server: PaymentServer) -> None:
    pay_server.faults = FaultPlan([Fault.reset()])
    with pytest.raises(httpx.ReadError) as caught:
        httpx.post(
            pay_server.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k1"}, timeout=5
        )
    assert reset_by_peer(caught.value)
    assert pay_server.charge_count() == 0 and outcomes(pay_server) == ["reset_before"]


def test_server_answers_409_while_the_first_request_is_still_working(
    tmp_path: Path, journal_file: Path
) -> None:
    # the client gives up on attempt 1 after 0.1 s; the server is still charging for 0.5 s
    policy = samekey.RetryPolicy(initial_delay=0.05, max_delay=0.1, max_attempts=30)
    with (
        PaymentServer(tmp_path / "server.sqlite3", work_seconds=0.5) as server,
        samekey.Client(
            journal=journal_file, base_url=server.url, policy=policy, timeout=0.1
        ) as client,
    ):
        response = client.post("/charges", json=PAYLOAD, operation="order-1/charge")
        assert_charged_once(server, response)
        seen = Counter(outcomes(server))
        assert seen["charged"] == 1 and seen["409"] >= 1 and seen["replay"] == 1
        assert set(seen) == {"charged", "409", "replay"}


def test_server_rejects_a_missing_key_and_a_reused_key_with_another_payload(
    pay_server: PaymentServer,
) -> None:
    with httpx.Client(base_url=pay_server.url, timeout=5) as client:
        assert client.post("/charges", json=PAYLOAD).status_code == 400
        assert (
            client.post("/charges", json=PAYLOAD, headers={"Idempotency-Key": "k"}).status_code
            == 201
        )
        assert (
            client.post(
                "/charges", json={"amount": 1}, headers={"Idempotency-Key": "k"}
            ).status_code
            == 422
        )
        again = client.post("/charges", json=PAYLOAD, headers={"Idempotency-Key": "k"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert pay_server.charge_count() == 1
    assert outcomes(pay_server) == ["400", "charged", "422", "replay"]
    assert pay_server.requests()[1]["body"] == '{"amount":4200,"currency":"eur"}'


def running_keys(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT key FROM idempotency WHERE state = 'running'")]
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def post_in_background(
    url: str, key: str, timeout: float = 5.0
) -> Callable[[], httpx.Response | Exception]:
    """POST PAYLOAD with ``key`` from a thread; the returned function waits for its outcome."""
    outcome: list[httpx.Response | Exception] = []

    def send() -> None:
        try:
            outcome.append(
                httpx.post(
                    url + "/charges",
                    json=PAYLOAD,
                    headers={"Idempotency-Key": key},
                    timeout=timeout,
                )
            )
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()

    def result() -> httpx.Response | Exception:
        thread.join(timeout=timeout + 5)
        return outcome[0]

    return result


def test_server_reads_a_chunked_request_body(pay_server: PaymentServer) -> None:
    # A body of unknown length (a generator, a stream) goes out with Transfer-Encoding: chunked
    # and no Content-Length: it must be charged with its payload, as one request, not as an
    # empty payload followed by a garbage "request" made of the chunks.
    def stream() -> Iterator[bytes]:
        yield b'{"amount":4200,'
        yield b'"currency":"eur"}'

    with httpx.Client(base_url=pay_server.url, timeout=5) as client:
        response = client.post("/charges", content=stream(), headers={"Idempotency-Key": "k"})
        assert response.status_code == 201, response.text
        assert response.json() == {"id": "ch_1", **PAYLOAD}
        again = client.post("/charges", json=PAYLOAD, headers={"Idempotency-Key": "k"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert pay_server.charges() == [{"id": 1, "key": "k", **PAYLOAD}]
    assert outcomes(pay_server) == ["charged", "replay"]


def test_a_server_never_started_stopped_twice_or_failing_to_bind_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    # A fixture that builds a server and tears it down before starting it, a test that stops it
    # inside its `with`, a port already taken: stop() does not raise, and no event loop, socket
    # or database is left open (ResourceWarnings that a suite run with -W error then blames on
    # whichever later test the garbage collector happens to run in).
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        PaymentServer(tmp_path / "never-started.sqlite3").stop()
        with PaymentServer(tmp_path / "outage.sqlite3") as server:
            server.stop()  # the payment API goes down mid-test; the `with` stops it again
        assert server.charge_count() == 0
        with socket.create_server(("127.0.0.1", 0)) as busy, pytest.raises(OSError):
            PaymentServer(tmp_path / "busy.sqlite3", port=busy.getsockname()[1])
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_key_left_running_by_a_killed_server_is_executed_again_and_charged_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "server.sqlite3"
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "samekey.testing", "--db", str(db), "--work-seconds", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environ,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        lost = post_in_background(
            url, "k1", timeout=2.0
        )  # the server charges for 30 s: this times out
        wait_until(lambda: running_keys(db) == ["k1"])
        with PaymentServer(db) as other:  # a second server on the same file, while the first lives
            alive = httpx.post(
                other.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k1"}, timeout=5
            )
            assert alive.status_code == 409  # its execution may still finish: in flight
    finally:
        proc.kill()  # kill -9 in the middle of the charge
        proc.wait(timeout=10)
    assert isinstance(lost(), httpx.HTTPError)
    assert running_keys(db) == ["k1"]  # what the dead server left behind
    with PaymentServer(db) as server:
        again = httpx.post(
            server.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k1"}, timeout=5
        )
        assert again.status_code == 201, again.text  # was 409, for every request, forever
        replay = httpx.post(
            server.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k1"}, timeout=5
        )
        assert replay.status_code == 201 and replay.json() == again.json()
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert server.charge_count() == 1 and running_keys(db) == []


def test_a_running_key_left_by_a_stopped_server_of_this_process_is_executed_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "server.sqlite3"
    server = PaymentServer(db, work_seconds=30).start()
    lost = post_in_background(server.url, "k2", timeout=2.0)
    wait_until(lambda: running_keys(db) == ["k2"])
    server.stop()  # cancels the request mid-charge
    assert isinstance(lost(), httpx.HTTPError)
    with PaymentServer(db) as restarted:
        again = httpx.post(
            restarted.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k2"}, timeout=5
        )
        assert again.status_code == 201 and restarted.charge_count() == 1


def test_an_execution_taken_for_dead_that_finishes_after_all_charges_nothing(
    tmp_path: Path,
) -> None:
    # the charge commits only while its execution still owns the key: a wrong "dead" verdict
    # (a recycled pid, a row from an older server) costs a 409, never a second charge
    db = tmp_path / "server.sqlite3"
    with PaymentServer(db, work_seconds=0.5) as server:
        first = post_in_background(server.url, "k3")
        wait_until(lambda: running_keys(db) == ["k3"])
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(
            "UPDATE idempotency SET owner = NULL WHERE key = 'k3'"
        )  # as an older server wrote it
        conn.close()
        second = post_in_background(server.url, "k3")  # takes the key over and executes it
        answers = [first(), second()]
        assert [a.status_code for a in answers if isinstance(a, httpx.Response)] == [409, 201]
        assert server.charge_count() == 1
        assert Counter(outcomes(server)) == {"409": 1, "charged": 1}


# -- through the proxy: one fault kind per test -----------------------------------------

# (the fault, whether the faulted request reached the server)
PROXY_FAULTS = {
    "response lost after the server charged": (Fault.lost_response(), True),
    "connection reset before forwarding": (Fault.reset(), False),
    "503 from the proxy": (Fault.http(503), False),
    "429 with Retry-After": (Fault.rate_limited("1"), False),
    "response held past the client's timeout": (Fault.slow_answer(0.6), True),
}


@pytest.mark.parametrize("name", list(PROXY_FAULTS))
def test_proxy_fault_ends_in_exactly_one_charge(
    name: str, pay_server: PaymentServer, journal_file: Path
) -> None:
    fault, reached_server = PROXY_FAULTS[name]
    with (
        FaultProxy(pay_server.url, [fault]) as proxy,
        samekey.Client(
            journal=journal_file, base_url=proxy.url, policy=FAST, timeout=0.25
        ) as client,
    ):
        started = time.monotonic()
        response = client.post("/charges", json=PAYLOAD, operation="order-42/charge")
        elapsed = time.monotonic() - started
    assert_charged_once(pay_server, response)
    assert proxy.counts[fault.label] == 1 and proxy.faults_injected == 1
    assert proxy.counts["requests"] == 2
    # where the fault struck: after the charge (the retry is answered by replay) or before
    assert outcomes(pay_server) == (["charged", "replay"] if reached_server else ["charged"])
    info = samekey.operation_info(response)
    assert info is not None and info.attempts == 2 and info.key == pay_server.keys_seen()[0]
    if fault.kind == "status" and fault.retry_after:
        assert elapsed < 0.5  # Retry-After "1" was capped by the policy's max_retry_after


def test_proxy_reset_reaches_the_client_as_a_connection_reset(pay_server: PaymentServer) -> None:
    with FaultProxy(pay_server.url, [Fault.reset()]) as proxy:
        with pytest.raises(httpx.ReadError) as caught:
            httpx.post(
                proxy.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k"}, timeout=5
            )
    assert reset_by_peer(caught.value)
    assert proxy.counts["forwarded"] == 0 and pay_server.charge_count() == 0


def test_a_reset_met_by_the_async_client_is_journaled_with_its_cause(
    pay_server: PaymentServer, journal_file: Path
) -> None:
    # httpx's async transport raises a reset as ReadError(''): the journal said only "ReadError"
    async def main() -> samekey.RetriesExhausted:
        once = samekey.RetryPolicy(max_attempts=1)
        async with samekey.AsyncClient(
            journal=journal_file, base_url=proxy.url, policy=once
        ) as client:
            with pytest.raises(samekey.RetriesExhausted) as caught:
                await client.post("/charges", json=PAYLOAD, operation="reset")
        return caught.value

    with FaultProxy(pay_server.url, [Fault.reset()]) as proxy:
        error = asyncio.run(main())
    assert isinstance(error.last_exception, httpx.ReadError) and reset_by_peer(error.last_exception)
    with samekey.Journal(journal_file) as journal:
        record = journal.get("reset")
    assert record is not None and record.state == "pending"
    assert record.last_error is not None and record.last_error.startswith(
        "ReadError (ConnectionResetError: "
    )
    assert f"last error {record.last_error})" in str(error)


def test_proxy_lost_response_makes_a_naive_retry_pay_twice(pay_server: PaymentServer) -> None:
    # the control experiment: the fault is real, so a new key per attempt double-charges
    with (
        FaultProxy(pay_server.url, [Fault.lost_response()]) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        for attempt in range(2):
            try:
                client.post(
                    "/charges", json=PAYLOAD, headers={"Idempotency-Key": f"naive-{attempt}"}
                )
                break
            except httpx.RemoteProtocolError:
                continue
    assert pay_server.charge_count() == 2


def test_all_proxy_faults_in_a_row_on_one_operation(
    pay_server: PaymentServer, journal_file: Path
) -> None:
    schedule = [fault for fault, _ in PROXY_FAULTS.values()]
    with (
        FaultProxy(pay_server.url, schedule) as proxy,
        samekey.Client(
            journal=journal_file, base_url=proxy.url, policy=FAST, timeout=0.25
        ) as client,
    ):
        response = client.post("/charges", json=PAYLOAD, operation="order-7/charge")
    assert_charged_once(pay_server, response)
    assert proxy.faults_injected == 5 and proxy.counts["requests"] == 6


def test_proxy_seeded_faults_are_reproducible_and_keep_keep_alive(
    pay_server: PaymentServer,
) -> None:
    def labels(seed: int) -> list[str | None]:
        plan = FaultPlan(rate=0.5, seed=seed, kinds=[Fault.http(503), Fault.rate_limited()])
        with (
            FaultProxy(pay_server.url, plan) as proxy,
            httpx.Client(base_url=proxy.url, timeout=5) as client,
        ):
            codes = [client.get("/charges").status_code for _ in range(20)]
        assert proxy.counts["connections"] == 1  # status faults keep the connection open
        return [{200: None, 503: "status_503", 429: "status_429"}[c] for c in codes]

    first = labels(11)
    assert first == labels(11)
    assert first != labels(12)
    assert 3 <= sum(x is not None for x in first) <= 17


def test_proxy_stop_closes_a_held_connection_promptly(pay_server: PaymentServer) -> None:
    proxy = FaultProxy(pay_server.url, [Fault.slow_answer(60)]).start()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(b"GET /charges HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2
    sock.close()


# -- FaultTransport: under the user's own client -----------------------------------------


def _client(
    journal_file: Path, server: PaymentServer, faults: list[Fault | None]
) -> samekey.Client:
    transport = FaultTransport(httpx.HTTPTransport(), faults)
    return samekey.Client(
        journal=journal_file, base_url=server.url, transport=transport, timeout=0.5
    )


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.lost_response(), ["charged", "replay"]),
        (Fault.reset(), ["charged"]),
        (Fault.http(503), ["charged"]),
        (Fault.rate_limited("30"), ["charged"]),
        (Fault.slow_answer(5.0), ["charged", "replay"]),  # past the 0.5 s timeout: a ReadTimeout
    ],
    ids=lambda x: x.label if isinstance(x, Fault) else None,
)
def test_fault_transport_each_kind_ends_in_exactly_one_charge(
    fault: Fault, expected: list[str], pay_server: PaymentServer, journal_file: Path
) -> None:
    started = time.monotonic()
    with samekey.set_testing(True), _client(journal_file, pay_server, [fault]) as client:
        response = client.post("/charges", json=PAYLOAD, operation="order-42/charge")
        transport = client._transport.inner  # type: ignore[attr-defined]
    assert (
        time.monotonic() - started < 2
    )  # no real waiting: not for Retry-After 30, not for the 5 s delay
    assert_charged_once(pay_server, response)
    assert outcomes(pay_server) == expected
    assert isinstance(transport, FaultTransport)
    assert transport.counts[fault.label] == 1 and transport.counts["requests"] == 2
    assert transport.counts["passed"] == len(expected)


def test_fault_transport_raises_the_errors_a_real_network_raises(pay_server: PaymentServer) -> None:
    faults = [Fault.lost_response(), Fault.reset(), Fault.slow_answer(1.0), Fault.rate_limited("7")]
    headers = {"Idempotency-Key": "k"}
    with httpx.Client(
        transport=FaultTransport(faults=faults), base_url=pay_server.url, timeout=0.2
    ) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="answer was lost"):
            client.post("/charges", json=PAYLOAD, headers=headers)
        with pytest.raises(httpx.ConnectError):
            client.post("/charges", json=PAYLOAD, headers=headers)
        with pytest.raises(httpx.ReadTimeout, match=r"past the 0\.2 s read timeout"):
            client.post("/charges", json=PAYLOAD, headers=headers)
        limited = client.post("/charges", json=PAYLOAD, headers=headers)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        assert client.post("/charges", json=PAYLOAD, headers=headers).status_code == 201
    assert outcomes(pay_server) == ["charged", "replay", "replay"]


def test_fault_transport_slow_answer_within_the_timeout_is_just_slow(
    pay_server: PaymentServer,
) -> None:
    transport = FaultTransport(faults=[Fault.slow_answer(0.2)])
    with httpx.Client(transport=transport, base_url=pay_server.url, timeout=5) as client:
        started = time.monotonic()
        response = client.post("/charges", json=PAYLOAD, headers={"Idempotency-Key": "k"})
    assert response.status_code == 201 and time.monotonic() - started >= 0.2


def test_fault_transport_under_samekey_transport_and_only_filter(
    pay_server: PaymentServer, journal_file: Path
) -> None:
    faulty = FaultTransport(
        httpx.HTTPTransport(), [Fault.lost_response()] * 3, only=lambda r: r.method == "POST"
    )
    with (
        samekey.set_testing(True),
        httpx.Client(
            transport=samekey.SameKeyTransport(faulty, journal=journal_file),
            base_url=pay_server.url,
        ) as client,
    ):
        assert client.get("/charges").status_code == 200  # not a POST: no fault used up
        response = client.post("/charges", json=PAYLOAD, extensions={"samekey.operation": "o"})
    assert_charged_once(pay_server, response)
    assert outcomes(pay_server) == ["charged", "replay", "replay", "replay"]
    assert faulty.counts["drop_after"] == 3 and faulty.counts["requests"] == 5


def test_fault_transport_by_seeded_chance(pay_server: PaymentServer, journal_file: Path) -> None:
    plan = FaultPlan(
        rate=0.3, seed=5, kinds=[Fault.lost_response(), Fault.reset(), Fault.http(503)]
    )
    with samekey.set_testing(True), _client(journal_file, pay_server, []) as client:
        client._transport.inner = FaultTransport(httpx.HTTPTransport(), plan)  # type: ignore[attr-defined]
        for i in range(30):
            assert (
                client.post("/charges", json={"order": i}, operation=f"order-{i}").status_code
                == 201
            )
    charges = pay_server.charges()
    assert sorted(c["order"] for c in charges) == list(range(30))
    assert len({c["key"] for c in charges}) == 30
    assert plan.total_injected >= 5  # the faults did happen
    assert plan.total_injected == sum(plan.injected.values())


def test_async_fault_transport_lost_response_charges_once(
    pay_server: PaymentServer, journal_file: Path
) -> None:
    async def main() -> tuple[httpx.Response, AsyncFaultTransport]:
        transport = AsyncFaultTransport(
            httpx.AsyncHTTPTransport(), [Fault.lost_response(), Fault.reset()]
        )
        async with samekey.AsyncClient(
            journal=journal_file, base_url=pay_server.url, transport=transport
        ) as client:
            return await client.post("/charges", json=PAYLOAD, operation="async-order"), transport

    with samekey.set_testing(True):
        response, transport = asyncio.run(main())
    assert_charged_once(pay_server, response)
    assert outcomes(pay_server) == ["charged", "replay"]
    assert transport.counts == {"requests": 3, "passed": 2, "drop_after": 1, "reset_before": 1}


def test_fault_and_plan_reject_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="drop_after, reset_before, status, slow"):
        Fault("explode")
    with pytest.raises(ValueError, match="delay=SECONDS"):
        Fault("slow")
    with pytest.raises(ValueError, match="probability"):
        FaultPlan(rate=1.5)
    bounded = FaultPlan(rate=1.0, max_faults=2)
    assert [bounded.next() is not None for _ in range(4)] == [True, True, False, False]


def test_server_figures_stay_readable_after_stop(tmp_path: Path) -> None:
    with PaymentServer(tmp_path / "server.sqlite3") as server:
        httpx.post(
            server.url + "/charges", json=PAYLOAD, headers={"Idempotency-Key": "k"}, timeout=5
        )
    assert server.charge_count() == 1 and server.keys_seen() == ["k"]  # read from the file
    with PaymentServer() as memory_only:
        pass
    with pytest.raises(RuntimeError, match="give it a db_path"):
        memory_only.charge_count()

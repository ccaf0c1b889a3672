"""RetryPolicy: validation, backoff bounds, jitter, Retry-After, deadline, classification (the
statuses retried, the server's verdict header), and the retry budget.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import respx
import tenacity

import samekey
from client_helpers import make_client, sent_keys
from samekey._policy import parse_retry_after
from samekey.testing import Fault, FaultPlan, PaymentServer

URL = "https://api.example.test/v1/charges"


def _state_after(
    policy: samekey.RetryPolicy, attempt: int, response: httpx.Response | None = None
) -> float:
    retrying = policy.retrying()
    state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if response is not None:
        state.set_result(response)
    else:
        exc = httpx.ConnectError("down")
        state.set_exception((type(exc), exc, None))
    return float(retrying.wait(state))


def test_defaults_are_documented_values() -> None:
    policy = samekey.RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay, policy.multiplier) == (
        8,
        0.5,
        30.0,
        2.0,
    )
    assert policy.deadline == 120.0 and policy.max_retry_after == 60.0
    assert policy.retry_statuses == {408, 409, 425, 429} | set(range(500, 600)) - {501, 505}


def test_durations_take_timedelta() -> None:
    policy = samekey.RetryPolicy(
        initial_delay=timedelta(milliseconds=250), deadline=timedelta(minutes=2)
    )
    assert policy.initial_delay == 0.25 and policy.deadline == 120.0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_attempts": 0}, "max_attempts must be a whole number >= 1"),
        ({"initial_delay": -1}, "initial_delay must be a non-negative duration"),
        ({"deadline": 0}, "deadline must be a positive duration"),
        ({"initial_delay": 5, "max_delay": 1}, "must not be below initial_delay"),
        ({"multiplier": 0.5}, "multiplier must be a number >= 1"),
        ({"retry_statuses": {200}}, "must not contain 2xx"),
        ({"retry_statuses": {999}}, "HTTP status codes 100-599"),
        # NaN passes "multiplier < 1" and made every wait 0: retries with no delay at all
        ({"multiplier": float("nan")}, "multiplier must be a number >= 1"),
        ({"retry_statuses": {"503", 999}}, r"HTTP status codes 100-599, got \['503', 999\]"),
    ],
)
def test_bad_values_are_refused_with_the_fix(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        samekey.RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"retry_statuses": 503},
            r"retry_statuses must be a collection of status codes, e.g. \{503\}, got 503",
        ),
        (
            {"retry_exceptions": httpx.TransportError},
            r"retry_exceptions must be a tuple of exception classes, e.g. \(TransportError,\)",
        ),
        # None turns verdict_header and budget off, so it is tried here too: it raised "'NoneType'
        # object is not iterable", naming neither the keyword nor the way to retry no status / no
        # exception
        (
            {"retry_statuses": None},
            r"retry_statuses must be a collection of status codes.*set\(\) to retry none",
        ),
        (
            {"retry_exceptions": None},
            r"retry_exceptions must be a tuple of exception classes.*\(\) to retry none",
        ),
    ],
)
def test_a_single_status_or_exception_class_names_the_fix(
    kwargs: dict[str, object], words: str
) -> None:
    # isinstance() takes a bare class, so this is an
    # easy slip: it raised "'type' object is not iterable"
    with pytest.raises(TypeError, match=words):
        samekey.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_initial_delay_as_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"seconds .* or a timedelta"):
        samekey.RetryPolicy(initial_delay="1s")  # type: ignore[arg-type]


def test_backoff_is_full_jitter_within_the_exponential_ceiling() -> None:
    policy = samekey.RetryPolicy(initial_delay=0.5, max_delay=4.0, multiplier=2.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        assert policy.backoff_ceiling(attempt) == ceiling
        waits = [_state_after(policy, attempt) for _ in range(300)]
        assert all(0.0 <= w <= ceiling for w in waits)
        # full jitter spreads over the whole range, not a narrow band near the ceiling
        assert min(waits) < ceiling * 0.2 and max(waits) > ceiling * 0.8


def test_retry_after_seconds_is_honoured_and_capped() -> None:
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01, max_retry_after=5)
    assert _state_after(policy, 1, httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    assert _state_after(policy, 1, httpx.Response(503, headers={"Retry-After": "3600"})) == 5.0


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after(when)
    assert seconds is not None and 28 <= seconds <= 30
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None
    # a date without a zone is read as UTC
    naive = time.strftime("%a, %d %b %Y %H:%M:%S", time.gmtime(time.time() + 10))
    seconds = parse_retry_after(naive)
    assert seconds is not None and 8 <= seconds <= 10


def test_classification_and_server_verdict() -> None:
    policy = samekey.RetryPolicy()
    retried = [408, 409, 425, 429, 500, 502, 503, 504, 507, 520, 522, 524, 599]
    definitive = [200, 201, 301, 400, 401, 402, 404, 422, 501, 505]
    assert all(policy.should_retry_response(httpx.Response(s)) for s in retried)
    assert not any(policy.should_retry_response(httpx.Response(s)) for s in definitive)
    assert not policy.should_retry_response(
        httpx.Response(500, headers={"Stripe-Should-Retry": "false"})
    )
    assert policy.should_retry_response(
        httpx.Response(400, headers={"Stripe-Should-Retry": "true"})
    )
    assert policy.should_retry_exception(httpx.ConnectError("x"))
    assert policy.should_retry_exception(httpx.ReadTimeout("x"))
    assert policy.should_retry_exception(httpx.RemoteProtocolError("x"))
    assert not policy.should_retry_exception(httpx.UnsupportedProtocol("x"))
    custom = samekey.RetryPolicy(retry_statuses={503}, verdict_header="X-Should-Retry")
    assert not custom.should_retry_response(httpx.Response(500))
    assert custom.should_retry_response(httpx.Response(418, headers={"X-Should-Retry": "true"}))


def test_set_testing_turns_waits_off_and_is_a_context_manager() -> None:
    policy = samekey.RetryPolicy(initial_delay=10, max_delay=10)
    with samekey.set_testing(True, attempts=2):
        assert _state_after(policy, 3) == 0.0
        assert policy.attempts_allowed() == 2
    assert policy.attempts_allowed() == 8
    assert max(_state_after(policy, 3) for _ in range(20)) > 0.0  # real waits are back
    samekey.set_testing(True)
    assert _state_after(policy, 3) == 0.0
    samekey.set_testing(False)
    assert policy.attempts_allowed() == 8


@respx.mock
def test_garbage_retry_after_is_ignored_not_a_crash(journal_path: Path) -> None:
    # "\xb2" decodes (latin-1) to "²": str.isdigit() says yes, float() says no. A 503 whose
    # Retry-After is garbage must be retried on the backoff, not crash the payment with ValueError.
    assert (
        parse_retry_after("²") is None
        and parse_retry_after("1.5") is None
        and parse_retry_after("-5") is None
    )
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(503, headers=[(b"Retry-After", b"\xb2")]), httpx.Response(201)]
    )
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01, budget=None)
    with samekey.Client(journal=journal_path, policy=policy) as client:
        assert client.post(URL, json={"amount": 1}, operation="garbage-ra").status_code == 201
    assert route.call_count == 2


def test_several_retry_after_headers_wait_the_longest() -> None:
    # a proxy and the app both adding one: httpx joins them ("3, 5"), which is neither form
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01, max_retry_after=60)
    twice = httpx.Response(429, headers=[("Retry-After", "3"), ("Retry-After", "5")])
    assert _state_after(policy, 1, twice) == 5.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    dates = httpx.Response(503, headers=[("Retry-After", when), ("Retry-After", "bad")])
    assert 28 <= _state_after(policy, 1, dates) <= 30


@contextlib.contextmanager
def _answering(answer: Callable[[bytes], bytes]) -> Iterator[int]:
    """A 127.0.0.1 port that reads what a client sends first and writes ``answer(it)`` back."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.sendall(
                    answer(conn.recv(4096))
                )  # a request head or a ClientHello: one read on loopback

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _plain_http_port() -> Iterator[int]:
    """A 127.0.0.1 port that answers anything (a TLS ClientHello too) with a plain HTTP 400."""
    with _answering(
        lambda _: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ) as port:
        yield port


plain_http_port = pytest.fixture(_plain_http_port)


def test_tls_failures_that_retrying_cannot_fix_are_not_retried(
    plain_http_port: int, journal_path: Path
) -> None:
    # https:// to a plain-HTTP port (a real handshake on 127.0.0.1): SSL WRONG_VERSION_NUMBER,
    # raised by httpx as a ConnectError. Nothing was sent; retrying for two minutes cannot help.
    tls_url = f"https://127.0.0.1:{plain_http_port}/v1/charges"
    policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.01, budget=None)
    with samekey.Client(journal=journal_path, policy=policy, timeout=10) as client:
        with pytest.raises(httpx.ConnectError, match="SSL"):
            client.post(tls_url, json={"amount": 1}, operation="tls-misconfigured")
        record = client.journal.get("tls-misconfigured")
    assert record is not None and record.attempts == 1 and record.state == "pending"
    # a certificate that does not verify: httpx
    # raises ConnectError from ssl.SSLCertVerificationError
    try:
        raise ssl.SSLCertVerificationError(
            1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
        )
    except ssl.SSLError as cause:
        try:
            raise httpx.ConnectError(str(cause)) from cause
        except httpx.ConnectError as exc:
            unverified = exc
    assert not policy.should_retry_exception(unverified)


@contextlib.contextmanager
def _proxy_answering(status_line: str) -> Iterator[tuple[int, list[str]]]:
    """A 127.0.0.1 HTTP proxy that answers every CONNECT
    with ``status_line``; yields (port, request lines)."""
    seen: list[str] = []

    def answer(head: bytes) -> bytes:
        seen.append(head.split(b"\r\n", 1)[0].decode("ascii"))
        return f"HTTP/1.1 {status_line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()

    with _answering(answer) as port:
        yield port, seen


@pytest.mark.parametrize(
    ("answer", "retried"),
    [("503 Service Unavailable", True), ("502 Bad Gateway", True),
    ("407 Proxy Authentication Required", False),
     ("403 Forbidden", False)],
)  # fmt: skip
def test_a_proxy_that_cannot_reach_the_server_is_retried_one_that_refuses_is_not(
    journal_path: Path, answer: str, retried: bool
) -> None:
    # a corporate proxy's 502/503 to CONNECT passes (nothing reached the server: safe with any
    # key); its 407 (credentials) or 403 (policy) does not, and two minutes of retries cannot fix it
    policy = samekey.RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.01, budget=None)
    with _proxy_answering(answer) as (port, seen):
        with samekey.Client(
            journal=journal_path, policy=policy, proxy=f"http://127.0.0.1:{port}", timeout=10
        ) as c:
            if retried:
                with pytest.raises(
                    samekey.RetriesExhausted, match=f"gave up after 3 attempt.*ProxyError: {answer}"
                ):
                    c.post(
                        "https://pay.example/v1/charges", json={"amount": 1}, operation="via-proxy"
                    )
            else:
                with pytest.raises(httpx.ProxyError, match=answer):
                    c.post(
                        "https://pay.example/v1/charges", json={"amount": 1}, operation="via-proxy"
                    )
            record = c.journal.get("via-proxy")
    assert seen == ["CONNECT pay.example:443 HTTP/1.1"] * (3 if retried else 1)
    assert (
        record is not None
        and record.state == "pending"
        and record.attempts == (3 if retried else 1)
    )


@pytest.mark.parametrize(
    "cause", [ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), ConnectionResetError()]
)
def test_a_handshake_cut_short_is_still_retried(cause: Exception) -> None:
    # the connection dropped during the handshake (a restarting load balancer): transient
    try:
        raise httpx.ConnectError(str(cause)) from cause
    except httpx.ConnectError as exc:
        assert samekey.RetryPolicy().should_retry_exception(exc)


@respx.mock
def test_giving_up_on_a_long_retry_after_says_the_server_asked_for_it(journal_path: Path) -> None:
    # "the next wait would pass the 120 s deadline" after 1 attempt and a few ms read as a
    # deadline that ran out; the user must learn that the server asked to wait an hour
    route = respx.post(URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "3600"}))
    with samekey.Client(
        journal=journal_path, policy=samekey.RetryPolicy(max_retry_after=7200)
    ) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.post(URL, json={"amount": 1}, operation="rate-limited")
    assert route.call_count == 1
    assert "the server asked to wait 3600 s (Retry-After), past the 120 s deadline" in str(
        caught.value
    )
    # capped at 60 s, still past a 30 s deadline: it stops at once, and says both numbers
    with samekey.Client(journal=journal_path, policy=samekey.RetryPolicy(deadline=30)) as client:
        with pytest.raises(samekey.RetriesExhausted) as caught:
            client.post(URL, json={"amount": 1}, operation="rate-limited-2")
    assert (
        "asked to wait 3600 s (Retry-After, capped at max_retry_after=60 s), past the 30 s"
        in str(caught.value)
    )


@respx.mock
def test_a_free_retry_is_not_a_refused_one(journal_path: Path, no_sleep: None) -> None:
    # RetryBudget(retry_cost=0) (non-timeout retries free) returned 0.0 for "took nothing",
    # which the flow read as "refused": no retry ever, "the client's retry budget is empty"
    route = respx.post(URL).mock(side_effect=[httpx.Response(503), httpx.Response(201)])
    budget = samekey.RetryBudget(retry_cost=0)
    with samekey.Client(journal=journal_path, policy=samekey.RetryPolicy(budget=budget)) as client:
        assert client.post(URL, json={"amount": 1}, operation="free-retry").status_code == 201
    assert route.call_count == 2 and budget.tokens == budget.capacity


@respx.mock
@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_a_definitive_4xx_after_retries_does_not_refill_the_budget(
    journal_path: Path, no_sleep: None, status: int
) -> None:
    # any definitive answer refunded the retries' tokens: a server answering 4xx to everything
    # kept the bucket full, and the budget never throttled
    answers = [httpx.Response(503), httpx.Response(503), httpx.Response(status)]
    route = respx.post(URL).mock(side_effect=answers)
    budget = samekey.RetryBudget(capacity=50, retry_cost=5, success_refund=1)
    policy = samekey.RetryPolicy(retry_statuses={503}, budget=budget)
    with samekey.Client(journal=journal_path, policy=policy) as client:
        assert (
            client.post(URL, json={"amount": 1}, operation=f"refused-{status}").status_code
            == status
        )
        assert route.call_count == 3 and budget.tokens == 40
        # nor does a 4xx at the first attempt earn the success refund
        respx.post(URL).mock(return_value=httpx.Response(status))
        assert (
            client.post(URL, json={"amount": 2}, operation=f"refused-at-once-{status}").status_code
            == status
        )
    assert budget.tokens == 40


@respx.mock
def test_a_success_after_retries_refunds_what_they_took(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(200)]
    )
    budget = samekey.RetryBudget(capacity=50, retry_cost=5, success_refund=1)
    with samekey.Client(journal=journal_path, policy=samekey.RetryPolicy(budget=budget)) as client:
        respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(404)])
        assert client.get(URL).status_code == 404  # unkeyed: the same rule
        assert budget.tokens == 45
        assert client.post(URL, json={"amount": 1}, operation="recovered").status_code == 200
        assert (
            route.call_count == 3 and budget.tokens == 45
        )  # its own 10 back; the 404's 5 stay spent
        respx.post(URL).mock(return_value=httpx.Response(201))
        assert client.post(URL, json={"amount": 2}, operation="at-once").status_code == 201
    assert budget.tokens == 46  # a first-attempt success refunds success_refund


def test_tests_sharing_a_policy_do_not_drain_its_default_budget_for_each_other(
    journal_path: Path,
) -> None:
    # an app's module-level POLICY = RetryPolicy(), used by every test of the user's suite under
    # set_testing: 7 retries of each failure-path test took 35 of its 500 tokens, so from the 15th
    # such test on, retries stopped ("retry budget is empty") depending on which tests ran first
    policy = samekey.RetryPolicy()
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    with (
        samekey.set_testing(True),
        samekey.Client(journal=journal_path, policy=policy, transport=transport) as client,
    ):
        for test in range(20):
            with pytest.raises(
                samekey.RetriesExhausted, match=r"gave up after 8 attempt.*max_attempts reached"
            ):
                client.post(URL, json={"test": test}, operation=f"test-{test}")
    assert policy.budget is not None and policy.budget.tokens == policy.budget.capacity
    # a RetryBudget passed in is the user's to test, so it stays on under set_testing (tests above)
    own = samekey.RetryBudget(capacity=10)
    assert samekey.RetryPolicy(budget=own).active_budget() is own
    with samekey.set_testing(True):
        assert samekey.RetryPolicy(budget=own).active_budget() is own
        assert policy.active_budget() is None
    assert policy.active_budget() is policy.budget  # and back on after


@pytest.mark.parametrize("name", ["capacity", "retry_cost", "timeout_cost", "success_refund"])
def test_budget_refuses_nan(name: str) -> None:
    # NaN passed "value < 0": a NaN capacity never throttles, a NaN cost never refuses
    with pytest.raises(ValueError, match=f"RetryBudget {name} must be a non-negative number"):
        samekey.RetryBudget(**{name: float("nan")})  # type: ignore[arg-type]


def test_set_testing_scopes_that_end_out_of_order_each_undo_their_own() -> None:
    # Two threads (or tasks) each in their own `with set_testing(True, attempts=N)`: the one that
    # ends first must remove its own cap, not the other's, which is still in effect.
    policy = samekey.RetryPolicy(max_attempts=8)
    first, second = samekey.set_testing(True, attempts=2), samekey.set_testing(True, attempts=5)
    try:
        assert policy.attempts_allowed() == 5
        first.__exit__(None, None, None)
        assert policy.attempts_allowed() == 5  # the second scope is still open
        first.__exit__(None, None, None)  # exiting twice changes nothing more
        assert policy.attempts_allowed() == 5
    finally:
        second.__exit__(None, None, None)
    assert policy.attempts_allowed() == 8


def test_set_testing_false_as_a_context_manager_is_undone_on_exit() -> None:
    # conftest turns testing on for the whole suite; one test checks real waits in a
    # `with set_testing(False):` block. After it, the suite must be back in testing mode.
    policy = samekey.RetryPolicy(initial_delay=10, max_delay=10, max_attempts=8)
    outer = samekey.set_testing(True, attempts=3)
    try:
        with samekey.set_testing(False):
            assert policy.attempts_allowed() == 8
            assert max(_state_after(policy, 3) for _ in range(20)) > 0.0  # real waits
        assert policy.attempts_allowed() == 3  # testing mode is back, with its cap
        assert _state_after(policy, 3) == 0.0
    finally:
        outer.__exit__(None, None, None)
    assert policy.attempts_allowed() == 8


@respx.mock
@pytest.mark.parametrize("status", [520, 522, 524, 507])
def test_a_gateway_5xx_is_retried_with_the_key_and_never_recorded_as_the_answer(
    journal_path: Path, no_sleep: None, status: int
) -> None:
    # Cloudflare's 520-524: the origin was unreachable or too slow, the charge may be running.
    # Recorded as completed, that error would be replayed to every re-run; it is retried instead
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(status), httpx.Response(201, json={"id": "ch_1"})]
    )
    with make_client(journal_path) as client:
        assert client.post(URL, json={}, operation="op").status_code == 201
    keys = sent_keys(route)
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]


@respx.mock
@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_with_the_same_key(
    journal_path: Path, no_sleep: None, status: int
) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(status), httpx.Response(201)])
    with make_client(journal_path) as client:
        assert client.post(URL, json={}, operation="op").status_code == 201
    assert route.call_count == 2 and len(set(sent_keys(route))) == 1


@respx.mock
def test_server_verdict_header_overrides_status(journal_path: Path, no_sleep: None) -> None:
    route = respx.post(URL).mock(
        return_value=httpx.Response(500, headers={"Stripe-Should-Retry": "false"})
    )
    with make_client(journal_path) as client:
        assert client.post(URL, json={}, operation="a").status_code == 500
    assert route.call_count == 1
    route.reset()
    route.mock(
        side_effect=[
            httpx.Response(400, headers={"Stripe-Should-Retry": "true"}),
            httpx.Response(201),
        ]
    )
    with make_client(journal_path) as client:
        assert client.post(URL, json={}, operation="b").status_code == 201
    assert route.call_count == 2
    route.reset()
    # a success is definitive whatever the header says: the server acted, a retry could only replay
    route.mock(return_value=httpx.Response(201, headers={"Stripe-Should-Retry": "true"}))
    with make_client(journal_path) as client:
        assert client.post(URL, json={}, operation="c").status_code == 201
        assert client.journal.get("c").state == "completed"  # type: ignore[union-attr]
    assert route.call_count == 1


def test_retry_budget_bounds_retries_while_the_server_is_down_and_recovers(
    journal_path: Path, tmp_path: Path
) -> None:
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
                assert (
                    client.post("/charges", json={"amount": i}, operation=f"down-{i}").status_code
                    == 201
                )
            assert budget.tokens >= 20
            server.faults = FaultPlan([Fault("status", 503)])
            response = client.post("/charges", json={"amount": 1000}, operation="after-recovery")
            assert response.status_code == 201  # the retry was allowed again


def test_budget_can_be_turned_off() -> None:
    assert samekey.RetryPolicy(budget=None).budget is None
    assert isinstance(samekey.RetryPolicy().budget, samekey.RetryBudget)

"""samekey under the real payment SDKs: stripe-python, Square's squareup, Increase (httpx-based).

Each SDK is pointed at a loopback PaymentServer that speaks its API (form-encoded Stripe, JSON
Square with the key in the body, JSON Increase). For each: a lost answer is retried under one key
(one charge); a process SIGKILLed after the server charged, run again, sends the same key (one
charge); the key the server sees is samekey's journaled UUID v4, not the one the SDK made.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import stripe

import samekey
from samekey.integrations.stripe import StripeHTTPClient
from samekey.testing import INCREASE, SQUARE, STRIPE, Api, Fault, FaultPlan, PaymentServer
from sdk_worker import OPERATION, pay  # tests/, on sys.path under pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
APIS = {"stripe": STRIPE, "square": SQUARE, "increase": INCREASE}


def journaled_key(journal: Path) -> str:
    with samekey.Journal(journal) as j:
        record = j.get(OPERATION)
    assert record is not None and not record.pending
    return record.key


def body_keys(server: PaymentServer) -> list[str]:
    return [json.loads(r["body"])["idempotency_key"] for r in server.requests()]


@pytest.mark.parametrize("sdk", sorted(APIS))
def test_a_lost_answer_is_retried_under_the_journaled_key(sdk: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    with (
        PaymentServer(api=APIS[sdk], faults=FaultPlan([Fault("drop_after")])) as server,
        samekey.set_testing(True),
    ):
        payment, key = pay(sdk, server.url, str(journal))
        seen, charges = server.keys_seen(), server.charge_count()
        bodies = body_keys(server) if sdk == "square" else []
    assert charges == 1 and payment.endswith("_1")
    assert seen == [key, key] and key == journaled_key(journal) and UUID4.fullmatch(key)
    if sdk == "square":  # the key Square reads is the body's, from key_for
        assert bodies == [key, key]


@pytest.mark.parametrize("sdk", sorted(APIS))
def test_a_process_killed_after_the_server_charged_sends_the_same_key_when_run_again(
    sdk: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.sqlite3"
    # the server charges, then holds its answer: the process is killed while it waits
    with PaymentServer(api=APIS[sdk], faults=FaultPlan([Fault("slow", delay=30)])) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        worker = [sys.executable, str(HERE / "sdk_worker.py"), sdk, server.url, str(journal)]
        proc = subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while (
                server.charge_count() == 0 and proc.poll() is None and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            assert server.charge_count() == 1, proc.communicate(timeout=5)
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        with samekey.Journal(journal) as j:
            left = j.get(OPERATION)
        assert left is not None and left.pending  # the answer never reached the journal

        payment, key = pay(sdk, server.url, str(journal))  # the same code, run again
        charges = server.charges()
        rerun = (
            server.requests()
        )  # (the killed run's request is logged once its held answer is sent)
        bodies = body_keys(server) if sdk == "square" else []
    assert (
        len(charges) == 1 and payment.endswith("_1") and [r["outcome"] for r in rerun] == ["replay"]
    )
    assert charges[0]["key"] == rerun[0]["key"] == left.key == key and UUID4.fullmatch(key)
    if sdk == "square":  # the body's idempotency_key, from key_for, survived the kill
        assert bodies == [key]
    if sdk == "increase":
        assert not key.startswith("stainless-python-retry-")


# -- the Stripe HTTP client itself ---------------------------------------------------------


def stripe_client(http: StripeHTTPClient, server: PaymentServer) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_123", http_client=http, base_addresses={"api": server.url}, max_network_retries=0
    )


def test_stripe_async_calls_go_through_samekey_too(tmp_path: Path) -> None:
    async def main(client: stripe.StripeClient, http: StripeHTTPClient) -> tuple[str, str]:
        try:
            with samekey.operation("order-7/pi"):
                intent = await client.v1.payment_intents.create_async(
                    params={"amount": 700, "currency": "eur"}
                )
            return intent.id, await http.async_client.key_for("order-7/pi")
        finally:
            await http.close_async()

    with (
        PaymentServer(api=STRIPE, faults=FaultPlan([Fault("drop_after")])) as server,
        samekey.set_testing(True),
    ):
        http = StripeHTTPClient(journal=tmp_path / "journal.sqlite3")
        payment, key = asyncio.run(main(stripe_client(http, server), http))
        assert (payment, server.keys_seen(), server.charge_count()) == ("pi_1", [key, key], 1)


def test_stripe_sees_a_connection_error_that_says_the_key_is_pending(tmp_path: Path) -> None:
    always_503 = FaultPlan([Fault("status", status=503)] * 2)
    with PaymentServer(api=STRIPE, faults=always_503) as server, samekey.set_testing(True):
        http = StripeHTTPClient(
            journal=tmp_path / "journal.sqlite3", policy=samekey.RetryPolicy(max_attempts=2)
        )
        try:
            with (
                pytest.raises(stripe.APIConnectionError) as caught,
                samekey.operation("order-8/pi"),
            ):
                stripe_client(http, server).v1.payment_intents.create(
                    params={"amount": 800, "currency": "usd"}
                )
            key = http.key_for("order-8/pi")
        finally:
            http.close()
    error = caught.value
    assert isinstance(error.__cause__, samekey.RetriesExhausted) and not error.should_retry
    assert "still pending with key" in str(error) and key in str(error) and error.http_status == 503


def test_the_loopback_apis_read_their_keys_and_bodies() -> None:
    assert (
        SQUARE.key({}, b'{"idempotency_key": "k-1"}') == "k-1"
        and SQUARE.key({"idempotency-key": "h"}, b"{}") is None
    )
    assert STRIPE.payload(b"amount=1200&currency=usd") == {"amount": "1200", "currency": "usd"}
    with pytest.raises(ValueError):
        Api("x", answer=lambda n, p: p).payload(b"[1]")


def test_the_stripe_example_runs_and_creates_one_intent_per_order() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    demo = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "stripe_sdk.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    pending = re.search(r"Journal: order B pending, key (\S+)\.", out)
    assert pending is not None and "killed with SIGKILL (exit -9)" in out, out
    assert (
        f"order B: pi_2, key {pending[1]}, sent again with its journaled key: the server "
        "replayed it" in out
    )
    assert "answered from the journal, nothing sent" in out
    assert "PaymentIntents created on the server: 2; distinct keys: 2." in out


def test_stripe_streaming_calls_go_through_samekey(tmp_path: Path) -> None:
    async def stream_async(http: StripeHTTPClient, url: str) -> bytes:
        try:
            with samekey.operation("order-10/stream-async"):
                chunks, status, _ = await http.request_stream_async(
                    "post", url, {}, "amount=2&currency=eur"
                )
            assert status == 201
            return b"".join([chunk async for chunk in chunks])
        finally:
            await http.close_async()

    with PaymentServer(api=STRIPE) as server:
        http = StripeHTTPClient(journal=tmp_path / "journal.sqlite3")
        try:
            with samekey.operation("order-10/stream"):
                chunks, status, _ = http.request_stream(
                    "post", server.url + "/v1/payment_intents", {}, "amount=1"
                )
            assert status == 201 and json.loads(b"".join(chunks))["id"] == "pi_1"
            keys = [http.key_for("order-10/stream")]
        finally:
            http.close()
        http = StripeHTTPClient(journal=tmp_path / "journal.sqlite3")
        body = asyncio.run(stream_async(http, server.url + "/v1/payment_intents"))
        assert json.loads(body)["id"] == "pi_2"
        with samekey.Client(journal=tmp_path / "journal.sqlite3") as reader:
            keys.append(reader.key_for("order-10/stream-async"))
        assert server.keys_seen() == keys

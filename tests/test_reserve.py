"""key_for(operation): a durable key before the request is built (a key in the body or the path)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer


def test_key_for_is_durable_before_anything_is_sent_and_the_request_carries_it(
    journal_path: Path,
) -> None:
    with samekey.Client(journal=journal_path) as client:
        key = client.key_for("order-9/put")
        assert client.key_for("order-9/put") == key
    with samekey.Journal(
        journal_path
    ) as journal:  # another process would see it: committed, lease free
        record = journal.get("order-9/put")
        assert (
            record is not None
            and record.pending
            and record.key == key
            and record.lease_owner is None
        )
    with PaymentServer() as server, samekey.Client(journal=journal_path) as client:
        response = client.put(
            f"{server.url}/orders/{key}", json={"amount": 5}, operation="order-9/put"
        )
        assert (
            client.key_for("order-9/put") == key
        )  # completed: the same key, so a re-run builds the same request
        replay = client.put(
            f"{server.url}/orders/{key}", json={"amount": 5}, operation="order-9/put"
        )
        assert server.keys_seen() == [key] and server.charge_count() == 1
    assert response.status_code == 201 and samekey.operation_info(replay).replayed  # type: ignore[union-attr]


def test_a_key_for_operation_left_pending_is_resumed_with_its_request(journal_path: Path) -> None:
    with PaymentServer(faults=FaultPlan([Fault("status", status=503)])) as server:
        with samekey.Client(
            journal=journal_path, policy=samekey.RetryPolicy(max_attempts=1)
        ) as client:
            key = client.key_for("order-10/pay")
            with pytest.raises(samekey.RetriesExhausted):
                client.post(
                    server.url + "/charges", json={"idempotency_key": key}, operation="order-10/pay"
                )
            record = client.journal.get("order-10/pay")
            assert (
                record is not None
                and record.method == "POST"
                and key.encode() in record.request_body
            )
            resumed = client.resume("order-10/pay")
        assert (
            resumed.status_code == 201
            and server.keys_seen() == [key, key]
            and server.charge_count() == 1
        )


def test_resume_refuses_a_key_whose_request_was_never_sent(journal_path: Path) -> None:
    with samekey.Client(journal=journal_path) as client:
        key = client.key_for("order-11/pay")
        with pytest.raises(
            samekey.SameKeyError, match=r"no request was sent.*same key from\s+key_for"
        ):
            client.resume("order-11/pay")
        assert client.resume_pending() == []  # nothing to send: skipped, still pending
        assert client.key_for("order-11/pay") == key


def test_async_key_for_and_on_the_transports(journal_path: Path) -> None:
    async def main() -> tuple[str, str]:
        async with samekey.AsyncClient(journal=journal_path) as client:
            return await client.key_for("a"), await client.key_for("a")

    first, second = anyio.run(main)
    transport = samekey.SameKeyTransport(journal=journal_path)
    try:
        assert first == second == transport.key_for("a")
    finally:
        transport.close()


def test_key_for_refuses_a_bad_name_and_a_store_without_fill_reserved(journal_path: Path) -> None:
    class OldStore:  # a third-party store written before key_for
        location = "old"

        def __init__(self) -> None:
            self.inner = samekey.Journal(journal_path)

        def __getattr__(self, name: str) -> object:
            if name == "fill_reserved":
                raise AttributeError(name)
            return getattr(self.inner, name)

    with (
        samekey.Client(journal=journal_path) as client,
        pytest.raises(ValueError, match="operation's name"),
    ):
        client.key_for("")
    store = OldStore()
    with samekey.Client(journal=store) as client, pytest.raises(TypeError, match="fill_reserved"):  # type: ignore[arg-type]
        client.key_for("x")
    store.inner.close()


def test_the_request_fills_the_reserved_record_on_postgres_too(pg_dsn: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(201, json={"ok": True}))
    with samekey.Client(journal=pg_dsn, transport=transport) as client:
        key = client.key_for("order-12/pay")
        client.post(
            "https://pay.test/charges", json={"idempotency_key": key}, operation="order-12/pay"
        )
        record = client.journal.get("order-12/pay")
    assert (
        record is not None and not record.pending and record.key == key and record.method == "POST"
    )


def test_an_async_client_fills_the_reserved_record_through_its_journal_thread(
    journal_path: Path,
) -> None:
    async def main(url: str) -> tuple[str, int]:
        async with samekey.AsyncClient(journal=journal_path) as client:
            key = await client.key_for("order-13/pay")
            with samekey.operation("order-13/pay"):
                response = await client.post(url + "/charges", json={"idempotency_key": key})
            return key, response.status_code

    with PaymentServer() as server:
        key, status = anyio.run(main, server.url)
        assert status == 201 and server.keys_seen() == [key]
    with samekey.Journal(journal_path) as journal:
        record = journal.get("order-13/pay")
    assert record is not None and record.state == "completed" and record.method == "POST"
    assert key.encode() in record.request_body


def test_a_key_reserved_long_ago_but_never_sent_is_not_expired(
    journal_path: Path, server: PaymentServer
) -> None:
    with samekey.Client(journal=journal_path, key_ttl=60) as client:
        key = client.key_for("order-14/pay")
        with sqlite3.connect(
            journal_path
        ) as conn:  # reserved two hours ago: no server has seen the key yet
            conn.execute(
                "UPDATE operations SET created_at = created_at - 7200 WHERE operation = "
                "'order-14/pay'"
            )
        response = client.post(
            server.url + "/charges", json={"idempotency_key": key}, operation="order-14/pay"
        )
        assert response.status_code == 201 and server.keys_seen() == [key]

"""The JournalStore contract, run against every store: SQLite and PostgreSQL.

A third store (Redis, DynamoDB, ...) passes this suite by adding a `Store` adapter.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import samekey
from samekey import _rows, _sqlite_open
from samekey._contract import Intent, JournalStore, build, new_record
from samekey.testing import Fault, FaultPlan, PaymentServer

URL = "http://pay.test/charges"
A, B = "host-a/101/aaaa", "host-b/202/bbbb"
T0 = 1_700_000_000.0


@dataclass
class Store:
    """How a test reaches one kind of store behind the protocol."""

    name: str
    open: Callable[
        [], JournalStore
    ]  # a new instance on the same journal (another process, another host)
    client_arg: str  # what `samekey.Client(journal=...)` takes for it
    table: str
    set_version: Callable[[int], None]
    get_version: Callable[[], int]
    module: Any  # holds SCHEMA_VERSION and MIGRATIONS


def _sqlite_store(tmp_path: Path) -> Store:
    path = tmp_path / "journal.sqlite3"

    def set_version(n: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version={n}")

    def get_version() -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()

    return Store(
        "sqlite",
        lambda: samekey.Journal(path),
        str(path),
        "operations",
        set_version,
        get_version,
        _sqlite_open,
    )


def _postgres_store(dsn: str) -> Store:
    import psycopg

    from samekey import _postgres_schema

    def set_version(n: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE samekey_schema SET version = %s", (n,))

    def get_version() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT version FROM samekey_schema").fetchone()
            assert row is not None
            return int(row[0])

    return Store(
        "postgres",
        lambda: samekey.PostgresJournal(dsn, lock_timeout=5),
        dsn,
        "samekey_operations",
        set_version,
        get_version,
        _postgres_schema,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return _sqlite_store(tmp_path)
    return _postgres_store(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def journal(store: Store) -> Iterator[JournalStore]:
    j = store.open()
    yield j
    j.close()


@pytest.fixture
def server() -> Iterator[PaymentServer]:
    with PaymentServer() as s:
        yield s


def intent(
    operation: str = "order-1/charge",
    body: bytes = b'{"amount": 100}',
    key: str | None = None,
    url: str = URL,
) -> Intent:
    """What a client records for ``POST url`` with ``body`` (the same fingerprint)."""
    return Intent(
        operation=operation,
        key=key or str(uuid.uuid4()),
        key_header="Idempotency-Key",
        method="POST",
        url=url,
        fingerprint=hashlib.sha256(f"POST\n{url}\n".encode() + body).hexdigest(),
        request_headers=(("content-type", "application/json"), ("x-request-source", "checkout")),
        request_body=body,
    )


# -- claim ----------------------------------------------------------------------------


def test_a_value_built_without_its_init_equals_the_one_it_would_make() -> None:
    fields: dict[str, Any] = dict(
        operation="order-1/charge", key="k", key_header="Idempotency-Key", method="POST",
        url="https://api.example/v1/charges", fingerprint="f", request_headers=(("a", "b"),),
        request_body=b"{}",
    )  # fmt: skip
    assert build(Intent, **fields) == Intent(**fields)
    record = new_record(Intent(**fields), "owner", 1.0, 61.0)
    assert record.settled_note is None and record.body_redacted is False  # the defaults
    assert record == samekey.OperationRecord(
        **fields, state="pending", created_at=1.0, updated_at=1.0, completed_at=None,
        attempts=0, last_error=None, response_status=None, response_headers=(),
        response_body=None, lease_owner="owner", lease_expires=61.0,
    )  # fmt: skip


def test_claim_creates_a_durable_record_that_another_instance_reads_back(
    store: Store, journal: JournalStore
) -> None:
    body = b'{"amount": 100}\x00\xff binary tail'
    first = intent(body=body)
    result = journal.claim(first, A, 30, T0)
    assert result.status == "created"
    other = store.open()  # a second process / host opening the same journal
    try:
        record = other.get("order-1/charge")
    finally:
        other.close()
    assert record is not None and record.pending
    assert (record.key, record.fingerprint, record.request_body) == (
        first.key,
        first.fingerprint,
        body,
    )
    assert record.request_headers == first.request_headers
    assert (record.lease_owner, record.lease_expires, record.created_at, record.attempts) == (
        A,
        T0 + 30,
        T0,
        0,
    )


def test_the_record_a_claim_returns_is_the_one_read_back(journal: JournalStore) -> None:
    # every field: the store builds a new claim's record without reading it back
    result = journal.claim(intent(body=b'{"amount": 100}'), A, 30, T0)
    assert result.record == journal.get("order-1/charge")


def test_claim_by_another_owner_while_the_lease_is_live_is_busy(journal: JournalStore) -> None:
    first = intent()
    journal.claim(first, A, 30, T0)
    busy = journal.claim(intent(key="another-key"), B, 30, T0 + 10)
    assert busy.status == "busy"
    assert (busy.record.lease_owner, busy.record.key) == (A, first.key)
    again = journal.claim(first, A, 30, T0 + 11)  # the holder itself may claim again
    assert again.status == "claimed" and again.record.lease_expires == T0 + 41


def test_expired_lease_is_taken_over_with_the_same_key(journal: JournalStore) -> None:
    first = intent()
    journal.claim(first, A, 30, T0)
    journal.record_attempt(
        "order-1/charge", A, 1, "ConnectError: refused", 30, T0 + 5
    )  # lease now ends T0 + 35
    assert journal.claim(intent(), B, 30, T0 + 34).status == "busy"
    taken = journal.claim(intent(), B, 30, T0 + 36)
    assert taken.status == "claimed"
    assert (taken.record.key, taken.record.attempts, taken.record.last_error) == (
        first.key,
        1,
        "ConnectError: refused",
    )
    stored = journal.get("order-1/charge")
    assert stored is not None and (stored.lease_owner, stored.lease_expires) == (B, T0 + 66)
    # the old holder, back from a pause, can no longer move the lease or the counters
    journal.record_attempt("order-1/charge", A, 9, "late", 30, T0 + 40)
    journal.release("order-1/charge", A, 9, "late", T0 + 40)
    stored = journal.get("order-1/charge")
    assert stored is not None and (stored.lease_owner, stored.attempts, stored.last_error) == (
        B,
        1,
        "ConnectError: refused",
    )


def test_release_frees_the_lease_at_once_and_keeps_the_key(journal: JournalStore) -> None:
    first = intent()
    journal.claim(first, A, 300, T0)
    journal.release("order-1/charge", A, 3, "HTTP 503", T0 + 1)
    record = journal.get("order-1/charge")
    assert record is not None and record.pending
    assert (record.lease_owner, record.lease_expires, record.attempts, record.last_error) == (
        None,
        None,
        3,
        "HTTP 503",
    )
    journal.release("order-1/charge", A, 1, None, T0 + 2)  # not the holder any more: no effect
    taken = journal.claim(intent(), B, 30, T0 + 2)
    assert (
        taken.status == "claimed" and taken.record.key == first.key and taken.record.attempts == 3
    )


def test_completed_operation_is_replayed_not_claimed(journal: JournalStore) -> None:
    journal.claim(intent(), A, 30, T0)
    headers = [("content-type", "application/json"), ("x-charge", "ch_1")]
    journal.complete("order-1/charge", A, 2, 201, headers, b'{"id":"ch_1"}', T0 + 1)
    done = journal.claim(intent(), B, 30, T0 + 2)
    assert done.status == "completed"
    record = done.record
    assert (record.response_status, record.response_body, record.attempts) == (
        201,
        b'{"id":"ch_1"}',
        2,
    )
    assert record.response_headers == tuple(headers)
    assert (record.lease_owner, record.completed_at, record.last_error) == (None, T0 + 1, None)


def test_only_one_of_many_concurrent_claimers_gets_the_operation(store: Store) -> None:
    stores = [store.open() for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[str] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        barrier.wait(timeout=10)
        status = stores[i].claim(intent(key=f"key-{i}"), f"owner-{i}", 30, T0).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    for s in stores:
        s.close()
    assert sorted(results) == ["busy"] * 5 + ["created"]


# -- through a real client -------------------------------------------------------------


def test_client_replays_a_completed_operation_after_a_restart(
    store: Store, server: PaymentServer
) -> None:
    with samekey.Client(journal=store.client_arg) as client:  # a path or a postgresql:// DSN string
        first = client.post(
            f"{server.url}/charges", json={"amount": 700}, operation="order-7/charge"
        )
    assert first.status_code == 201
    with samekey.Client(journal=store.client_arg) as client:  # the next run of the program
        again = client.post(
            f"{server.url}/charges", json={"amount": 700}, operation="order-7/charge"
        )
    assert again.status_code == 201 and again.json() == first.json()
    info = samekey.operation_info(again)
    assert info is not None and info.replayed
    assert server.charge_count() == 1
    assert len(server.requests()) == 1  # the replay came from the journal, not the network


def test_async_tasks_racing_on_one_operation_charge_once(
    store: Store, server: PaymentServer
) -> None:
    async def main() -> list[httpx.Response]:
        async with samekey.AsyncClient(journal=store.client_arg) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{server.url}/charges", json={"amount": 3}, operation="order-3/charge"
                    )
                    for _ in range(5)
                )
            )

    responses = asyncio.run(main())
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert (
        server.charge_count() == 1 and len(server.requests()) == 1
    )  # the others waited, then replayed


def test_client_retries_a_dropped_answer_with_the_same_key(store: Store) -> None:
    journal = store.open()
    faults = FaultPlan([Fault("drop_after")])  # charged, then the answer is lost
    with PaymentServer(faults=faults) as server, samekey.set_testing(True):
        with samekey.Client(journal=journal) as client:
            response = client.post(
                f"{server.url}/charges", json={"amount": 5}, operation="order-5/charge"
            )
        assert response.status_code == 201
        record = journal.get("order-5/charge")
        assert record is not None and not record.pending and record.attempts == 2
        assert server.keys_seen() == [record.key, record.key]
        assert server.charge_count() == 1
    journal.close()


def test_mismatched_request_under_a_recorded_operation_is_refused(
    journal: JournalStore, server: PaymentServer
) -> None:
    with samekey.Client(journal=journal) as client:
        client.post(f"{server.url}/charges", json={"amount": 100}, operation="order-9/charge")
        with pytest.raises(samekey.OperationMismatch, match="different body"):
            client.post(f"{server.url}/charges", json={"amount": 999}, operation="order-9/charge")
    assert server.charge_count() == 1 and len(server.requests()) == 1


def test_mismatch_on_a_pending_record_releases_the_lease(
    journal: JournalStore, server: PaymentServer
) -> None:
    journal.claim(intent("order-3/charge"), A, 300, T0)
    journal.release("order-3/charge", A, 1, "HTTP 503", T0 + 1)
    with samekey.Client(journal=journal) as client, pytest.raises(samekey.OperationMismatch):
        client.post(f"{server.url}/charges", json={"amount": 1}, operation="order-3/charge")
    record = journal.get("order-3/charge")
    assert record is not None and record.pending and record.lease_owner is None
    assert server.requests() == []


def test_pending_key_older_than_key_ttl_is_not_sent_again(
    journal: JournalStore, server: PaymentServer
) -> None:
    body = b'{"amount":1}'
    old = intent("order-8/charge", body=body, url=f"{server.url}/charges")
    journal.claim(old, A, 30, T0)  # recorded long ago, never answered
    journal.release("order-8/charge", A, 1, "ReadTimeout", T0 + 1)
    with samekey.Client(journal=journal, key_ttl=3600) as client, pytest.raises(samekey.KeyExpired):
        client.post(f"{server.url}/charges", content=body, operation="order-8/charge")
    record = journal.get("order-8/charge")
    assert (
        record is not None
        and record.pending
        and record.key == old.key
        and record.lease_owner is None
    )
    assert server.requests() == []


# A UTF-8 filename and a Latin-1 name: header bytes that are not ASCII (httpx's default)
UTF8_DISPOSITION = 'attachment; filename="reçu-€.pdf"'.encode()
LATIN1_NAME = "José Müller".encode("latin-1")


def test_non_ascii_response_headers_replay_byte_for_byte(store: Store) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = [(b"Content-Disposition", UTF8_DISPOSITION), (b"X-Holder", LATIN1_NAME)]
        return httpx.Response(201, headers=headers, json={"id": "ch_1"})

    def run() -> httpx.Response:
        with samekey.Client(
            journal=store.client_arg, transport=httpx.MockTransport(handler)
        ) as client:
            return client.post(URL, json={"amount": 1}, operation="order-7/charge")

    first = run()
    again = run()  # the next run of the program: from the journal
    info = samekey.operation_info(again)
    assert info is not None and info.replayed
    wanted = [(b"content-disposition", UTF8_DISPOSITION), (b"x-holder", LATIN1_NAME)]
    for response in (first, again):
        assert [
            (k.lower(), v) for k, v in response.headers.raw if k.lower() in dict(wanted)
        ] == wanted
    assert again.headers["content-disposition"] == first.headers["content-disposition"]


def test_pending_request_with_non_ascii_headers_resumes_with_the_same_bytes(store: Store) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append([(k.lower(), v) for k, v in request.headers.raw if k.lower().startswith(b"x-")])
        return httpx.Response(503 if len(seen) == 1 else 201, json={})

    headers = [(b"X-Customer-Name", "José Müller".encode()), (b"X-Holder", LATIN1_NAME)]
    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(
        journal=store.client_arg, transport=httpx.MockTransport(handler), policy=policy
    ) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(URL, json={"amount": 9}, headers=headers, operation="order-9/charge")
        assert client.resume("order-9/charge").status_code == 201
    assert seen[1] == seen[0] == [(k.lower(), v) for k, v in headers]


# -- listing, forgetting, purging --------------------------------------------------------


def test_records_and_pending_filter_by_literal_prefix(journal: JournalStore) -> None:
    for i, op in enumerate(["a%b/1", "a%b/2", "axb/3", "a_b/4", "zz/5"]):
        journal.claim(intent(op), A, 30, T0 + i)
    journal.complete("a%b/2", A, 1, 201, [], b"{}", T0 + 10)
    assert [r.operation for r in journal.records("a%b/")] == ["a%b/1", "a%b/2"]
    assert [r.operation for r in journal.pending("a%")] == ["a%b/1"]
    assert [r.operation for r in journal.pending("a_")] == ["a_b/4"]
    assert [r.operation for r in journal.records()] == ["a%b/1", "a%b/2", "axb/3", "a_b/4", "zz/5"]
    assert len(journal.records(include_completed=False)) == 4


def test_records_without_bodies_are_the_same_records_minus_headers_and_bodies(
    journal: JournalStore,
) -> None:
    # what `samekey list` reads: after an outage, 100k pending records must not load every body
    import dataclasses

    journal.claim(intent("p/1", body=b'{"amount": 1}' * 100), A, 30, T0)
    journal.claim(intent("p/2"), A, 30, T0 + 1)
    journal.complete(
        "p/2", A, 1, 201, [("content-type", "application/json")], b'{"id": "ch_2"}', T0 + 2
    )
    full = journal.records()
    light = journal.records(bodies=False)
    assert [r.operation for r in light] == ["p/1", "p/2"]
    for whole, summary in zip(full, light, strict=True):
        assert (
            summary.request_body == b""
            and summary.request_headers == ()
            and summary.response_body is None
        )
        assert summary.response_headers == ()
        emptied = {
            "request_body": b"",
            "request_headers": (),
            "response_body": None,
            "response_headers": (),
        }
        assert dataclasses.replace(whole, **emptied) == summary  # type: ignore[arg-type]
    assert [r.operation for r in journal.records(include_completed=False, bodies=False)] == ["p/1"]


def test_forget_removes_a_record_so_the_name_starts_afresh(journal: JournalStore) -> None:
    first = intent()
    journal.claim(first, A, 30, T0)
    assert journal.forget("order-1/charge") is True
    assert journal.get("order-1/charge") is None
    assert journal.forget("order-1/charge") is False
    fresh = journal.claim(intent(key="new-key"), B, 30, T0 + 1)
    assert fresh.status == "created" and fresh.record.key == "new-key"


def test_purge_deletes_old_completed_records_and_never_pending_ones(journal: JournalStore) -> None:
    for op in ("old-done", "new-done", "old-pending", "old-released"):
        journal.claim(intent(op), A, 30, T0)
    journal.complete("old-done", A, 1, 201, [], b"{}", T0 + 1)
    journal.complete("new-done", A, 1, 201, [], b"{}", T0 + 90_000)
    journal.release("old-released", A, 1, "HTTP 503", T0 + 1)
    assert journal.purge_completed(86_400, T0 + 100_000) == 1
    assert [r.operation for r in journal.records()] == ["new-done", "old-pending", "old-released"]
    assert journal.purge_completed(0, T0 + 10**9) == 1  # even with no retention, pending ones stay
    assert sorted(r.operation for r in journal.records()) == ["old-pending", "old-released"]


def test_purge_takes_the_oldest_first_and_a_backlog_in_chunks(
    journal: JournalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_rows, "PURGE_CHUNK", 3)  # both stores purge through _rows.purge_in_chunks
    for i in range(10):
        journal.claim(intent(f"done-{i}"), A, 30, T0)
        journal.complete(f"done-{i}", A, 1, 201, [], b"{}", T0 + i)
    journal.claim(intent("pending"), A, 30, T0)
    assert journal.purge_completed(0, T0 + 100, limit=4) == 4
    left = sorted(r.operation for r in journal.records(include_completed=True))
    assert left == ["done-4", "done-5", "done-6", "done-7", "done-8", "done-9", "pending"], (
        "the oldest went first"
    )
    assert journal.purge_completed(0, T0 + 100) == 6  # no limit: everything old, 3 at a time
    assert [r.operation for r in journal.records()] == ["pending"]


# -- schema ----------------------------------------------------------------------------------


def test_journal_from_a_newer_samekey_is_refused_and_left_untouched(store: Store) -> None:
    journal = store.open()
    journal.claim(intent(), A, 30, T0)
    journal.close()
    store.set_version(99)
    with pytest.raises(samekey.JournalError, match=r"newer samekey \(schema 99.*Upgrade samekey"):
        store.open()
    assert store.get_version() == 99
    store.set_version(store.module.SCHEMA_VERSION)
    reopened = store.open()
    record = reopened.get("order-1/charge")
    reopened.close()
    assert record is not None and record.pending


def test_an_older_schema_is_migrated_forward_keeping_its_records(
    store: Store, monkeypatch: Any
) -> None:
    journal = store.open()
    journal.claim(intent(), A, 30, T0)
    journal.close()
    current = store.module.SCHEMA_VERSION
    migration = (
        f"ALTER TABLE {store.table} ADD COLUMN note TEXT; UPDATE {store.table} SET note = "
        "'migrated'"
    )
    monkeypatch.setattr(store.module, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(store.module.MIGRATIONS, current, migration)
    migrated = store.open()
    record = migrated.get("order-1/charge")
    migrated.close()
    assert record is not None and record.pending
    assert store.get_version() == current + 1
    reopened = store.open()  # already current: opening again changes nothing
    reopened.close()
    assert store.get_version() == current + 1


# -- fill_reserved (key_for) ------------------------------------------------------------


def test_fill_reserved_writes_the_request_into_a_reserved_record_under_its_lease_only(
    store: Store, journal: JournalStore
) -> None:
    fill = journal.fill_reserved  # type: ignore[attr-defined]  # optional: what key_for needs
    reserved = replace(
        intent(), method="", url="(key_for: no request sent yet)", fingerprint="", request_body=b""
    )
    assert journal.claim(reserved, A, 30, T0).status == "created"
    journal.release("order-1/charge", A, 0, None, T0)
    assert journal.claim(replace(intent(), key=reserved.key), B, 30, T0 + 10).status == "claimed"
    real = replace(intent(), key=reserved.key)
    assert fill(real, A, T0 + 11) is False  # not the lease holder
    assert fill(real, B, T0 + 12) is True
    assert fill(real, B, T0 + 13) is False  # filled already: no longer reserved
    other = store.open()
    try:
        record = other.get("order-1/charge")
    finally:
        other.close()
    assert record is not None and record.pending and record.key == reserved.key
    assert (record.method, record.url, record.fingerprint) == (
        real.method,
        real.url,
        real.fingerprint,
    )
    assert (record.request_headers, record.request_body, record.created_at) == (
        real.request_headers,
        real.request_body,
        T0 + 12,
    )


# -- samekey list's pages and samekey settle (optional: ListingStore, SettlingStore) -------


@pytest.mark.parametrize("probe", [5000, 1], ids=["prefix-read-by-key", "prefix-read-in-order"])
def test_list_page_walks_every_match_in_order_one_page_at_a_time(
    journal: JournalStore, monkeypatch: pytest.MonkeyPatch, probe: int
) -> None:
    from samekey import _journal
    from samekey._contract import ListingStore, ListQuery

    monkeypatch.setattr(_journal, "_PREFIX_PROBE", probe)  # SQLite's two ways to read a prefix
    assert isinstance(journal, ListingStore)
    names = ["b/3", "a%b/1", "b/1", "a_b/2", "b/2", "b/0", "c/9"]
    for i, op in enumerate(names):
        journal.claim(intent(op), A, 30, T0 + i // 3)  # three records share each created_at
    journal.complete("b/1", A, 1, 201, [], b"{}", T0 + 9)
    every = sorted(names, key=lambda op: (T0 + names.index(op) // 3, op))

    def walk(query: ListQuery) -> list[str]:
        seen: list[str] = []
        while True:
            page = journal.list_page(replace(query, limit=2))
            seen += [r.operation for r in page]
            if len(page) < 2:
                return seen
            query = replace(query, after=(page[-1].created_at, page[-1].operation))

    assert walk(ListQuery(state=None)) == every
    assert walk(ListQuery(state="pending")) == [op for op in every if op != "b/1"]
    assert walk(ListQuery(state="completed")) == ["b/1"]
    assert walk(ListQuery(state=None, prefix="b/")) == [op for op in every if op.startswith("b/")]
    assert walk(ListQuery(state="pending", prefix="a%")) == ["a%b/1"]  # LIKE's % and _ are literal
    assert walk(ListQuery(state="pending", prefix="a_")) == ["a_b/2"]
    assert walk(ListQuery(state=None, created_before=T0 + 1)) == every[:6]
    (record,) = journal.list_page(ListQuery(state="pending", prefix="a%b/"))
    assert (record.request_body, record.request_headers, record.key) == (
        b"",
        (),
        journal.get("a%b/1").key,  # type: ignore[union-attr]
    )


def test_settle_completes_a_pending_operation_by_hand_and_its_code_gets_the_answer_replayed(
    store: Store,
) -> None:
    from samekey._contract import SettlingStore

    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(
        journal=store.client_arg, transport=httpx.MockTransport(unavailable), policy=policy
    ) as c:
        with pytest.raises(samekey.RetriesExhausted):
            c.post(URL, json={"amount": 7}, operation="order-7/charge")
    journal = store.open()
    try:
        assert isinstance(journal, SettlingStore)
        now = time.time()
        result = journal.settle("order-7/charge", 201, "paid: ch_7 on the dashboard", now)
        assert result.status == "settled" and result.record is not None
    finally:
        journal.close()
    other = store.open()  # durable, and the same from another process
    try:
        record = other.get("order-7/charge")
        assert record is not None and not record.pending and record.settled_by_hand
        assert (record.settled_note, record.response_status, record.completed_at) == (
            "paid: ch_7 on the dashboard", 201, now,
        )  # fmt: skip
        assert (record.attempts, record.last_error) == (1, "HTTP 503")  # what was tried stays
        assert "order-7/charge" not in [r.operation for r in other.records(include_completed=False)]
    finally:
        other.close()

    def no_network(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a settled operation was sent again")

    with samekey.Client(
        journal=store.client_arg, transport=httpx.MockTransport(no_network)
    ) as client:
        again = client.post(URL, json={"amount": 7}, operation="order-7/charge")
    assert again.status_code == 201 and again.headers["samekey-settled"] == "by-hand"
    assert (
        again.json()["settled_by_hand"] is True
        and again.json()["note"] == "paid: ch_7 on the dashboard"
    )
    info = samekey.operation_info(again)
    assert info is not None and info.replayed


def test_settle_refuses_a_live_lease_a_completed_or_an_unknown_operation(
    journal: JournalStore,
) -> None:
    settle = journal.settle  # type: ignore[attr-defined]  # optional: SettlingStore
    journal.claim(intent(), A, 30, T0)  # A executes it until T0 + 30
    busy = settle("order-1/charge", 201, "", T0 + 10)
    assert busy.status == "busy" and busy.record.pending and busy.record.lease_owner == A
    settled = settle("order-1/charge", 402, "", T0 + 31)  # A died: its lease ran out
    assert settled.status == "settled" and settled.record.settled_note == ""
    assert settled.record.response_body == b'{"settled_by_hand": true, "status": 402, ' + (
        b'"settled_at": "2023-11-14T22:13:51+00:00", "note": ""}'
    )
    journal.complete("order-1/charge", A, 2, 201, [], b"late", T0 + 32)  # A was only paused
    again = settle("order-1/charge", 201, "twice", T0 + 33)
    assert again.status == "completed" and again.record.response_status == 402
    assert again.record.settled_note == "" and again.record.response_body != b"late"
    assert (
        settle("nope", 201, "", T0).status == "missing"
        and settle("nope", 201, "", T0).record is None
    )
    journal.claim(intent("order-2/charge"), A, 30, T0)
    journal.release("order-2/charge", A, 1, "ReadTimeout", T0 + 1)  # a free lease: settled at once
    no_content = settle("order-2/charge", 204, "", T0 + 2)
    assert no_content.status == "settled" and no_content.record.response_body == b""

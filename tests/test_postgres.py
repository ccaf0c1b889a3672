"""What only the PostgreSQL journal has: replicas in other processes and hosts, the server link."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import samekey
from samekey.testing import Fault, FaultPlan, PaymentServer

SRC = str(Path(samekey.__file__).resolve().parent.parent)

# One replica of a service: charges order 42 through a journal shared with the others.
REPLICA = textwrap.dedent(
    """
    import json, sys, samekey
    dsn, url, host = sys.argv[1:4]
    # timeout=None: the lease stays 1.5 s (a timeout would stretch it to cover one attempt)
    with samekey.Client(journal=dsn, lease=1.5, timeout=None) as client:
        client.engine.owners.host = host  # each process plays a replica on a host of its own
        response = client.post(url + "/charges", json={"amount": 4200}, operation="order-42/charge")
        info = samekey.operation_info(response)
        print(json.dumps({"status": response.status_code, "body": response.json(), "key": \
info.key}))
    """
)


def _replica(dsn: str, url: str, host: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", REPLICA, dsn, url, host],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_replica_killed_mid_payment_is_taken_over_with_the_same_key(pg_dsn: str) -> None:
    # The server charges, then answers only after 5 s: replica A dies in between.
    with PaymentServer(faults=FaultPlan([Fault("slow", delay=5.0)])) as server:
        a = _replica(pg_dsn, server.url, "replica-a")
        try:
            deadline = time.monotonic() + 30
            while server.charge_count() == 0:
                assert a.poll() is None, a.communicate()
                assert time.monotonic() < deadline, "replica A never reached the server"
                time.sleep(0.02)
            with samekey.PostgresJournal(pg_dsn) as journal:
                held = journal.get("order-42/charge")
            assert (
                held is not None
                and held.pending
                and (held.lease_owner or "").startswith("replica-a/")
            )
            a.send_signal(signal.SIGKILL)
        finally:
            a.kill()
            a.wait(timeout=10)
        assert a.returncode == -signal.SIGKILL

        b = _replica(pg_dsn, server.url, "replica-b")
        out, err = b.communicate(timeout=30)
        assert b.returncode == 0, err
        result = json.loads(out)

        assert result["status"] == 201 and result["key"] == held.key
        assert server.charge_count() == 1
        assert (
            result["body"]["id"] == f"ch_{server.charges()[0]['id']}"
        )  # the first charge, replayed
        # A's request is logged only when its slow answer is written; B's is the server's replay
        replays = [r for r in server.requests() if r["outcome"] == "replay"]
        assert [r["key"] for r in replays] == [held.key] and set(server.keys_seen()) == {held.key}
        # B sent only once A's lease had run out
        assert held.lease_expires is not None and replays[0]["at"] >= held.lease_expires
        with samekey.PostgresJournal(pg_dsn) as journal:
            done = journal.get("order-42/charge")
        assert done is not None and not done.pending and done.response_status == 201


def test_schema_table_without_a_version_is_refused_not_rewritten(pg_dsn: str) -> None:
    import psycopg

    samekey.PostgresJournal(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM samekey_schema")
    with pytest.raises(samekey.JournalError, match=r"schema version is unknown.*left untouched"):
        samekey.PostgresJournal(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM samekey_schema").fetchone() == (0,)


@pytest.mark.parametrize(
    "versions, said",
    [
        ([0], "holds version 0, which no samekey writes"),
        ([-1], "holds version -1, which no samekey writes"),
        ([-2147483648], "holds version -2147483648, which no samekey writes"),
        ([1, 0], "holds several versions (0, 1)"),
    ],
)
def test_an_invalid_schema_version_is_refused_and_nothing_is_changed(
    pg_dsn: str, versions: list[int], said: str
) -> None:
    import io

    import psycopg

    from samekey import cli

    with samekey.PostgresJournal(pg_dsn) as journal:
        journal.claim(_intent(), "a", 30, 1000.0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM samekey_schema")
        for version in versions:
            conn.execute("INSERT INTO samekey_schema VALUES (%s)", (version,))
    # before: a version 0 was taken for an old journal to migrate, and failed with KeyError: 0
    for create in (True, False):
        with pytest.raises(
            samekey.JournalError, match=f"{re.escape(said)}.*left untouched"
        ) as caught:
            samekey.PostgresJournal(pg_dsn, create=create)
        assert "schema version is unknown" in str(caught.value)
    err = io.StringIO()
    assert cli.main(["resume", "--all", "--journal", pg_dsn], stdout=io.StringIO(), stderr=err) == 2
    assert said in err.getvalue()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT version FROM samekey_schema")) == sorted(
            versions
        )
        assert conn.execute("SELECT operation, lease_owner FROM samekey_operations").fetchall() == [
            ("op", "a")
        ]


def test_relaxed_writes_leave_new_records_durable(pg_dsn: str) -> None:
    # complete/record_attempt/release skip the WAL flush for their own statement only: a
    # claim that follows on the same connection must again wait for it.
    with samekey.PostgresJournal(pg_dsn, pool_size=1) as journal:
        journal.claim(_intent(), "a", 30, 1000.0)
        journal.record_attempt("op", "a", 1, "HTTP 503", 30, 1001.0)
        journal.release("op", "a", 1, None, 1002.0)
        journal.claim(_intent(), "a", 30, 1003.0)
        journal.complete("op", "a", 2, 201, [], b"{}", 1004.0)
        setting = journal._run(
            "checking", lambda conn: conn.execute("SHOW synchronous_commit").fetchone()
        )
        record = journal.get("op")
    assert setting == ("on",)
    assert record is not None and (record.state, record.attempts, record.response_status) == (
        "completed",
        2,
        201,
    )


def test_samekey_command_lists_and_resumes_from_a_postgres_journal(pg_dsn: str) -> None:
    # a replica gave up on order 77 (the provider answered 503): ops finish it from a shell
    with PaymentServer(faults=FaultPlan([Fault("status", 503)])) as server:
        with samekey.Client(journal=pg_dsn, policy=samekey.RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(samekey.RetriesExhausted):
                client.post(
                    f"{server.url}/charges", json={"amount": 77}, operation="order-77/charge"
                )
        env = {**os.environ, "PYTHONPATH": SRC}

        def samekey_cmd(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "samekey", *argv, "--journal", pg_dsn],
                capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip

        listed = samekey_cmd("list", "--json")
        assert listed.returncode == 0, listed.stderr
        [record] = json.loads(listed.stdout)
        assert (record["operation"], record["state"]) == ("order-77/charge", "pending")
        resumed = samekey_cmd("resume", "--all")
        assert resumed.returncode == 0, resumed.stderr
        assert server.keys_seen() == [record["key"], record["key"]] and server.charge_count() == 1


@pytest.mark.usefixtures("psycopg_installed")
def test_a_dsn_in_samekey_journal_is_the_journal_of_clients_and_of_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    # replicas configured by environment: $SAMEKEY_JOURNAL=postgresql://... must be the shared
    # journal, never a file "./postgresql:/..." on the container's disk, where keys die with it
    import httpx

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMEKEY_JOURNAL", pg_dsn)
    transport = httpx.MockTransport(lambda request: httpx.Response(201, json={"id": "ch_1"}))
    with samekey.Client(transport=transport) as client:
        assert isinstance(client.journal, samekey.PostgresJournal)
        client.post("https://pay.test/v1/charges", json={"amount": 1}, operation="order-7/charge")
    with samekey.PostgresJournal(pg_dsn) as journal:
        record = journal.get("order-7/charge")
        assert record is not None and record.state == "completed"
        journal.claim(_intent(), "a", 30, time.time())  # one pending, for the command to list
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-m", "samekey", "list", "--json"],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["operation"] for r in json.loads(done.stdout)] == ["op"]
    assert list(tmp_path.iterdir()) == []
    # the SQLite journal itself cannot take a DSN: said so, the password masked
    monkeypatch.setenv("SAMEKEY_JOURNAL", "postgresql://ops:pa55-w0rd@127.0.0.1:1/pay")
    with pytest.raises(samekey.JournalError) as caught:
        samekey.Journal()
    assert "PostgresJournal" in str(caught.value) and "pa55-w0rd" not in str(caught.value)
    assert "postgresql://ops:***@127.0.0.1:1/pay" in str(caught.value)


def test_the_sqlite_journal_given_a_dsn_refuses_it_instead_of_making_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # samekey.Journal("postgresql://...") read the DSN as a relative path: a SQLite file in
    # ./postgresql:/db.internal/pay, private to this replica, while the code meant the shared one
    monkeypatch.chdir(tmp_path)
    for dsn in (
        "postgresql://ops:pa55-w0rd@db.internal/pay",
        "postgres://ops:pa55-w0rd@db.internal/pay",
    ):
        with pytest.raises(samekey.JournalError) as caught:
            samekey.Journal(dsn)
        assert "PostgresJournal" in str(caught.value) and "pa55-w0rd" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    ["lock_timeout", "connect_timeout", "statement_timeout", "idle_in_transaction_session_timeout"],
)
def test_an_endless_timeout_is_refused_by_name(name: str) -> None:
    # float("inf") passed the check, then failed as
    # "OverflowError: cannot convert float infinity to integer"
    with pytest.raises(ValueError, match=f"{name} must be a positive, finite number of seconds"):
        samekey.PostgresJournal("postgresql://ops@127.0.0.1:1/pay", **{name: float("inf")})


def test_row_lock_held_too_long_is_a_journal_error_saying_so(pg_dsn: str) -> None:
    import psycopg

    with (
        samekey.PostgresJournal(pg_dsn, lock_timeout=0.3) as journal,
        psycopg.connect(pg_dsn) as other,
    ):
        first = journal.claim(_intent(), "a", 30, 1000.0)
        assert first.status == "created"
        other.execute(
            "SELECT 1 FROM samekey_operations WHERE operation = 'op' FOR UPDATE"
        )  # stays open
        started = time.monotonic()
        with pytest.raises(
            samekey.JournalError, match=r"held by another caller for more than 0.3 s.*lock_timeout"
        ):
            journal.claim(_intent(), "b", 30, 1001.0)
        assert time.monotonic() - started < 5
        other.rollback()
        assert journal.claim(_intent(), "b", 30, 1001.0).status == "busy"  # usable again


def test_a_statement_past_the_statement_timeout_is_a_journal_error_saying_so(pg_dsn: str) -> None:
    import psycopg

    # the lock wait is allowed 30 s; the statement as a whole only 0.3 s
    journal = samekey.PostgresJournal(pg_dsn, lock_timeout=30, statement_timeout=0.3)
    with journal, psycopg.connect(pg_dsn) as other:
        journal.claim(_intent(), "a", 30, 1000.0)
        other.execute(
            "LOCK TABLE samekey_operations IN ACCESS EXCLUSIVE MODE"
        )  # a stuck migration, say
        started = time.monotonic()
        with pytest.raises(
            samekey.JournalError, match=r"cancelled a statement.*statement_timeout is 0.3 s"
        ):
            journal.get("op")
        assert time.monotonic() - started < 5
        other.rollback()
        record = journal.get("op")
        assert record is not None and record.lease_owner == "a"


@pytest.mark.parametrize("value", [0, -1, float("nan"), "30", True])
def test_a_bad_idle_in_transaction_timeout_is_refused_by_name(value: object) -> None:
    with pytest.raises(
        ValueError, match="idle_in_transaction_session_timeout must be a positive, finite number"
    ):
        samekey.PostgresJournal(
            "postgresql://ops@127.0.0.1:1/pay",
            idle_in_transaction_session_timeout=value,  # type: ignore[arg-type]
        )


def test_sessions_idle_in_a_transaction_are_ended_by_the_server(pg_dsn: str) -> None:
    def setting(journal: samekey.PostgresJournal) -> object:
        return journal._run(
            "checking",
            lambda conn: conn.execute("SHOW idle_in_transaction_session_timeout").fetchone(),
        )

    with samekey.PostgresJournal(pg_dsn) as journal:
        assert setting(journal) == ("30s",)  # the default: statement_timeout
    with samekey.PostgresJournal(pg_dsn, statement_timeout=12) as journal:
        assert setting(journal) == ("12s",)
    with samekey.PostgresJournal(pg_dsn, idle_in_transaction_session_timeout=1.5) as journal:
        assert journal.idle_in_transaction_session_timeout == 1.5
        assert setting(journal) == ("1500ms",)


def test_a_replica_stalled_while_holding_a_row_lock_is_cut_off_and_the_others_go_on(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from samekey import _postgres

    # Replica A takes over an expired lease and stalls (a GC pause, SIGSTOP, a swapped-out VM)
    # between its SELECT ... FOR UPDATE and its UPDATE. Without a server-side limit the row stays
    # locked as long as A is stalled, and every other replica's claim of it waits or fails with a
    # lock timeout.
    stalled = threading.Event()
    real_record = _postgres.record_from_row

    def stalling_record(row: tuple[object, ...], location: str) -> samekey.OperationRecord:
        if threading.current_thread().name == "replica-a" and not stalled.is_set():
            stalled.set()
            time.sleep(3)
        return real_record(row, location)

    monkeypatch.setattr(_postgres, "record_from_row", stalling_record)
    a = samekey.PostgresJournal(pg_dsn, idle_in_transaction_session_timeout=0.5)
    b = samekey.PostgresJournal(pg_dsn, lock_timeout=20)
    with a, b:
        assert a.claim(_intent(), "a", 30, 1000.0).status == "created"
        outcome: list[object] = []
        thread = threading.Thread(
            target=lambda: outcome.append(a.claim(_intent(), "a", 30, 2000.0).status),
            name="replica-a",
        )
        thread.start()
        assert stalled.wait(timeout=20)
        started = time.monotonic()
        taken = b.claim(_intent(), "b", 30, 2000.0)
        waited = time.monotonic() - started
        thread.join(timeout=30)
        # B got the row once the server ended A's idle transaction, long before A woke up
        assert taken.status == "claimed" and waited < 2.5
        # A's transaction was rolled back: woken, it finds B's lease and sends nothing
        assert outcome == ["busy"]
        record = b.get("op")
        assert record is not None and record.lease_owner == "b"


def test_a_replica_that_stalls_again_after_the_retry_is_told_why_its_call_failed(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from samekey import _postgres

    real_record = _postgres.record_from_row

    def stalling_record(row: tuple[object, ...], location: str) -> samekey.OperationRecord:
        time.sleep(1.0)  # every time: the fresh connection's transaction is ended too
        return real_record(row, location)

    with samekey.PostgresJournal(pg_dsn, idle_in_transaction_session_timeout=0.3) as journal:
        assert journal.claim(_intent(), "a", 30, 1000.0).status == "created"
        monkeypatch.setattr(_postgres, "record_from_row", stalling_record)
        with pytest.raises(
            samekey.JournalError, match=r"idle in a transaction for more than 0.3 s"
        ) as caught:
            journal.claim(_intent(), "a", 30, 2000.0)
        assert "raise idle_in_transaction_session_timeout" in str(caught.value)
        monkeypatch.setattr(_postgres, "record_from_row", real_record)
        assert journal.claim(_intent(), "a", 30, 2000.0).status == "claimed"  # usable again


def test_the_link_to_the_server_is_watched_unless_the_dsn_says_otherwise(pg_dsn: str) -> None:
    with samekey.PostgresJournal(pg_dsn, statement_timeout=12) as journal:
        conn = journal._acquire()
        try:
            params = {p.keyword.decode(): p.val for p in conn.pgconn.info if p.val is not None}
            assert params["keepalives"] == b"1" and params["tcp_user_timeout"] == b"12000"
            assert conn.execute("SHOW statement_timeout").fetchone() == ("12s",)
        finally:
            journal._give_back(conn)
    with samekey.PostgresJournal(pg_dsn + "&keepalives=0&tcp_user_timeout=0") as journal:
        conn = journal._acquire()
        try:
            params = {p.keyword.decode(): p.val for p in conn.pgconn.info if p.val is not None}
            assert params["keepalives"] == b"0" and params["tcp_user_timeout"] == b"0"
        finally:
            journal._give_back(conn)


def _terminate(pg_dsn: str, application_name: str) -> int:
    """Kill the server side of every connection with that application_name; how many there were."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
            "application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_caller_waits_for_a_pooled_connection_no_longer_than_pool_timeout(pg_dsn: str) -> None:
    # 4 connections, 50 threads of a busy replica, statements slowed by an overloaded server:
    # the wait for a free connection had no bound of its own (every waiter queued behind the rest)
    with samekey.PostgresJournal(pg_dsn, pool_size=1, pool_timeout=0.3) as journal:
        held = journal._acquire()  # another thread's call, still running
        try:
            started = time.monotonic()
            with pytest.raises(samekey.JournalError) as caught:
                journal.get("op")
            waited = time.monotonic() - started
        finally:
            journal._give_back(held)
        assert 0.3 <= waited < 2
        message = str(caught.value)
        assert "all 1 of its connections stayed in use for 0.3 s while reading" in message
        assert "Raise pool_size" in message and "raise pool_timeout" in message
        assert journal.get("op") is None  # a connection free again: it goes on
    with pytest.raises(
        ValueError, match="pool_timeout must be a positive, finite number of seconds, got 0"
    ):
        samekey.PostgresJournal(pg_dsn, pool_timeout=0)


def test_a_server_unreachable_mid_run_is_named_not_taken_for_a_busy_pool(pg_dsn: str) -> None:
    # the pool opens its connections in threads of its own: their error must still reach the caller
    import psycopg

    with samekey.PostgresJournal(pg_dsn, pool_timeout=0.3) as journal:
        journal._conninfo = psycopg.conninfo.make_conninfo(
            journal._conninfo, port=1
        )  # the server went away
        journal._pool.close()
        journal._pool = journal._new_pool()
        with pytest.raises(samekey.JournalError) as caught:
            journal.get("op")
    message = str(caught.value)
    assert (
        "cannot reach the PostgreSQL server while reading" in message
        and "Check that it runs" in message
    )
    assert "stayed in use" not in message


def test_a_dropped_server_connection_is_replaced(pg_dsn: str) -> None:

    dsn = pg_dsn + "&application_name=samekey_reconnect_test"
    with samekey.PostgresJournal(dsn, pool_size=1) as journal:
        journal.claim(_intent(), "a", 30, 1000.0)
        assert _terminate(pg_dsn, "samekey_reconnect_test") == 1
        record = journal.get("op")
        assert record is not None and record.lease_owner == "a"


def test_after_a_server_restart_the_first_calls_succeed_though_every_pooled_connection_died(
    pg_dsn: str,
) -> None:

    # A replica that served concurrent requests keeps pool_size idle connections; a server
    # restart or failover kills them all. The answer the payment server gave must still be
    # recorded: one dead connection replaced by another dead one is AnswerNotRecorded.
    dsn = pg_dsn + "&application_name=samekey_restart_test"
    with samekey.PostgresJournal(dsn, pool_size=3) as journal:
        journal.claim(_intent(), "a", 30, 1000.0)
        held = [journal._acquire() for _ in range(3)]
        for conn in held:
            journal._give_back(conn)
        assert _terminate(pg_dsn, "samekey_restart_test") == 3  # what a server restart does
        journal.complete("op", "a", 1, 201, [], b"{}", 1001.0)
        record = journal.get("op")
        assert record is not None and record.state == "completed" and record.response_status == 201


def test_a_forked_worker_opens_its_own_connections(pg_dsn: str) -> None:
    import psycopg

    dsn = pg_dsn + "&application_name=samekey_fork_test"
    backends = "SELECT pid FROM pg_stat_activity WHERE application_name = 'samekey_fork_test'"
    with (
        samekey.PostgresJournal(dsn, pool_size=1) as journal,
        psycopg.connect(pg_dsn, autocommit=True) as admin,
    ):
        journal.claim(_intent(), "parent", 30, 1000.0)
        parents = admin.execute(backends).fetchall()
        assert len(parents) == 1
        pid = os.fork()  # as a web server preloading the app forks its workers
        if pid == 0:
            code = 1
            try:
                record = journal.get("op")
                journal.close()
                code = 0 if record is not None and record.lease_owner == "parent" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        deadline = time.monotonic() + 10
        while len(now := admin.execute(backends).fetchall()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the child's own backend is exiting
        # the child closed only its own connection: the parent's session is still there
        assert now == parents
        assert journal.get("op") is not None


def test_a_replica_that_waited_for_another_creating_the_tables_opens_them(pg_dsn: str) -> None:
    import threading

    import psycopg

    from samekey import _postgres_schema

    # Six replicas start at once on an empty schema: one creates the tables while the others
    # wait for its lock. Here the test plays the one creating them, holding that lock.
    outcome: list[object] = []
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (_postgres_schema._SCHEMA_LOCK_ID,))

        def open_journal() -> None:
            try:
                samekey.PostgresJournal(pg_dsn, lock_timeout=20).close()
                outcome.append("opened")
            except Exception as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=open_journal)
        waiter.start()
        deadline = time.monotonic() + 20
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = "
            "%s AND NOT granted"
        )
        while other.execute(waiting, (_postgres_schema._SCHEMA_LOCK_ID,)).fetchone() != (1,):
            assert time.monotonic() < deadline and waiter.is_alive(), outcome
            time.sleep(0.02)
        with other.transaction():
            for statement in _postgres_schema._SCHEMA.split(";"):
                other.execute(statement)
            other.execute(
                "INSERT INTO samekey_schema (version) VALUES (%s)",
                (_postgres_schema.SCHEMA_VERSION,),
            )
        other.execute("SELECT pg_advisory_unlock(%s)", (_postgres_schema._SCHEMA_LOCK_ID,))
        waiter.join(timeout=30)
    assert outcome == ["opened"]


def test_six_replicas_opening_an_empty_schema_at_once_all_open_it(pg_dsn: str) -> None:
    import threading

    import psycopg

    for _ in range(3):  # a fresh empty schema each round
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS samekey_operations, samekey_schema")
        barrier = threading.Barrier(6)
        outcome: list[object] = []

        def open_journal(barrier: threading.Barrier, outcome: list[object]) -> None:
            try:
                barrier.wait(timeout=20)
                samekey.PostgresJournal(pg_dsn, lock_timeout=20).close()
                outcome.append("opened")
            except Exception as exc:
                outcome.append(exc)

        threads = [threading.Thread(target=open_journal, args=(barrier, outcome)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert outcome == ["opened"] * 6


def _samekey_tables(dsn: str) -> tuple[object, ...]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT to_regclass('samekey_schema'), to_regclass('samekey_operations')"
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_create_false_opens_an_existing_journal_and_never_makes_one(pg_dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    database = conninfo_to_dict(pg_dsn)["dbname"]
    with pytest.raises(samekey.JournalError) as caught:
        samekey.PostgresJournal(pg_dsn, create=False)
    message = str(caught.value)
    assert (
        f"database '{database}' has no samekey tables" in message
        and "nothing was created" in message
    )
    assert "samekey_test_" in message  # the schema it looked in
    assert "Check the database name" in message and "samekey.PostgresJournal(DSN)" in message
    assert _samekey_tables(pg_dsn) == (None, None)

    samekey.PostgresJournal(pg_dsn).close()  # create=True, the default: the application's first run
    with samekey.PostgresJournal(pg_dsn, create=False) as journal:
        assert journal.create is False
        assert journal.claim(_intent(), "a", 30, 1000.0).status == "created"
        assert journal.get("op") is not None


def test_create_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="create must be True or False, got 'no'"):
        samekey.PostgresJournal("postgresql://ops@127.0.0.1:1/pay", create="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "argv",
    [["list"], ["list", "--all", "--json"], ["show", "order-1"], ["resume", "--all"], ["forget",
    "order-1", "--yes"],
     ["purge", "--older-than", "7d"]],
)  # fmt: skip
def test_the_samekey_command_never_creates_tables_in_a_database_without_them(
    pg_dsn: str, argv: list[str]
) -> None:
    import io

    from psycopg.conninfo import conninfo_to_dict

    from samekey import cli

    # --journal .../payments_stagin (a typo) or a
    # database of another application: said so, left alone
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([*argv, "--journal", pg_dsn], stdout=out, stderr=err, stdin=io.StringIO())
    assert code == 2 and out.getvalue() == ""
    assert err.getvalue().startswith("samekey: error: journal postgresql://")
    assert (
        f"database '{conninfo_to_dict(pg_dsn)['dbname']}' has no samekey tables" in err.getvalue()
    )
    assert "nothing was created" in err.getvalue() and err.getvalue().count("\n") == 1
    assert _samekey_tables(pg_dsn) == (None, None)


def test_foreign_table_of_the_same_name_is_left_alone(pg_dsn: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE samekey_operations (id int)")
    with pytest.raises(samekey.JournalError, match=r"not made by samekey.*left untouched"):
        samekey.PostgresJournal(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('samekey_schema')").fetchone() == (None,)


def test_import_samekey_needs_no_psycopg_and_says_how_to_get_it() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None  # as if it were not installed
        import samekey
        try:
            samekey.PostgresJournal("postgresql://127.0.0.1/x")
        except samekey.JournalError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'samekey[postgres]'" in done.stdout


def _intent() -> samekey._contract.Intent:
    from samekey._contract import Intent

    return Intent("op", "k-1", "Idempotency-Key", "POST", "http://x/charges", "fp", (), b"{}")

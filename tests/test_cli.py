"""The `samekey` command: list, show, resume, forget, purge; exit codes and error lines."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

import samekey
from samekey import cli
from samekey._contract import Intent, ListQuery
from samekey._resume import RetargetTransport
from samekey.testing import PaymentServer

SRC = Path(__file__).resolve().parents[1] / "src"
LIST_FIELDS = {
    "operation", "state", "method", "url", "key", "key_header", "created_at", "age_seconds",
    "attempts",
    "attempt_unrecorded", "last_error", "completed_at", "response_status", "lease_owner",
    "lease_expires_at",
    "settled_by_hand", "settled_note", "cursor",
}  # fmt: skip
SHOW_EXTRA_FIELDS = {
    "updated_at", "fingerprint", "request_headers", "request_body", "request_body_encoding",
    "response_headers", "response_body", "response_body_encoding",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_waiting() -> Iterator[None]:
    with samekey.set_testing(True):
        yield


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*argv: str, stdin: io.StringIO | None = None) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err, stdin=stdin or io.StringIO())
    return Result(code, out.getvalue(), err.getvalue())


def run_process(
    *argv: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "samekey", *argv],
        capture_output=True, text=True, timeout=60, env=environ, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def pending_op(
    journal_path: Path, operation: str, url: str, body: dict[str, object], **kw: object
) -> str:
    """Leave ``operation`` pending (its one attempt got a 503); returns its key."""
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(503)

    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(
        journal=journal_path, policy=policy, transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(url, operation=operation, json=body, **kw)  # type: ignore[arg-type]
    return keys[0]


def held_elsewhere(journal_path: Path, operation: str, lease: float) -> None:
    """Mark pending ``operation`` as being executed by another process, for ``lease`` seconds."""
    with samekey.Journal(journal_path) as journal:
        r = journal.get(operation)
        assert r is not None
        intent = Intent(
            r.operation,
            r.key,
            r.key_header,
            r.method,
            r.url,
            r.fingerprint,
            r.request_headers,
            r.request_body,
        )
        assert (
            journal.claim(intent, "another-host/123/scope/tag-1", lease, time.time()).status
            == "claimed"
        )


def completed_op(journal_path: Path, operation: str) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(201, json={"id": "ch_x"}))
    with samekey.Client(journal=journal_path, transport=transport) as client:
        client.post("https://pay.test/charges", operation=operation, json={"amount": 5})


# -- list / show ------------------------------------------------------------------------


def test_list_and_show_read_a_journal_the_user_cannot_write(
    journal_path: Path, unprivileged: list[str]
) -> None:
    key = pending_op(journal_path, "inv-1", "https://pay.test/charges", {"amount": 1})
    completed_op(journal_path, "inv-2")
    folder = journal_path.parent
    journal_path.chmod(0o444)
    folder.chmod(0o555)  # as on a read-only mount: no -shm can be created beside the file
    before = sorted(p.name for p in folder.iterdir()), journal_path.read_bytes()
    try:
        listed = run_process(
            "list", "--all", "--json", "--journal", str(journal_path), prefix=unprivileged
        )
        shown = run_process("show", "inv-1", "--journal", str(journal_path), prefix=unprivileged)
        after = sorted(p.name for p in folder.iterdir()), journal_path.read_bytes()
    finally:
        folder.chmod(0o700)
    assert listed.returncode == 0, listed.stderr
    assert {r["operation"]: r["state"] for r in json.loads(listed.stdout)} == {
        "inv-1": "pending",
        "inv-2": "completed",
    }
    assert shown.returncode == 0 and key in shown.stdout, shown.stderr
    assert after == before, "reading wrote nothing"


def test_reading_is_refused_when_recent_writes_are_out_of_reach(
    journal_path: Path, unprivileged: list[str]
) -> None:
    if not unprivileged:
        pytest.skip(
            "the journal's owner can always read its own -wal: needs root to play a second user"
        )
    with samekey.Journal(
        journal_path, durability="process"
    ) as live:  # a running service: its writes are in -wal
        pending_op(journal_path, "inv-1", "https://pay.test/charges", {"amount": 1})
        Path(f"{journal_path}-shm").chmod(0o000)
        Path(f"{journal_path}-wal").chmod(0o000)
        journal_path.parent.chmod(0o555)
        try:
            result = run_process("list", "--journal", str(journal_path), prefix=unprivileged)
        finally:
            journal_path.parent.chmod(0o700)
            Path(f"{journal_path}-shm").chmod(0o600)
            Path(f"{journal_path}-wal").chmod(0o600)
        assert live.get("inv-1") is not None
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert "journal.sqlite3-wal holds writes not yet in the main file" in result.stderr
    assert "Run as the journal's owner" in result.stderr


def test_list_json_is_valid_and_has_the_documented_fields(journal_path: Path) -> None:
    key = pending_op(journal_path, "inv-1", "https://pay.test/charges", {"amount": 1})
    completed_op(journal_path, "inv-2")
    result = run("list", "--json", "--journal", str(journal_path))
    assert result.code == 0 and result.err == ""
    [record] = json.loads(result.out)
    assert set(record) == LIST_FIELDS
    assert record["operation"] == "inv-1" and record["state"] == "pending" and record["key"] == key
    assert record["method"] == "POST" and record["url"] == "https://pay.test/charges"
    assert (
        record["attempts"] == 1
        and record["last_error"] == "HTTP 503"
        and record["completed_at"] is None
    )
    assert 0 <= record["age_seconds"] < 60 and record["created_at"].endswith("+00:00")

    everything = json.loads(run("list", "--all", "--json", "--journal", str(journal_path)).out)
    assert [(r["operation"], r["state"], r["response_status"]) for r in everything] == [
        ("inv-1", "pending", None),
        ("inv-2", "completed", 201),
    ]


def test_list_table_shows_the_columns_users_need(journal_path: Path) -> None:
    key = pending_op(journal_path, "order-9/charge", "https://pay.test/charges", {"amount": 1})
    completed_op(journal_path, "order-8/charge")
    result = run("list", "--journal", str(journal_path))
    assert result.code == 0
    header, row = result.out.splitlines()
    assert header.split() == [
        "OPERATION",
        "METHOD",
        "URL",
        "KEY",
        "AGE",
        "ATTEMPTS",
        "LAST",
        "ERROR",
    ]
    assert row.split() == [
        "order-9/charge",
        "POST",
        "https://pay.test/charges",
        key,
        "0s",
        "1",
        "HTTP",
        "503",
    ]
    all_rows = run("list", "--all", "--journal", str(journal_path)).out.splitlines()
    assert "STATE" in all_rows[0] and any("order-8/charge  done 201" in line for line in all_rows)


def test_show_and_resume_handle_non_ascii_header_values(
    journal_path: Path, server: PaymentServer
) -> None:
    pending_op(
        journal_path,
        "inv-3",
        f"{server.url}/charges",
        {"amount": 3},
        headers={"X-Customer": "José".encode()},
    )
    disposition = 'attachment; filename="reçu-€.pdf"'
    answer = httpx.Response(201, headers=[(b"Content-Disposition", disposition.encode())], json={})
    with samekey.Client(
        journal=journal_path, transport=httpx.MockTransport(lambda r: answer)
    ) as client:
        client.post("https://pay.test/charges", operation="inv-4", json={"amount": 4})
    assert (
        "  x-customer: José\n" in run("show", "inv-3", "--journal", str(journal_path)).out
    )  # as text, not bytes
    data = json.loads(run("show", "inv-4", "--json", "--journal", str(journal_path)).out)
    assert ["content-disposition", disposition] in data["response_headers"]
    resumed = run("resume", "inv-3", "--journal", str(journal_path))
    assert resumed.code == 0, resumed.err  # it raised UnicodeEncodeError before
    assert server.charge_count() == 1


def test_list_of_an_empty_journal(journal_path: Path) -> None:
    samekey.Journal(journal_path).close()
    assert (
        run("list", "--journal", str(journal_path)).out
        == f"no pending operations in {journal_path}\n"
    )
    assert json.loads(run("list", "--json", "--journal", str(journal_path)).out) == []


def test_show_prints_the_whole_record_with_the_stored_response(journal_path: Path) -> None:
    completed_op(journal_path, "inv-2")
    text = run("show", "inv-2", "--journal", str(journal_path))
    assert text.code == 0
    assert "state:            completed" in text.out and '{"amount":5}' in text.out
    assert "response status:  201" in text.out and '{"id":"ch_x"}' in text.out
    data = json.loads(run("show", "inv-2", "--json", "--journal", str(journal_path)).out)
    assert set(data) == LIST_FIELDS - {"cursor"} | SHOW_EXTRA_FIELDS
    assert (
        json.loads(data["response_body"]) == {"id": "ch_x"}
        and data["response_body_encoding"] == "utf-8"
    )
    assert ["content-type", "application/json"] in data["request_headers"]
    missing = run("show", "nope", "--journal", str(journal_path))
    assert (
        missing.code == 2
        and missing.err
        == f"samekey: error: operation 'nope' is not in the journal {journal_path}\n"
    )


# -- resume -----------------------------------------------------------------------------


def test_resume_one_operation_against_the_server(journal_path: Path, server: PaymentServer) -> None:
    key = pending_op(journal_path, "inv-1", f"{server.url}/charges", {"amount": 100})
    result = run("resume", "inv-1", "--journal", str(journal_path))
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"[1/1] inv-1: HTTP 201 (key {key}, attempt 2)",
        "resumed 1 operation(s): 1 completed now, 0 already completed, 0 failed",
    ]
    assert server.keys_seen() == [key] and server.charge_count() == 1
    again = run("resume", "inv-1", "--journal", str(journal_path))
    assert again.code == 0 and "already completed, HTTP 201 (replayed, nothing sent)" in again.out
    assert server.keys_seen() == [key]


def test_resume_all_reports_each_operation_and_exits_1_when_some_failed(
    journal_path: Path, server: PaymentServer
) -> None:
    k1 = pending_op(journal_path, "b/1", f"{server.url}/charges", {"amount": 1})
    pending_op(
        journal_path, "b/2", "http://127.0.0.1:9/charges", {"amount": 2}
    )  # nothing listens on port 9
    k3 = pending_op(journal_path, "b/3", f"{server.url}/charges", {"amount": 3})
    result = run("resume", "--all", "--journal", str(journal_path))
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].startswith("[1/3] b/1: HTTP 201") and lines[2].startswith("[3/3] b/3: HTTP 201")
    assert lines[1].startswith("[2/3] b/2: FAILED: operation 'b/2': gave up after")
    assert lines[-1] == "resumed 3 operation(s): 2 completed now, 0 already completed, 1 failed"
    assert sorted(server.keys_seen()) == sorted([k1, k3])
    assert [r.operation for r in samekey.Journal(journal_path).pending()] == ["b/2"]


def test_resume_of_a_declined_charge_says_refused_and_exits_1(
    journal_path: Path, server: PaymentServer
) -> None:
    # a script runs `samekey resume --all && mark_orders_paid`: a declined card must stop it
    key = pending_op(journal_path, "order 7", f"{server.url}/charges", {"amount": 7})
    ok = pending_op(journal_path, "order 8", f"{server.url}/charges", {"amount": 8})
    server.decline = lambda payload: 402 if payload["amount"] == 7 else None
    result = run("resume", "--all", "--journal", str(journal_path))
    assert result.code == 1, result.out
    assert result.out.splitlines() == [
        f"[1/2] order 7: REFUSED: HTTP 402 (key {key}); a definitive answer: the "
        "operation is completed "
        "and will not be retried. `samekey show 'order 7'` has the answer",
        f"[2/2] order 8: HTTP 201 (key {ok}, attempt 2)",
        "resumed 2 operation(s): 1 completed now, 0 already completed, 0 failed, 1 "
        "refused by the server",
    ]
    assert samekey.Journal(journal_path).pending() == []  # definitive: nothing is left to resume
    again = run("resume", "order 7", "--journal", str(journal_path))
    assert (
        again.code == 1
        and "REFUSED: HTTP 402 (replayed from the journal, nothing sent)" in again.out
    )
    assert again.out.splitlines()[-1].endswith("0 failed, 1 refused by the server")
    assert sorted(server.keys_seen()) == sorted([key, ok])  # the re-run sent nothing


def test_resume_takes_the_retry_limits_of_this_run(journal_path: Path) -> None:
    pending_op(
        journal_path, "down", "http://127.0.0.1:9/charges", {"amount": 2}
    )  # nothing listens on port 9
    once = run("resume", "down", "--max-attempts", "1", "--journal", str(journal_path))
    assert (
        once.code == 1
        and "gave up after 2 attempt(s)" in once.out
        and "max_attempts reached" in once.out
    )
    default = run("resume", "down", "--journal", str(journal_path))
    assert (
        default.code == 1 and "gave up after 10 attempt(s)" in default.out
    )  # 2 earlier + 8 of the default policy
    bad = run_process("resume", "down", "--deadline", "0s", "--journal", str(journal_path))
    assert (
        bad.returncode == 2 and "argument --deadline: '0s' is not a positive duration" in bad.stderr
    )
    assert bad.stdout == ""
    usage = run_process("resume", "down", "--max-attempts", "0", "--journal", str(journal_path))
    assert usage.returncode == 2 and "'0' is not a whole number of at least 1" in usage.stderr


def test_resume_without_credentials_says_how_to_pass_them(
    journal_path: Path, server: PaymentServer
) -> None:
    key = pending_op(journal_path, "auth", f"{server.url}/charges", {"amount": 3})
    server.require_auth = "Bearer sk_test"
    refused = run("resume", "auth", "--journal", str(journal_path))
    assert (
        refused.code == 1
        and "HTTP 401, credentials refused" in refused.out
        and "-H 'Authorization" in refused.out
    )
    assert (
        refused.out.splitlines()[-1]
        == "resumed 1 operation(s): 0 completed now, 0 already completed, 1 failed"
    )
    done = run(
        "resume", "auth", "-H", "Authorization: Bearer sk_test", "--journal", str(journal_path)
    )
    assert done.code == 0 and f"HTTP 201 (key {key}" in done.out, done.out
    assert server.charge_count() == 1


def test_resume_base_url_and_headers(journal_path: Path, server: PaymentServer) -> None:
    key = pending_op(journal_path, "moved", "http://payments.invalid/charges?v=2", {"amount": 7})
    header = "Authorization: Bearer sk_test"
    result = run(
        "resume", "moved", "--base-url", server.url, "-H", header, "--journal", str(journal_path)
    )
    assert result.code == 0, result.out + result.err
    assert server.keys_seen() == [key]
    assert server.requests()[0]["path"] == "/charges?v=2"
    assert server.charges()[0]["amount"] == 7
    record = samekey.Journal(journal_path).get("moved")
    assert (
        record is not None and record.url == "http://payments.invalid/charges?v=2"
    )  # identity unchanged


def test_resume_refuses_an_expired_key_and_sends_nothing(
    journal_path: Path, server: PaymentServer
) -> None:
    url = f"{server.url}/charges"
    fingerprint = hashlib.sha256(
        f"POST\n{url}\n{{}}".encode()
    ).hexdigest()  # as the client computes it
    with samekey.Journal(journal_path) as journal:
        intent = Intent("old", "k-old", "Idempotency-Key", "POST", url, fingerprint, (), b"{}")
        journal.claim(intent, "dead-process", 60.0, time.time() - 2 * 3600)
    result = run("resume", "--all", "--key-ttl", "1h", "--journal", str(journal_path))
    assert result.code == 1
    assert (
        "[1/1] old: FAILED: operation 'old' is pending with key k-old, created 2.0 h ago"
        in result.out
    )
    assert "samekey forget old" in result.out
    assert server.keys_seen() == []


SHELL_NAMES = ["inv 7; touch PWNED $(touch PWNED2) 'q' \"d\" $HOME", "-inv-8 *"]


@pytest.mark.parametrize("name", SHELL_NAMES)
def test_suggested_commands_quote_the_operation_name_for_the_shell(
    journal_path: Path, tmp_path: Path, name: str
) -> None:
    # `samekey forget inv 7; touch PWNED` pasted into a shell forgot 'inv' and ran `touch PWNED`
    pending_op(
        journal_path, name, "http://127.0.0.1:9/charges", {"amount": 7}
    )  # nothing listens on port 9
    failed = run("resume", "--max-attempts", "1", "--journal", str(journal_path), "--", name)
    assert failed.code == 1
    (resume,) = re.findall(r"`(samekey resume [^`]*)`", failed.out)
    assert shlex.split(resume)[0:2] == ["samekey", "resume"] and shlex.split(resume)[-1] == name
    with samekey.Journal(journal_path) as journal:  # the key outlived the server's key lifetime
        journal.forget(name)
        intent = Intent(
            name, "k-old", "Idempotency-Key", "POST", "http://127.0.0.1:9/charges", "fp", (), b"{}"
        )
        journal.claim(intent, "dead-process", 60.0, time.time() - 2 * 3600)
    expired = run("resume", "--key-ttl", "1h", "--journal", str(journal_path), "--", name)
    (forget,) = re.findall(r"`(samekey forget [^`]*)`", expired.out)
    # pasted into a shell (the journal given before the
    # subcommand): it names that operation, runs nothing else
    pasted = forget.replace(
        "samekey", f"{shlex.quote(sys.executable)} -m samekey --journal {journal_path}", 1
    )
    environ = {**os.environ, "PYTHONPATH": str(SRC)}
    shell = subprocess.run(
        ["sh", "-c", pasted], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=environ,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (
        shell.returncode == 2
        and f"refusing to forget {name!r} without confirmation" in shell.stderr
    )
    assert not list(tmp_path.glob("PWNED*"))


@pytest.mark.parametrize("name", [*SHELL_NAMES, "auto:9f2c", "order-42/charge"])
def test_every_suggested_command_quotes_the_operation_name(name: str) -> None:
    response = httpx.Response(201)
    messages = [
        samekey.RetriesExhausted(
            operation=name,
            key="k",
            attempts=1,
            last_response=None,
            last_exception=None,
            reason="deadline",
        ),
        samekey.OperationMismatch(name, "different body", pending=True),
        samekey.OperationMismatch(name, "different body"),
        samekey.KeyExpired(name, "k", 7200.0, 3600.0),
        samekey.AnswerNotRecorded(
            "j.sqlite3", "disk full", operation=name, key="k", response=response
        ),
    ]
    for message in map(str, messages):
        commands = re.findall(r"`(samekey (?:resume|forget) [^`]*)`", message)
        assert commands, message
        for command in commands:
            assert shlex.split(command)[-1] == name, command
    if name == "order-42/charge":  # a plain name stays as it was
        assert "`samekey resume order-42/charge`" in str(messages[0])


def test_resume_usage_errors(journal_path: Path) -> None:
    samekey.Journal(journal_path).close()
    for argv in (["resume"], ["resume", "x", "--all"], ["resume", "x", "--prefix", "a"]):
        result = run(*argv, "--journal", str(journal_path))
        assert (
            result.code == 2
            and result.err.startswith("samekey: error: ")
            and result.err.count("\n") == 1
        )
    unknown = run("resume", "ghost", "--journal", str(journal_path))
    assert (
        unknown.code == 2
        and "'ghost' is not in the journal" in unknown.err
        and "nothing was sent" in unknown.err
    )
    assert run("resume", "--all", "--journal", str(journal_path)).out.startswith(
        "nothing to resume"
    )


# -- forget / purge ---------------------------------------------------------------------


def test_forget_refuses_without_a_terminal_or_yes(journal_path: Path) -> None:
    key = pending_op(journal_path, "inv-1", "https://pay.test/charges", {"amount": 1})
    refused = run("forget", "inv-1", "--journal", str(journal_path))
    assert refused.code == 2
    assert refused.err == (
        "samekey: error: refusing to forget 'inv-1' without confirmation: stdin is not "
        "a terminal; pass --yes\n"
    )
    record = samekey.Journal(journal_path).get("inv-1")
    assert record is not None and record.pending and record.key == key


def test_forget_asks_on_a_terminal(journal_path: Path) -> None:
    key = pending_op(journal_path, "inv-1", "https://pay.test/charges", {"amount": 1})
    kept = run("forget", "inv-1", "--journal", str(journal_path), stdin=FakeTty("n\n"))
    assert kept.code == 1 and "PENDING with key" in kept.err and "NEW key" in kept.err
    assert samekey.Journal(journal_path).get("inv-1") is not None
    gone = run("forget", "inv-1", "--journal", str(journal_path), stdin=FakeTty("y\n"))
    assert gone.code == 0 and gone.out == f"forgot 'inv-1' (key {key})\n"
    assert samekey.Journal(journal_path).get("inv-1") is None


def test_forget_yes(journal_path: Path) -> None:
    completed_op(journal_path, "inv-2")
    assert run("forget", "inv-2", "--yes", "--journal", str(journal_path)).code == 0
    assert samekey.Journal(journal_path).get("inv-2") is None
    again = run("forget", "inv-2", "--yes", "--journal", str(journal_path))
    assert again.code == 2 and "not in the journal" in again.err


def test_purge_keeps_pending_records(journal_path: Path) -> None:
    day = 86400.0
    now = time.time()
    with samekey.Journal(journal_path) as journal:
        for name, age, done in [
            ("old-done", 9 * day, True),
            ("new-done", 1 * day, True),
            ("old-pending", 30 * day, False),
        ]:
            journal.claim(
                Intent(name, f"k-{name}", "Idempotency-Key", "POST", "u", "f", (), b""),
                "me",
                60,
                now - age,
            )
            if done:
                journal.complete(name, "me", 1, 201, [], b"{}", now - age)
    result = run("purge", "--older-than", "7d", "--journal", str(journal_path))
    assert result.code == 0
    assert (
        result.out == "purged 1 completed record(s) older than 7.0d; 1 pending record(s) kept "
        "(pending records are never purged)\n"
    )
    remaining = {r.operation for r in samekey.Journal(journal_path).records()}
    assert remaining == {"new-done", "old-pending"}
    assert run("purge", "--older-than", "1s", "--journal", str(journal_path)).out.startswith(
        "purged 1 "
    )
    assert [r.operation for r in samekey.Journal(journal_path).records()] == ["old-pending"]


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("15m", 900), ("1.5h", 5400), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("option", "example"),
    [
        ("--key-ttl=0s", "24h"),
        ("--key-ttl=0.0h", "24h"),
        ("--key-ttl=-1h", "24h"),
        ("--deadline=0m", "30s"),
        ("--deadline=-30s", "30s"),
    ],
)
def test_a_zero_or_negative_duration_is_refused_with_an_example(
    journal_path: Path, option: str, example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --key-ttl 0s ended in "unexpected ValueError: key_ttl must be a positive duration, got 0.0
    # (run with --debug ...)", and only once a pending operation was found; --deadline 0s named no
    # option
    pending_op(journal_path, "inv-18", "http://127.0.0.1:9/charges", {"amount": 18})
    with pytest.raises(SystemExit) as usage:
        run("resume", "--all", option, "--journal", str(journal_path))
    assert usage.value.code == 2
    flag, text = option.split("=")
    err = capsys.readouterr().err
    assert (
        f"argument {flag}: {text!r} is not a positive duration: it must be more than 0, "
        f"e.g. {example}" in err
    )
    assert "unexpected" not in err
    assert samekey.Journal(journal_path).get("inv-18").attempts == 1  # type: ignore[union-attr]


def test_purge_older_than_takes_zero_but_not_a_negative_duration(journal_path: Path) -> None:
    completed_op(journal_path, "inv-19")
    negative = run_process("purge", "--older-than=-7d", "--journal", str(journal_path))
    assert negative.returncode == 2
    assert (
        "argument --older-than: '-7d' is negative: a duration must be 0 or more, e.g. 7d"
        in negative.stderr
    )
    assert samekey.Journal(journal_path).get("inv-19") is not None
    everything = run(
        "purge", "--older-than", "0s", "--journal", str(journal_path)
    )  # every completed record
    assert everything.code == 0 and everything.out.startswith("purged 1 completed record(s)")


# -- as a process: exit codes, one-line errors, --debug -------------------------------------


def test_python_m_samekey_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = run_process("list", "--journal", str(tmp_path / "nope.sqlite3"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert (
        missing.stderr
        == f"samekey: error: no journal at {tmp_path / 'nope.sqlite3'} (pass --journal PATH "
        "or set $SAMEKEY_JOURNAL)\n"
    )
    assert not (tmp_path / "nope.sqlite3").exists()

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not sqlite" * 100)
    broken = run_process("list", "--journal", str(junk))
    assert (
        broken.returncode == 2
        and broken.stderr.count("\n") == 1
        and "Traceback" not in broken.stderr
    )
    assert broken.stderr.startswith(
        f"samekey: error: journal {junk}: it is not a readable SQLite database"
    )
    debug = run_process("--debug", "list", "--journal", str(junk))
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "JournalError" in debug.stderr

    bad = run_process("purge", "--older-than", "7 weeks", "--journal", str(junk))
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


def popen_samekey(*argv: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "samekey", *argv]
    pipe = subprocess.PIPE
    return subprocess.Popen(
        command, stdout=pipe, stderr=pipe, stdin=subprocess.DEVNULL, env=environ
    )


def test_a_reader_that_stops_early_ends_samekey_quietly_with_141(tmp_path: Path) -> None:
    # `samekey list | head -1` printed "samekey: error:
    # unexpected BrokenPipeError: [Errno 32] Broken pipe"
    journal_path = tmp_path / "many.sqlite3"
    with samekey.Journal(
        journal_path
    ) as journal:  # ~1.2 MB of table: more than any pipe buffer holds
        for n in range(2000):
            name = f"batch-7/op-{n:04d}-" + "x" * 500
            intent = Intent(
                name, f"k-{n}", "Idempotency-Key", "POST", "https://pay.test/c", "fp", (), b"{}"
            )
            journal.claim(intent, "dead-process", 60.0, time.time())
    head = popen_samekey("list", "--journal", str(journal_path))
    assert head.stdout is not None
    first = head.stdout.readline()
    head.stdout.close()  # as `head -1` exits
    _, err = head.communicate(timeout=60)
    assert first.startswith(b"OPERATION ")
    assert (head.returncode, err) == (141, b"")
    for argv in (["list", "--all"], ["list", "--json"], ["show", "batch-7/op-0001-" + "x" * 500]):
        gone = popen_samekey(
            *argv, "--journal", str(journal_path)
        )  # the reader gone before a byte is written
        assert gone.stdout is not None
        gone.stdout.close()
        _, err = gone.communicate(timeout=60)
        assert (gone.returncode, err) == (141, b""), argv


def test_ctrl_c_ends_samekey_with_130_and_one_line(
    journal_path: Path, server: PaymentServer
) -> None:
    key = pending_op(journal_path, "held", f"{server.url}/charges", {"amount": 22})
    held_elsewhere(journal_path, "held", 60.0)
    resume = popen_samekey("resume", "held", "--journal", str(journal_path))
    assert resume.stderr is not None
    assert b"waiting for its outcome" in resume.stderr.readline()
    resume.send_signal(signal.SIGINT)
    out, err = resume.communicate(timeout=60)
    assert (resume.returncode, err, out) == (130, b"samekey: interrupted\n", b"")
    assert server.keys_seen() == []
    record = samekey.Journal(journal_path).get("held")
    assert record is not None and record.pending and record.key == key


def test_default_journal_comes_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env-journal.sqlite3"
    completed_op(path, "from-env")
    result = run_process("list", "--all", "--json", env={"SAMEKEY_JOURNAL": str(path)})
    assert result.returncode == 0, result.stderr
    assert [r["operation"] for r in json.loads(result.stdout)] == ["from-env"]


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--journal", ""],
        ["--journal", "", "list"],
        ["show", "inv-21", "--journal", " "],
        ["forget", "inv-21", "--yes", "--journal", ""],
        ["purge", "--older-than", "0s", "--journal", ""],
    ],
)
def test_an_empty_journal_argument_is_refused_not_taken_for_the_default(
    tmp_path: Path, argv: list[str]
) -> None:
    # `--journal "$JOURNAL"` with the variable unset:
    # `forget --yes` forgot from $SAMEKEY_JOURNAL's journal
    default = tmp_path / "default-journal.sqlite3"
    completed_op(default, "inv-21")
    result = run_process(*argv, env={"SAMEKEY_JOURNAL": str(default)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith(
        "error: argument --journal: the journal path is empty: give the journal file or "
        "a postgresql:// DSN, "
        "e.g. --journal ./payments.sqlite3, or leave --journal out to use "
        "$SAMEKEY_JOURNAL or the default journal"
    )
    assert samekey.Journal(default).get("inv-21") is not None


def test_resume_all_leaves_unnamed_operations_alone_so_a_rerun_is_not_charged_twice(
    journal_path: Path, server: PaymentServer
) -> None:
    # A POST without operation= gave up while the API was unreachable ...
    policy = samekey.RetryPolicy(max_attempts=1)
    with samekey.Client(journal=journal_path, policy=policy) as client:
        with pytest.raises(
            samekey.RetriesExhausted,
            match=r"without operation=, so running the code again makes a NEW",
        ):
            client.post(
                "http://127.0.0.1:9/charges", json={"order": 42}
            )  # nothing listens on port 9
    (unnamed,) = samekey.Journal(journal_path, read_only=True).pending()
    assert unnamed.operation.startswith("auto:")
    # ... the job queue ran the same code again: a new unnamed operation, charged
    with samekey.Client(journal=journal_path) as client:
        assert client.post(f"{server.url}/charges", json={"order": 42}).status_code == 201
    named_key = pending_op(journal_path, "inv-7", f"{server.url}/charges", {"amount": 7})
    result = run("resume", "--all", "--journal", str(journal_path))
    assert result.code == 1  # something still needs a decision
    assert f"skipped {unnamed.operation}: an unnamed operation" in result.out
    assert result.out.splitlines()[-1].endswith(
        "1 completed now, 0 already completed, 0 failed, 1 unnamed skipped"
    )
    assert (
        server.charge_count() == 2 and named_key in server.keys_seen()
    )  # order 42 once, inv-7 once
    assert unnamed.key not in server.keys_seen()
    with samekey.Client(journal=journal_path, base_url=server.url) as client:
        assert [r.operation for r in client.resume_pending()] == []  # the API leaves it alone too
        assert [r.operation for r in client.resume_pending(prefix="auto:")] == [
            unnamed.operation
        ]  # named: sent


def test_resume_refuses_a_bad_base_url_as_a_usage_error(journal_path: Path) -> None:
    pending_op(journal_path, "inv-9", "http://127.0.0.1:9/charges", {"amount": 9})
    result = run("resume", "inv-9", "--base-url", "ftp://example", "--journal", str(journal_path))
    assert (
        result.code == 2 and "--base-url: base URL must look like http://host[:port]" in result.err
    )
    assert "unexpected" not in result.err


@pytest.mark.parametrize("base_url", ["", "  "])
def test_resume_refuses_an_empty_base_url_instead_of_sending_to_the_recorded_one(
    journal_path: Path, server: PaymentServer, base_url: str
) -> None:
    # `--base-url "$STAGING_URL"` with the variable unset
    # was taken as no --base-url: sent to the recorded origin
    pending_op(journal_path, "inv-20", f"{server.url}/charges", {"amount": 20})
    result = run_process("resume", "inv-20", "--base-url", base_url, "--journal", str(journal_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "samekey: error: --base-url is empty: give the origin to send to, e.g. "
        "https://api.example.com "
        "(or leave --base-url out to send to the recorded URL); nothing was sent\n"
    )
    assert server.keys_seen() == []
    assert run("resume", "--all", "--base-url", base_url, "--journal", str(journal_path)).code == 2
    assert server.keys_seen() == []


def test_resume_all_with_only_unnamed_operations_pending_says_so(journal_path: Path) -> None:
    with samekey.Client(journal=journal_path, policy=samekey.RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(samekey.RetriesExhausted):
            client.post(
                "http://127.0.0.1:9/charges", json={"order": 43}
            )  # nothing listens on port 9
    result = run("resume", "--all", "--journal", str(journal_path))
    assert result.code == 1 and "no pending operations" not in result.out
    assert "nothing resumed: only unnamed operations are pending, skipped above" in result.out


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:9/payments-api",
        "http://127.0.0.1:9/v2/",
        "http://127.0.0.1:9/?tenant=7",
        "http://127.0.0.1:9#x",
    ],
)
def test_resume_refuses_a_base_url_whose_path_or_query_would_be_dropped(
    journal_path: Path, base_url: str
) -> None:
    # the recorded path and query are sent: a prefix given
    # here would silently not be (a POST to another endpoint)
    pending_op(journal_path, "inv-10", "http://127.0.0.1:9/charges", {"amount": 10})
    result = run("resume", "inv-10", "--base-url", base_url, "--journal", str(journal_path))
    assert result.code == 2, result.out + result.err
    assert "--base-url" in result.err and "nothing was sent" in result.err.lower()
    assert samekey.Journal(journal_path).get("inv-10").attempts == 1  # type: ignore[union-attr]


def test_resume_refuses_credentials_in_the_base_url_without_echoing_them(
    journal_path: Path,
) -> None:
    pending_op(journal_path, "inv-11", "http://127.0.0.1:9/charges", {"amount": 11})
    result = run(
        "resume",
        "inv-11",
        "--base-url",
        "http://ops:hunter2@127.0.0.1:9",
        "--journal",
        str(journal_path),
    )
    assert result.code == 2 and "-H" in result.err
    assert "hunter2" not in result.out + result.err


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:9", "http://127.0.0.1:9/", "https://[::1]:8443", "http://[::1]"]
)
def test_base_url_origins_are_accepted(base_url: str) -> None:
    assert RetargetTransport.parse_base_url(base_url).host in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    "argument",
    ["Authorization Bearer sk_live_S3CRET", "sk_live_S3CRET", " Authorization: sk_live_S3CRET"],
)
def test_a_malformed_header_argument_is_refused_without_echoing_its_value(
    journal_path: Path, argument: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pending_op(journal_path, "inv-12", "http://127.0.0.1:9/charges", {"amount": 12})
    with pytest.raises(SystemExit) as exit_info:
        run("resume", "inv-12", "-H", argument, "--journal", str(journal_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "-H" in err and "Name: value" in err
    assert "S3CRET" not in err


@pytest.mark.parametrize(
    ("argument", "name"),
    [
        ("Authorization: Bearer sk_live_S3CRET\r\nX-Evil: 1", "Authorization"),
        ("X-Api-Token: sk_live_S3CRET\nX-Team: payments", "X-Api-Token"),
        ("Authorization: Bearer sk_live_S3CRET\rX", "Authorization"),
    ],
)
def test_a_header_value_with_a_line_break_is_refused_naming_only_the_header(
    journal_path: Path,
    server: PaymentServer,
    capsys: pytest.CaptureFixture[str],
    argument: str,
    name: str,
) -> None:
    # it was sent on, and the failure printed it: "FAILED:
    # Illegal header value b'Bearer sk_live_S3CRET\r\n...'"
    pending_op(journal_path, "inv-17", f"{server.url}/charges", {"amount": 17})
    with pytest.raises(SystemExit) as usage:
        run("resume", "inv-17", "-H", argument, "--journal", str(journal_path))
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"argument -H/--header: the value of header {name} holds a line break (value not shown"
        in err
    )
    assert "give each header its own -H" in err
    assert "S3CRET" not in err and "payments" not in err
    assert server.keys_seen() == []
    with pytest.raises(SystemExit):  # a line break in the name: not a header, nothing echoed either
        run(
            "resume", "inv-17", "-H", "X-Api\nToken: sk_live_S3CRET", "--journal", str(journal_path)
        )
    err = capsys.readouterr().err
    assert "not a header (value not shown" in err and "S3CRET" not in err


def test_resume_sends_a_non_ascii_header_argument_as_utf8(
    journal_path: Path, server: PaymentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what the terminal typed, as curl sends it (httpx would encode a str as ASCII and fail)
    sent: list[bytes | None] = []
    handle = httpx.HTTPTransport.handle_request

    def spy(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(dict(request.headers.raw).get(b"X-Customer-Name"))
        return handle(transport, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", spy)
    pending_op(journal_path, "inv-13", f"{server.url}/charges", {"amount": 13})
    result = run("resume", "inv-13", "-H", "X-Customer-Name: Zoë €", "--journal", str(journal_path))
    assert result.code == 0, result.out + result.err
    assert sent == ["Zoë €".encode()] and server.charge_count() == 1


DSN_IN_ENV = "postgresql://pay:S3CRETPW@127.0.0.1:1/payments?connect_timeout=2"


def test_an_unreachable_dsn_in_samekey_journal_is_said_so_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it was read as a relative file path: 'no journal at /cwd/postgresql:/pay:S3CRETPW@...' (the
    # password printed), and a Client() made a local SQLite journal there, shared with no other
    # replica
    monkeypatch.setenv("SAMEKEY_JOURNAL", DSN_IN_ENV)
    monkeypatch.chdir(tmp_path)
    result = run("list")
    assert result.code == 2
    assert "no journal at" not in result.err and "S3CRETPW" not in result.err
    with pytest.raises(samekey.JournalError) as failure:
        samekey.Client().close()
    assert "S3CRETPW" not in str(failure.value)
    with pytest.raises(samekey.JournalError, match="SAMEKEY_JOURNAL") as refused:
        samekey.Journal()  # the SQLite journal cannot open a DSN: said so, not made a file of it
    assert "S3CRETPW" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # no SQLite file named after the DSN


def test_resume_reads_headers_from_a_file_keeping_the_credential_out_of_the_command_line(
    journal_path: Path, server: PaymentServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sent: list[dict[bytes, bytes]] = []
    handle = httpx.HTTPTransport.handle_request

    def spy(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(dict(request.headers.raw))
        return handle(transport, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", spy)
    headers = tmp_path / "headers"
    headers.write_text(
        "# the on-call key\nAuthorization: Bearer sk_live_from_file\n\nX-Team: payments\n"
    )
    pending_op(journal_path, "inv-14", f"{server.url}/charges", {"amount": 14})
    result = run("resume", "inv-14", "-H", f"@{headers}", "--journal", str(journal_path))
    assert result.code == 0, result.out + result.err
    assert (
        sent[0][b"Authorization"] == b"Bearer sk_live_from_file"
        and sent[0][b"X-Team"] == b"payments"
    )
    assert server.charge_count() == 1


def test_a_header_file_saved_with_a_bom_and_crlf_is_read(tmp_path: Path) -> None:
    # Windows PowerShell 5.1 (Set-Content/Out-File -Encoding UTF8) and older Notepad start a UTF-8
    # file with a BOM: its first header was refused as "line 1 is not a header", though it is one
    headers = tmp_path / "headers"
    headers.write_bytes(
        b"\xef\xbb\xbfAuthorization: Bearer sk_live_from_file\r\nX-Team: payments\r\n"
    )
    args = cli.build_parser().parse_args(["resume", "inv-16", "-H", f"@{headers}"])
    assert args.headers == [
        (b"Authorization", b"Bearer sk_live_from_file"),
        (b"X-Team", b"payments"),
    ]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read the header file"),
        ("Authorization Bearer sk_live_secret\n", "line 1 is not a header (value not shown"),
        ("# the key goes here\n\n", "holds no header"),
    ],
)
def test_a_bad_header_file_is_refused_without_showing_its_content(
    journal_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    words: str,
) -> None:
    headers = tmp_path / "headers"
    if content is not None:
        headers.write_text(content)
    with pytest.raises(SystemExit) as usage:
        run("resume", "inv-15", "-H", f"@{headers}", "--journal", str(journal_path))
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "sk_live_secret" not in err


def test_show_and_list_escape_control_characters_from_the_server(journal_path: Path) -> None:
    # an answer or a header carrying ESC sequences (clear the screen, write the clipboard) or a
    # bidi override must reach the operator's terminal as text, not run
    evil = "ok\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u202eevil"
    transport = httpx.MockTransport(
        lambda r: httpx.Response(201, headers={"X-Note": "\x1b[31mred"}, text=evil)
    )
    with samekey.Client(journal=journal_path, transport=transport) as client:
        client.post("https://pay.test/c", json={}, operation="op-\x1b[8m")
    shown = run("show", "op-\x1b[8m", "--journal", str(journal_path))
    listed = run("list", "--all", "--journal", str(journal_path))
    for result in (shown, listed):
        assert result.code == 0, result.err
        assert "\x1b" not in result.out and "\u202e" not in result.out and "\x07" not in result.out
        assert "op-\\x1b[8m" in result.out
    assert "\\x1b]52;c;" in shown.out and "\\u202eevil" in shown.out  # the body
    assert "\\x1b[31mred" in shown.out  # the header
    as_json = json.loads(run("show", "op-\x1b[8m", "--json", "--journal", str(journal_path)).out)
    assert as_json["response_body"] == evil  # JSON keeps the exact text (escaped by JSON itself)


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "inv-\udcff"],
        ["forget", "--yes", "inv-\udcff"],
        ["resume", "inv-\udcff"],
        ["resume", "--all", "--prefix", "\udcfe"],
    ],
)
def test_an_operation_name_that_is_not_utf8_is_refused_by_name(
    journal_path: Path, argv: list[str]
) -> None:
    # `samekey show $'inv-\xff'` (bytes a Latin-1 terminal sent): "unexpected UnicodeEncodeError:
    # 'utf-8' codec can't encode character '\udcff' in position 4: surrogates not allowed" from
    # sqlite
    completed_op(journal_path, "inv-ÿ")
    result = run_process(
        *argv, "--journal", str(journal_path), env={"PYTHONUTF8": "1"}
    )  # argv: those bytes
    assert result.returncode == 2 and result.stdout == ""
    argument = "--prefix" if "--prefix" in argv else "operation"
    shown = repr(os.fsencode(argv[-1]))
    assert result.stderr.splitlines()[-1] == (
        f"samekey {argv[0]}: error: argument {argument}: {shown} is not valid UTF-8, and "
        "operation names are "
        "UTF-8 text (no journal holds this one): type the name as `samekey list --all` "
        "shows it, from a terminal "
        "set to UTF-8"
    )
    assert "Traceback" not in result.stderr and "UnicodeEncodeError" not in result.stderr
    assert samekey.Journal(journal_path).get("inv-ÿ") is not None


def test_forget_says_when_the_operation_is_being_executed_right_now(journal_path: Path) -> None:
    with samekey.Journal(journal_path) as journal:
        intent = Intent(
            "live", "k-live", "Idempotency-Key", "POST", "https://pay.test/c", "fp", (), b"{}"
        )
        journal.claim(intent, "host/123/scope/tag-1", 60.0, time.time())
    result = run("forget", "live", "--yes", "--journal", str(journal_path))
    assert result.code == 0
    assert "being executed right now by host/123/scope/tag-1" in result.err


def test_resume_says_it_waits_for_an_operation_another_process_is_executing(
    journal_path: Path, server: PaymentServer
) -> None:
    # an on-call engineer must not stare at a silent command for the length of a lease
    pending_op(journal_path, "held", f"{server.url}/charges", {"amount": 15})
    held_elsewhere(journal_path, "held", 1.5)
    result = run("resume", "held", "--journal", str(journal_path))
    assert (
        "held by another-host/123/scope/tag-1" in result.err
        and "waiting for its outcome" in result.err
    )
    assert result.code == 0, (
        result.out + result.err
    )  # its lease ran out: taken over, sent with its key
    assert server.charge_count() == 1


def test_list_reads_no_bodies(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pending_op(journal_path, "inv-big", "https://pay.test/c", {"blob": "x" * 100_000})
    bodies: list[int] = []
    list_page = samekey.Journal.list_page

    def spy(self: samekey.Journal, query: ListQuery) -> list[samekey.OperationRecord]:
        page = list_page(self, query)
        bodies.extend(len(r.request_body) for r in page)
        return page

    monkeypatch.setattr(samekey.Journal, "list_page", spy)
    listed = run("list", "--journal", str(journal_path))
    assert listed.code == 0 and "inv-big" in listed.out
    as_json = json.loads(run("list", "--json", "--journal", str(journal_path)).out)
    assert [r["operation"] for r in as_json] == ["inv-big"]
    assert bodies == [0, 0]  # read through the store's page query, without the 100 kB body

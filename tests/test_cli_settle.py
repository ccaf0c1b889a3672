"""`samekey settle`: complete a pending operation by hand (samekey._cli._settle)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import samekey
from samekey._cli._args import build_parser
from samekey._cli._settle import cmd_settle
from samekey._contract import SettleResult
from test_cli import FakeTty, completed_op, held_elsewhere, pending_op, run, run_process

URL = "https://pay.test/charges"
NOTE = "paid: ch_42 on the Stripe dashboard"


@pytest.fixture(autouse=True)
def _no_waiting() -> Iterator[None]:
    with samekey.set_testing(True):
        yield


def test_settled_by_hand_as_a_process_then_shown_never_pending_and_replayed(
    journal_path: Path,
) -> None:
    key = pending_op(journal_path, "inv-42", URL, {"amount": 42})
    j = ("--journal", str(journal_path))
    settled = run_process("settle", "inv-42", "--status", "201", "--note", NOTE, "--yes", *j)
    assert (settled.returncode, settled.stderr) == (0, ""), settled.stderr
    assert settled.stdout == (
        f"settled 'inv-42' by hand: HTTP 201 (key {key}); its code now gets that answer "
        "replayed, nothing is sent\n"
    )
    shown = run_process("show", "inv-42", *j).stdout
    assert (
        "state:            completed" in shown
        and "settled by hand:  at " in shown
        and f'note: "{NOTE}"' in shown
    )
    data = json.loads(run_process("show", "inv-42", "--json", *j).stdout)
    assert (data["settled_by_hand"], data["settled_note"], data["response_status"]) == (
        True,
        NOTE,
        201,
    )
    assert data["attempts"] == 1 and data["last_error"] == "HTTP 503"
    assert run("list", *j).out == f"no pending operations in {journal_path}\n"
    assert run("list", "--all", *j).out.splitlines()[1].split()[:3] == ["inv-42", "settled", "201"]
    planned = run("resume", "inv-42", "--dry-run", *j).out
    assert "replay: already settled by hand with HTTP 201: nothing would be sent" in planned
    assert (
        "inv-42: already settled by hand, HTTP 201 (replayed, nothing sent)"
        in run("resume", "inv-42", *j).out
    )

    def no_network(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a settled operation was sent again")

    with samekey.Client(journal=journal_path, transport=httpx.MockTransport(no_network)) as client:
        again = client.post(URL, json={"amount": 42}, operation="inv-42")  # the code, run again
    assert again.status_code == 201 and again.headers["samekey-settled"] == "by-hand"
    assert again.json() == {
        "settled_by_hand": True,
        "status": 201,
        "settled_at": data["completed_at"],
        "note": NOTE,
    }


def test_it_asks_first_showing_what_it_will_do(journal_path: Path) -> None:
    pending_op(journal_path, "inv-1", URL, {"amount": 1})
    j = ("--journal", str(journal_path))
    declined = run("settle", "inv-1", "--status", "201", *j, stdin=FakeTty("n\n"))
    assert declined.code == 1 and declined.out == "kept 'inv-1' pending\n"
    assert "operation 'inv-1' is PENDING: POST https://pay.test/charges, key " in declined.err
    assert "1 attempt(s), last error: HTTP 503" in declined.err
    assert (
        "Settling it records HTTP 201 as its final answer, by hand. It is never sent again"
        in declined.err
    )
    assert declined.err.endswith("Settle it? [y/N] ")
    assert samekey.Journal(journal_path).get("inv-1").pending  # type: ignore[union-attr]
    accepted = run(
        "settle", "inv-1", "--status", "402", "--note", "card declined", *j, stdin=FakeTty("y\n")
    )
    assert accepted.code == 0 and '(note: "card declined")' in accepted.err
    assert "HTTP 402" in accepted.out
    not_asked = run("settle", "inv-1", "--status", "201", *j)  # stdin is no terminal, and no --yes
    assert not_asked.code == 2


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unknown", "operation 'inv-9' is not in the journal "),
        ("completed", "operation 'inv-9' is already completed (HTTP 201 at "),
        ("settled", "operation 'inv-9' is already settled by hand (HTTP 201 at "),
        (
            "running",
            "operation 'inv-9' is being executed right now by "
            "another-host/123/scope/tag-1 (lease for ",
        ),
        (
            "no --yes",
            "refusing to settle 'inv-9' without confirmation: stdin is not a terminal; pass --yes",
        ),
        (
            "reserved",
            "operation 'inv-9' holds a key reserved by key_for() and no request: nothing was sent",
        ),
    ],
)
def test_it_refuses_what_it_must_not_settle_and_says_why(
    journal_path: Path, case: str, error: str
) -> None:
    if case == "completed":
        completed_op(journal_path, "inv-9")
    elif case == "reserved":
        with samekey.Client(journal=journal_path) as client:
            client.key_for("inv-9")  # and the process died before building the request
    elif case != "unknown":
        pending_op(journal_path, "inv-9", URL, {"amount": 9})
    if case == "settled":
        assert (
            run("settle", "inv-9", "--status", "201", "--yes", "--journal", str(journal_path)).code
            == 0
        )
    if case == "running":
        held_elsewhere(journal_path, "inv-9", 300)
    before = samekey.Journal(journal_path).get("inv-9")
    yes = () if case == "no --yes" else ("--yes",)
    result = run("settle", "inv-9", "--status", "201", *yes, "--journal", str(journal_path))
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(f"samekey: error: {error}") and result.err.count("\n") == 1
    assert samekey.Journal(journal_path).get("inv-9") == before  # nothing changed


def test_a_status_that_is_no_final_answer_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for status in ("503", "302", "100", "abc", "2O1"):
        with pytest.raises(SystemExit) as usage:
            build_parser().parse_args(["settle", "inv-1", "--status", status])
        assert usage.value.code == 2
        assert (
            f"argument --status: '{status}' is not a final answer: give the status the provider"
            in (capsys.readouterr().err)
        )
    assert build_parser().parse_args(["settle", "inv-1", "--status", "204"]).status == 204


def test_a_store_that_cannot_settle_says_so(journal_path: Path) -> None:
    class ReadOnlyStore:  # a JournalStore without settle (a third-party store)
        location = "redis://cache/0"

        def get(self, operation: str) -> None:
            raise AssertionError("not reached")

    args = build_parser().parse_args(["settle", "inv-1", "--status", "201", "--yes"])
    with pytest.raises(
        Exception, match=r"kept by a store \(ReadOnlyStore\) that cannot settle operations by hand"
    ):
        cmd_settle(args, ReadOnlyStore(), FakeTty(), FakeTty(), FakeTty())  # type: ignore[arg-type]


def test_a_process_that_takes_the_operation_after_the_check_still_wins(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the look and the write are two steps: the store's settle decides again, atomically
    pending_op(journal_path, "inv-7", URL, {"amount": 7})
    settle = samekey.Journal.settle

    def taken_meanwhile(self: samekey.Journal, *args: Any) -> SettleResult:
        held_elsewhere(journal_path, "inv-7", 300)  # a re-run of the code claims it now
        return settle(self, *args)

    monkeypatch.setattr(samekey.Journal, "settle", taken_meanwhile)
    result = run("settle", "inv-7", "--status", "201", "--yes", "--journal", str(journal_path))
    assert (
        result.code == 2
        and "is being executed right now by another-host/123/scope/tag-1" in result.err
    )
    record = samekey.Journal(journal_path).get("inv-7")
    assert record is not None and record.pending and not record.settled_by_hand


def test_settle_and_list_pages_on_a_postgresql_journal_as_processes(pg_dsn: str) -> None:
    for n in (1, 2):
        pending_op(pg_dsn, f"inv-{n}", URL, {"amount": n})  # type: ignore[arg-type]  # a DSN is a journal too
    j = ("--journal", pg_dsn)
    settled = run_process("settle", "inv-1", "--status", "201", "--note", NOTE, "--yes", *j)
    assert settled.returncode == 0 and settled.stdout.startswith(
        "settled 'inv-1' by hand: HTTP 201"
    ), settled.stderr
    first = run_process("list", "--all", "--limit", "1", "--json", *j)
    [record] = json.loads(first.stdout)
    assert (record["operation"], record["settled_by_hand"], record["settled_note"]) == (
        "inv-1",
        True,
        NOTE,
    )
    assert first.stderr.split("--after ")[1].strip() == record["cursor"]
    rest = run_process("list", "--all", "--json", "--after", record["cursor"], *j)
    assert [r["operation"] for r in json.loads(rest.stdout)] == ["inv-2"] and rest.stderr == ""

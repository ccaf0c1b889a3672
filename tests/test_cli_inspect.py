"""`samekey list` filters and its table as a terminal shows it (samekey._cli._inspect, _output)."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from wcwidth import wcswidth

import samekey
from samekey import cli
from samekey._cli._inspect import DEFAULT_LIMIT
from samekey._contract import Intent
from test_cli import LIST_FIELDS, FakeTty, completed_op, pending_op, run, run_process


def intent_for(operation: str) -> Intent:
    return Intent(
        operation,
        str(uuid.uuid4()),
        "Idempotency-Key",
        "POST",
        "https://pay.test/c",
        "f",
        (),
        b"{}",
    )


@pytest.fixture(autouse=True)
def _no_waiting() -> Iterator[None]:
    with samekey.set_testing(True):
        yield


def age(journal_path: Path, operation: str, seconds: float) -> None:
    """Make ``operation`` look created ``seconds`` ago (the journal file is plain SQLite)."""
    import sqlite3

    with sqlite3.connect(journal_path) as db:
        db.execute(
            "UPDATE operations SET created_at = created_at - ?, completed_at = "
            "completed_at - ? WHERE operation = ?",
            (seconds, seconds, operation),
        )


@pytest.fixture
def journal(journal_path: Path) -> Path:
    for n in range(5):
        pending_op(journal_path, f"batch-1/inv-{n}", "https://pay.test/charges", {"amount": n})
    pending_op(journal_path, "batch-2/inv-0", "https://pay.test/charges", {"amount": 9})
    completed_op(journal_path, "batch-1/paid")
    age(journal_path, "batch-1/inv-0", 2 * 3600)
    age(journal_path, "batch-1/inv-1", 8 * 86400)
    age(journal_path, "batch-1/paid", 3 * 3600)
    return journal_path


def listed(*argv: str) -> list[str]:
    result = run("list", "--json", *argv)
    assert result.code == 0, result.err
    return [r["operation"] for r in json.loads(result.out)]


def test_list_filters_combine_and_keep_the_json_fields(journal: Path) -> None:
    j = ("--journal", str(journal))
    oldest_first = [
        "batch-1/inv-1",
        "batch-1/inv-0",
        "batch-1/inv-2",
        "batch-1/inv-3",
        "batch-1/inv-4",
    ]
    assert listed(*j) == [*oldest_first, "batch-2/inv-0"]
    assert listed("--prefix", "batch-2/", *j) == ["batch-2/inv-0"]
    as_a_process = run_process(
        "list", "--all", "--prefix", "batch-1/", "--older-than", "1h", "--json", *j
    )
    assert [r["operation"] for r in json.loads(as_a_process.stdout)] == [
        "batch-1/inv-1",
        "batch-1/paid",
        "batch-1/inv-0",
    ]
    assert listed("--state", "completed", *j) == ["batch-1/paid"]
    assert listed("--older-than", "1h30m", *j) == ["batch-1/inv-1", "batch-1/inv-0"]
    assert listed("--older-than", "1w", *j) == ["batch-1/inv-1"]
    assert listed("--all", "--older-than", "1h", "--prefix", "batch-1/", *j) == [
        "batch-1/inv-1", "batch-1/paid", "batch-1/inv-0",
    ]  # fmt: skip
    assert listed("--limit", "2", *j) == ["batch-1/inv-1", "batch-1/inv-0"]
    (record,) = json.loads(run("list", "--json", "--state", "completed", *j).out)
    assert set(record) == LIST_FIELDS and record["state"] == "completed"


def test_list_limit_says_what_it_left_out_and_filters_reject_bad_input(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = ("--journal", str(journal))
    limited = run("list", "--limit", "2", *j)
    assert (
        limited.out.splitlines()[0].startswith("OPERATION ") and len(limited.out.splitlines()) == 3
    )
    hint, cursor = limited.err.rsplit(" ", 1)
    assert hint == (
        "showing the oldest 2 matching operations (--limit); for the next ones, run the "
        "same command with --after"
    )
    assert listed("--limit", "2", "--after", cursor.strip(), *j) == [
        "batch-1/inv-2",
        "batch-1/inv-3",
    ]
    assert run("list", "--limit", "6", *j).err == ""  # nothing left out: nothing said
    assert run("list", "--prefix", "nope/", *j).out.startswith("no matching operations in ")
    assert run("list", "--state", "completed", "--prefix", "batch-2/", *j).out.startswith(
        "no matching "
    )
    for argv, error in [
        (["--all", "--state", "pending"], "argument --state: not allowed with argument --all"),
        (
            ["--older-than", "1 week"],
            "'1 week' is not a duration: use numbers with units s/m/h/d/w, e.g. 7d or 1h30m",
        ),
        (["--limit", "0"], "argument --limit: '0' is not a whole number of at least 1"),
        (
            ["--after", "batch-1/inv-2"],
            "argument --after: 'batch-1/inv-2' is not a cursor printed by samekey list",
        ),
    ]:
        with pytest.raises(SystemExit) as usage:
            run("list", *argv, *j)
        assert usage.value.code == 2 and error in capsys.readouterr().err


def test_the_table_lines_up_wide_and_combining_characters(journal_path: Path) -> None:
    # `len()` padding pushed every column after a CJK name two columns per character to the right
    for name in ("支払い-1", "cafe\u0301-2", "plain-3"):
        pending_op(journal_path, name, "https://pay.test/charges", {"amount": 1})
    lines = run("list", "--journal", str(journal_path)).out.splitlines()
    key_column = {wcswidth(line[: line.index("POST")]) for line in lines[1:]}
    assert len(key_column) == 1, lines  # METHOD starts at the same screen column on every row
    assert wcswidth(lines[0][: lines[0].index("METHOD")]) in key_column


def test_a_name_with_a_control_character_lines_up_as_it_is_shown(journal_path: Path) -> None:
    # the ESC is shown as the 4 characters \x1b: the padding counts those, not 0 columns
    for name in ("evil\x1b-1", "plain-2"):
        pending_op(journal_path, name, "https://pay.test/charges", {"amount": 1})
    lines = run("list", "--journal", str(journal_path)).out.splitlines()
    assert "evil\\x1b-1" in lines[1] and "\x1b" not in lines[1]
    assert len({line.index("POST") for line in lines[1:]}) == 1, lines


def test_a_terminal_gets_the_first_page_and_the_command_for_the_next(journal_path: Path) -> None:
    with samekey.Journal(journal_path, durability="process") as journal:
        for n in range(DEFAULT_LIMIT + 5):
            journal.claim(intent_for(f"inv-{n:03d}"), "crashed-host/1", 0, time.time())
    out, err = FakeTty(), io.StringIO()
    assert cli.main(["list", "--journal", str(journal_path)], stdout=out, stderr=err) == 0
    assert len(out.getvalue().splitlines()) == 1 + DEFAULT_LIMIT  # the header, then 100 rows
    assert "(on a terminal; --limit N shows more); for the next ones" in err.getvalue()
    cursor = err.getvalue().split("--after ")[1].strip()
    out2 = FakeTty()
    assert cli.main(["list", "--after", cursor, "--journal", str(journal_path)], stdout=out2) == 0
    assert [line.split()[0] for line in out2.getvalue().splitlines()[1:]] == [
        f"inv-{n}" for n in range(100, 105)
    ]
    assert (
        len(json.loads(run("list", "--json", "--journal", str(journal_path)).out))
        == DEFAULT_LIMIT + 5
    )  # piped


def test_pages_walked_as_a_process_list_every_record_once(journal: Path) -> None:
    j = ("--journal", str(journal))
    seen: list[str] = []
    argv = ["list", "--all", "--limit", "3", "--json", *j]
    for _ in range(5):  # 7 records, 3 a page: 3 pages, the last one says nothing more
        page = run_process(*argv)
        assert page.returncode == 0, page.stderr
        records = json.loads(page.stdout)
        seen += [r["operation"] for r in records]
        if not page.stderr:
            break
        assert page.stderr.split("--after ")[1].strip() == records[-1]["cursor"]
        argv = ["list", "--all", "--limit", "3", "--json", "--after", records[-1]["cursor"], *j]
    assert seen == listed("--all", *j) and len(seen) == len(set(seen)) == 7


class _FullDisk(samekey.Journal):
    """A journal whose disk fills up once the
    request is claimed: the answer and the release fail."""

    def complete(self, *args: object, **kwargs: object) -> None:
        raise samekey.JournalError(
            self.path, "the disk is full while recording", "Free some space."
        )

    def release(self, *args: object, **kwargs: object) -> None:
        raise samekey.JournalError(
            self.path, "the disk is full while recording", "Free some space."
        )


def test_an_operation_sent_once_whose_answer_was_not_recorded_lists_one_attempt_in_doubt(
    journal_path: Path,
) -> None:
    journal = _FullDisk(journal_path)
    with samekey.Client(
        journal=journal, transport=httpx.MockTransport(lambda r: httpx.Response(201))
    ) as client:
        with pytest.raises(samekey.AnswerNotRecorded):
            client.post("https://pay.test/charges", operation="inv-1", json={"amount": 1})
    journal.close()
    listed = run("list", "--journal", str(journal_path))
    row = listed.out.splitlines()[1].split()
    assert row[0] == "inv-1" and row[5] == "1?", listed.out  # "0" read as never sent
    assert (
        json.loads(run("list", "--json", "--journal", str(journal_path)).out)[0][
            "attempt_unrecorded"
        ]
        is True
    )
    assert (
        "the first may have been sent" in run("show", "inv-1", "--journal", str(journal_path)).out
    )

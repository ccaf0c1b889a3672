"""`samekey purge --dry-run`: the preview an operator
wants before deleting (samekey._cli._maintain)."""

from __future__ import annotations

from pathlib import Path

import samekey
from test_cli import completed_op, pending_op, run_process
from test_cli_inspect import age


def test_purge_dry_run_counts_and_lists_and_deletes_nothing(journal_path: Path) -> None:
    completed_op(journal_path, "old-1")
    completed_op(journal_path, "old-2")
    completed_op(journal_path, "fresh")
    pending_op(journal_path, "old-pending", "https://pay.test/c", {"amount": 1})
    for name in ("old-1", "old-2", "old-pending"):
        age(journal_path, name, 9 * 86400)
    before = journal_path.read_bytes()
    preview = run_process(
        "purge", "--older-than", "1w", "--dry-run", "--journal", str(journal_path)
    )
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.splitlines()
    assert lines[0].split() == ["OPERATION", "STATUS", "COMPLETED", "AT", "KEY"]
    assert [line.split()[0] for line in lines[1:3]] == ["old-1", "old-2"]
    assert lines[-1] == (
        "dry run: would purge 2 completed record(s) older than 7.0d; 1 pending "
        "record(s) kept; nothing was deleted"
    )
    assert journal_path.read_bytes() == before
    done = run_process("purge", "--older-than", "1w", "--journal", str(journal_path))
    assert done.stdout.startswith(
        "purged 2 completed record(s) older than 7.0d"
    )  # what the preview said
    assert {r.operation for r in samekey.Journal(journal_path).records()} == {
        "fresh",
        "old-pending",
    }
    nothing = run_process(
        "purge", "--older-than", "1w", "--dry-run", "--journal", str(journal_path)
    )
    assert nothing.stdout == (
        "dry run: would purge 0 completed record(s) older than 7.0d; 1 pending "
        "record(s) kept; nothing was deleted\n"
    )

"""Several processes opening the same brand-new journal at the same moment (found by the soak)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import samekey

OPENER = textwrap.dedent(
    """
    import sys, time, samekey
    folder, start, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        time.sleep(max(0.0, start + r * 0.04 - time.time()))  # every process opens journal r at once
        samekey.Journal(f"{folder}/journal-{r}.sqlite3").close()
    """
)


def test_processes_opening_a_new_journal_at_once_all_succeed(tmp_path: Path) -> None:
    rounds = 25
    start = time.time() + 1.5  # after every process has imported samekey
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(tmp_path), str(start), str(rounds)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    for r in range(rounds):
        with samekey.Journal(tmp_path / f"journal-{r}.sqlite3") as journal:
            assert journal.records() == []

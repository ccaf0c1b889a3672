"""The README's demo command runs, with no arguments, and ends in one charge per order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_demo(tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`python examples/checkout.py`, as the README says, on a journal of its own; it must succeed."""
    env = {**os.environ, "SAMEKEY_JOURNAL": str(tmp_path / "journal.sqlite3"), **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "checkout.py")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_checkout_demo_runs_and_charges_each_order_once(tmp_path: Path) -> None:
    result = _run_demo(tmp_path)
    out = result.stdout
    assert "killed with SIGKILL (exit -9)" in out
    assert "order A: HTTP 201 ch_1, answered from the journal, nothing sent" in out
    assert "Charges per order on the server: A=1 B=1 C=1; distinct keys: 3" in out


def test_checkout_demo_leaves_no_temporary_folder_behind(tmp_path: Path) -> None:
    # Run as the README says, again and again: each run's payment-server folder is its own and
    # must be removed when the demo ends, not pile up in the temp dir (the journal is what persists).
    temp = tmp_path / "tmp"
    temp.mkdir()
    _run_demo(tmp_path, TMPDIR=str(temp))
    assert list(temp.iterdir()) == []

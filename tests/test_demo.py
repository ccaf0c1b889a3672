"""The README's demo command runs, with no arguments, and ends in one charge per order."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _start_demo(tmp_path: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`python examples/checkout.py`, as the README says, on a journal of its own."""
    env = {**os.environ, "SAMEKEY_JOURNAL": str(tmp_path / "journal.sqlite3"), **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "checkout.py"), *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _run_demo(tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """The demo, which must succeed."""
    result = _start_demo(tmp_path, **extra_env)
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
    # must be removed when the demo ends, not pile
    # up in the temp dir (the journal is what persists).
    temp = tmp_path / "tmp"
    temp.mkdir()
    _run_demo(tmp_path, TMPDIR=str(temp))
    assert list(temp.iterdir()) == []


# The demo's checkout process dies before the demo kills it: at start (a broken install: the
# child runs the demo's own interpreter) or mid-run from a signal. A sitecustomize on PYTHONPATH
# does it to the child only (it is the process started with --child), with no hook in the demo.
CRASHES = {
    "exits at start": (
        "sys.stderr.write('ModuleNotFoundError: No module named httpx_broken\\n'); "
        "sys.stderr.flush(); os._exit(3)",
        "exit code 3",
        "ModuleNotFoundError: No module named httpx_broken",
    ),
    "killed by a signal": (
        "os.kill(os.getpid(), signal.SIGSEGV)",
        "exit code -11, killed by SIGSEGV",
        "(nothing)",
    ),
}


@pytest.mark.parametrize("crash", CRASHES, ids=list(CRASHES))
def test_checkout_demo_stops_at_once_naming_a_checkout_process_that_died(
    tmp_path: Path, crash: str
) -> None:
    code, how, stderr_tail = CRASHES[crash]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import os, signal, sys\nif '--child' in sys.argv:\n    {code}\n"
    )
    started = time.monotonic()
    result = _start_demo(tmp_path, PYTHONPATH=str(site))
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 10, (
        f"took {elapsed:.1f} s"
    )  # it used to wait out its 20 s, then fail on an assert
    assert "checkout.py: the checkout process (pid " in result.stderr
    assert (
        f"died unexpectedly ({how}); the demo stops here. Its stderr ended with:\n" in result.stderr
    )
    assert "checkout.py --child " in result.stderr  # the command that died
    assert stderr_tail in result.stderr
    assert "Traceback" not in result.stderr
    assert "killed with SIGKILL" not in result.stdout


@pytest.mark.parametrize("args", [("--help",), ("--jornal", "x.db")])
def test_checkout_demo_explains_its_options_and_runs_nothing_for_help_or_a_typo(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _start_demo(tmp_path, *args)
    if args == ("--help",):
        assert result.returncode == 0, result.stderr
        assert "one charge per order" in result.stdout and "default journal" in result.stdout
        assert (
            "--child" not in result.stdout
        )  # the demo's own child process, not an option for users
    else:
        assert result.returncode == 2
        assert "unrecognized arguments: --jornal x.db" in result.stderr
    assert "Payment server" not in result.stdout
    assert not (tmp_path / "journal.sqlite3").exists()  # nothing charged, no journal made

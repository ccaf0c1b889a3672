"""The command line itself: --version and durations (samekey._cli._args)."""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

import pytest

import samekey
from samekey import cli
from test_cli import run_process

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_version_is_the_installed_one_from_pyproject() -> None:
    shown = run_process("--version")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout == f"samekey {version('samekey')}\n" == f"samekey {samekey.__version__}\n"
    assert f'\nversion = "{samekey.__version__}"\n' in PYPROJECT.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1w", 604800), ("1h30m", 5400), ("1d 12h", 129600), ("2m30s", 150), ("0.5w", 302400), ("0s", 0)],
)
def test_compound_durations(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1x", "h", "1h30", "30m1", "1 week", "", "1h-30m"])
def test_a_bad_duration_names_the_units_and_an_example(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"use numbers with units s/m/h/d/w, e\.g\. 7d or 1h30m"):
        cli.parse_duration(text)

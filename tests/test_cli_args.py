"""The command line itself: --version and durations (samekey._cli._args)."""

from __future__ import annotations

import argparse
import io
import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest

import samekey
from samekey import cli
from test_cli import pending_op, run_process

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_version_is_the_installed_one_from_pyproject() -> None:
    shown = run_process("--version")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout == f"samekey {version('samekey')}\n" == f"samekey {samekey.__version__}\n"
    assert f'\nversion = "{samekey.__version__}"\n' in PYPROJECT.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1w", 604800),
        ("1h30m", 5400),
        ("1d 12h", 129600),
        ("2m30s", 150),
        ("0.5w", 302400),
        ("0s", 0),
    ],
)
def test_compound_durations(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1x", "h", "1h30", "30m1", "1 week", "", "1h-30m"])
def test_a_bad_duration_names_the_units_and_an_example(text: str) -> None:
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"use numbers with units s/m/h/d/w, e\.g\. 7d or 1h30m"
    ):
        cli.parse_duration(text)


REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"


def reference_commands() -> list[list[str]]:
    lines = re.findall(r"^\$ samekey (.*)$", REFERENCE.read_text(encoding="utf-8"), re.MULTILINE)
    return [shlex.split(line) for line in lines]


def test_the_reference_shows_every_option_of_every_command() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        assert f"## `samekey {name}" in text
        for option in sub._option_string_actions:
            assert f"`{option}" in text or option in (
                "-h",
                "--help",
                "--yes",
                "--header",
                "--verbose",
            ), option


def test_the_reference_examples_run_on_a_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal.sqlite3"
    monkeypatch.setenv("SAMEKEY_JOURNAL", str(journal))
    headers = tmp_path / "payments-headers"
    headers.write_text("Authorization: Bearer sk_test\n")
    for n in (42, 43):
        pending_op(journal, f"batch-7/inv-{n:04d}", "http://127.0.0.1:9/charges", {"amount": n})
    commands = reference_commands()
    assert len(commands) >= 12
    for argv in commands:
        if "--dry-run" in argv or argv[0] in ("list", "show", "settle", "--version"):
            if argv[0] == "--version":
                continue  # checked as a process above
            out, err = io.StringIO(), io.StringIO()
            assert cli.main(argv, stdout=out, stderr=err) == 0, (argv, err.getvalue())
            assert out.getvalue(), argv
        else:  # would send or delete: parsed only (a header file of the doc's own, a live server)
            argv = [f"@{headers}" if a == "@/run/secrets/payments-headers" else a for a in argv]
            cli.build_parser().parse_args(argv)

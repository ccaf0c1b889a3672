"""The pytest plugin as a user meets it: the docs' example file run by pytest in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "pytest-plugin.md"


def guide_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the guide has one python block: the example file"
    return str(blocks[0])


def test_the_guides_example_file_passes_with_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checkout=guide_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)


def test_the_fixtures_isolate_each_test_and_turn_the_testing_mode_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_user="""
        import os
        import samekey
        from samekey import _policy

        seen = []

        def test_one(samekey_journal, payment_server):
            assert _policy.testing_attempts_cap()[0]
            assert os.environ["SAMEKEY_JOURNAL"] == str(samekey_journal)
            assert not samekey_journal.exists()
            seen.append((samekey_journal, payment_server.url))

        def test_two(samekey_journal, payment_server):
            assert (samekey_journal, payment_server.url) not in seen
            assert payment_server.charge_count() == 0

        def test_plain():
            assert not _policy.testing_attempts_cap()[0]  # no fixture asked: the mode stays off
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q").assert_outcomes(passed=3)


def test_the_plugin_imports_nothing_heavy_and_can_be_turned_off(pytester: pytest.Pytester) -> None:
    probe = (
        "import sys, samekey_pytest; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'samekey', 'httpx', "
        "'tenacity', 'anyio'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
    pytester.makepyfile(test_off="def test_off(samekey_journal):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:samekey", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'samekey_journal' not found*"])

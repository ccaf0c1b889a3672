"""`python -m benchmarks` end to end, at its smallest size (--smoke): every target of issue 22 is
printed and written with a verdict that follows from its measurement, and the docs' table and
chart are generated from the JSON. Needs the bench extra (skipped without it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ISSUE_22 = {"1", "2", "3a", "3b", "3c", "3d", "4", "5"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    for module in ("matplotlib", "dbos", "httpx_aiohttp", "httpx_retries"):
        pytest.importorskip(module, reason="the bench extra: pip install -e '.[bench]'")
    out = tmp_path_factory.mktemp("results")
    command = [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_every_target_has_a_verdict_computed_from_its_measurement(
    smoke_run: tuple[Path, str],
) -> None:
    out, printed = smoke_run
    data = json.loads((out / "results.json").read_text())
    ids = {t["id"] for t in data["targets"]}
    assert ISSUE_22 <= ids
    if data["sections"]["profile"]["rows"]:  # py-spy may lack permission to trace: then it says so
        assert "1b" in ids
    for t in data["targets"]:
        if t["limit"] is None:
            assert t["verdict"] == "reported"
            continue
        floor_misses = t["bound"] is not None and not _meets(t, t["bound"])
        missed = "NOT MET, nor is its floor" if floor_misses else "NOT MET"
        assert t["verdict"] == ("MET" if _meets(t, t["measured"]) else missed), t
        assert f"| {t['id']} " in printed and t["verdict"] in printed


def _meets(target: dict[str, Any], value: float) -> bool:
    limit = target["limit"]
    return bool(value <= limit if target["better"] == "lower" else value >= limit)


def test_the_docs_table_and_chart_are_generated_from_the_json(smoke_run: tuple[Path, str]) -> None:
    out, _ = smoke_run
    latest = (out / "latest.md").read_text()
    data = json.loads((out / "results.json").read_text())
    for t in data["targets"]:
        assert f"| {t['id']} " in latest
    assert "(latency.png)" in latest and (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    profile = (out / "hot_path_profile.md").read_text()
    assert "# samekey's hot path" in profile and "samekey's own Python by function" in profile
    if data["sections"]["profile_async"].get("markdown"):
        assert "**Async:" in profile
    assert "**Where the async gap goes" in profile and "| mission floor " in profile
    (out / "latest.md").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--render", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (out / "latest.md").read_text() == latest


def test_a_missed_target_says_when_its_floor_misses_the_limit_too() -> None:
    from benchmarks._common import Target

    def verdict(measured: float, bound: float | None) -> str:
        return Target("3b", "async", measured, 0.8, better="higher", bound=bound).verdict

    assert verdict(0.85, 0.70) == "MET"
    assert verdict(0.66, 0.92) == "NOT MET"  # the floor shows it can be done: samekey's own cost
    assert verdict(0.66, 0.79) == "NOT MET, nor is its floor"
    assert verdict(0.66, None) == "NOT MET"
    assert Target("1", "seq", 1.5, 1.25, bound=1.27).verdict == "NOT MET, nor is its floor"


def test_the_page_size_comparison_writes_every_answer_size_on_both_page_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import page_size

    page_size.run(blocks=2, folder=str(tmp_path))
    printed = capsys.readouterr().out
    for size in ("| 60 B ", "| 2,000 B ", "| 8,000 B "):
        assert printed.count(size) == 2, printed  # process and fsync
    assert "µs, 1024 B pages" in printed and "µs, 4096 B pages" in printed


def test_the_instruction_count_runs_every_step_and_reads_callgrinds_totals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import instructions

    for variant in (instructions.BARE, *instructions.STEPS, instructions.SAMEKEY):
        instructions._main_child(variant, 20)  # each child counted under valgrind sends these
    assert instructions._summary("events: Ir\nsummary: 123456\n") == 123456
    variants = (instructions.BARE, instructions.SAMEKEY)
    trees = {"against": "/before", "this tree": "/after"}
    counts = {
        (instructions.BARE, "/before"): 700_000.0, (instructions.SAMEKEY, "/before"): 1_000_000.0,
        (instructions.BARE, "/after"): 700_000.0, (instructions.SAMEKEY, "/after"): 950_000.0,
    }  # fmt: skip
    instructions._table(variants, trees, counts, 1200)
    printed = capsys.readouterr().out
    assert "1,000,000 (+300,000)" in printed and "950,000 (+250,000)" in printed
    assert "| 0.950 " in printed

"""MkDocs hooks: the benchmark results page is built from benchmarks/results, never copied by hand.

- `<!-- benchmarks:tables -->` in a page becomes the date line and the captioned tables of
  benchmarks/results/latest.md (what `python -m benchmarks` writes). Its targets table, verdict
  bullets and uncaptioned tables are left out: they are notes for samekey's developers.
- benchmarks/results/latency.png is added to the site as assets/latency.png.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PLACEHOLDER = "<!-- benchmarks:tables -->"
DEVELOPERS_ONLY = (
    "**Targets"  # the issue targets' verdicts: for samekey's developers, in latest.md itself
)


def benchmark_tables(text: str) -> str:
    """The date line, then each **caption** with the table right under it."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    kept = [paragraphs[0]] if paragraphs and paragraphs[0].startswith("Measured ") else []
    for before, paragraph in itertools.pairwise(paragraphs):
        if (
            paragraph.startswith("|")
            and before.startswith("**")
            and not before.startswith(DEVELOPERS_ONLY)
        ):
            kept += [before, paragraph]
    return "\n\n".join(kept)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, benchmark_tables((RESULTS / "latest.md").read_text()))


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    files.append(
        File.generated(config, "assets/latency.png", abs_src_path=str(RESULTS / "latency.png"))
    )
    return files

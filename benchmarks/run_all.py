"""Run every benchmark, print the tables, write benchmarks/results/latest.md and latency.png.

pip install -e ".[bench]"
python -m benchmarks            # the full run (several minutes)
python -m benchmarks --quick    # a fast pass
"""

from __future__ import annotations

import argparse
import sys

from . import async_throughput, checkpoints, journal_scale, profile, sequential, shared_journal
from ._common import RESULTS, machine, stamp


def chart(latency: dict[str, list[float]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in latency if not n.startswith("raw")]
    data = [[s * 1e3 for s in latency[n]] for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.boxplot(data, vert=False, showfliers=False, whis=(1, 99))
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    raw = latency.get("raw fsync (journal disk)")
    if raw:
        fsync_ms = sorted(raw)[len(raw) // 2] * 1e3
        ax.axvline(fsync_ms, color="grey", linestyle=":", label=f"one raw fsync ({fsync_ms:.2f} ms)")
        ax.legend(loc="upper right")  # the fast variants come first: their whiskers end early
    ax.set_xlabel("latency per POST, ms (box: quartiles and median; whiskers: p1-p99)")
    ax.set_title(title.replace(", ", ",\n", 1), fontsize=10)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, journals up to 100k records")
    parser.add_argument("--dir", default=None, help="folder for the journals (default: the system temp folder)")
    args = parser.parse_args()
    when, where = stamp(), machine()
    print(f"samekey benchmarks, {when}, {where}{' (quick)' if args.quick else ''}")
    seq = sequential.run(300 if args.quick else 2000, folder=args.dir)
    tail = checkpoints.run(2000 if args.quick else 8000, folder=args.dir)
    shared = shared_journal.run(2, 600 if args.quick else 3000, folder=args.dir)
    conc = async_throughput.run(1000 if args.quick else 10_000, 100, folder=args.dir)
    scale = journal_scale.run((1000, 100_000) if args.quick else (1000, 100_000, 1_000_000), folder=args.dir)
    prof = profile.run(1500 if args.quick else 6000)
    png = chart(seq["latency"], seq["title"])
    parts = [f"Measured {when} on {where}{' (--quick)' if args.quick else ''}.", ""]
    for result in (seq, tail, shared, prof, conc, scale):
        parts += [f"**{result['title']}**", "", result["table"], ""]
        parts += [f"- {c}" for c in result["checks"]] + [""]
    (RESULTS / "latest.md").write_text("\n".join(parts))
    print(f"\nwrote {RESULTS / 'latest.md'} and {png}")


if __name__ == "__main__":
    sys.exit(main())

"""From results.json to what the docs show: latest.md (the tables), latency.png (the chart),
and hot_path_profile.md (the profile, for developers). Nothing here measures anything.

    python -m benchmarks --render     # again from benchmarks/results/results.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import table, target_from

USER_SECTIONS = ("sequential", "async", "resume", "checkpoints", "shared", "scale")


def targets_table(data: dict[str, Any]) -> str:
    rows = []
    for raw in data["targets"]:
        t = target_from(raw)
        rows.append([t.id, t.what, t.value(), t.condition() or "reported", t.floor, t.verdict])
    return table(["#", "target", "measured", "limit", "floor, same run", "verdict"], rows)


def latest_md(data: dict[str, Any]) -> str:
    mode = "" if data["mode"] == "full" else f" ({data['mode']} run)"
    parts = [
        f"Measured {data['when']} on {data['machine']}{mode}; {data['load_before']} at the start, "
        f"{data['load_after']} at the end (the machine is shared: every ratio compares variants "
        "measured side by side in one run).",
        "",
        "**Targets**",
        "",
        targets_table(data),
        "",
        "![Latency per POST, per variant; async throughput per transport](latency.png)",
        "",
    ]
    for name in USER_SECTIONS:
        section = data["sections"].get(name)
        if not section:
            continue
        parts += [f"**{section['title']}**", "", table(section["headers"], section["rows"]), ""]
        parts += [f"- {note}" for note in section["notes"]]
        parts += [""]
    return "\n".join(parts)


def profile_md(data: dict[str, Any]) -> str:
    from .profile import markdown

    text = markdown(data["sections"]["profile"], data["when"], data["machine"])
    async_part = data["sections"].get("profile_async", {}).get("markdown")
    text += "\n" + async_part if async_part else ""
    gap = data["sections"].get("essentials")
    if gap:  # targets 3b/3d: samekey's flow, its own work, the floor, side by side
        text += f"\n**{gap['title']}**\n\n{table(gap['headers'], gap['rows'])}\n\n"
        text += "".join(f"- {note}\n" for note in gap["notes"])
    return text


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sequential = data["sections"]["sequential"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    _latency(left, sequential)
    _throughput(right, data["sections"]["async"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency(ax: Any, sequential: dict[str, Any]) -> None:
    latency = sequential["latency"]
    off_scale = {n: s for n, s in latency.items() if n.startswith("DBOS")}
    names = [n for n in latency if not n.startswith("raw") and n not in off_scale]
    stats = [{**latency[n], "label": n} for n in names]
    ax.bxp(stats, vert=False, showfliers=False)
    ax.invert_yaxis()
    raw = latency.get("raw fsync (journal disk)")
    if raw:
        ax.axvline(
            raw["med"], color="grey", linestyle=":", label=f"one raw fsync ({raw['med']:.2f} ms)"
        )
    for name, s in off_scale.items():
        ax.plot([], [], " ", label=f"{name}: median {s['med']:.2f} ms (off the scale)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    ax.set_xlabel("latency per sequential POST, ms (box: quartiles and median; whiskers: p1-p99)")
    ax.set_title(
        f"Sequential POSTs, one loopback server ({sequential['requests']} per variant)", fontsize=10
    )
    ax.set_xlim(0, max(s["whishi"] for n, s in latency.items() if n in names) * 1.35)
    ax.tick_params(axis="y", labelsize=8)


def _throughput(ax: Any, section: dict[str, Any]) -> None:
    rates = section["rates"]
    names = list(rates)
    colors = ["tab:grey" if n.startswith("httpx.") else "tab:blue" for n in names]
    ax.barh(names, [rates[n] for n in names], color=colors)
    ax.invert_yaxis()
    for y, n in enumerate(names):
        ax.text(rates[n], y, f" {rates[n]:,.0f}", va="center", fontsize=7)
    ax.set_xlabel("operations per second (higher is better)")
    ax.set_title(f"Async POSTs at concurrency {section['concurrency']}, same limits", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)


def write_all(data: dict[str, Any], folder: Path) -> list[Path]:
    """Write latest.md, latency.png and hot_path_profile.md into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "latest.md"]
    written[0].write_text(latest_md(data))
    if "sequential" in data["sections"] and "async" in data["sections"]:
        chart(data, folder / "latency.png")
        written.append(folder / "latency.png")
    if data["sections"].get("profile", {}).get("rows"):
        written.append(folder / "hot_path_profile.md")
        written[-1].write_text(profile_md(data))
    return written

"""Draws the scale benchmark's plots from the CSV files it wrote."""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"start": "#dddddd", "steady": "#e8f0ff", "restart": "#fff2cc", "outage": "#ffe0e0"}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def shade(ax, phases):
    for p in phases:
        start, end = float(p["start_seconds"]), float(p["end_seconds"])
        ax.axvspan(start, end, color=COLOURS.get(p["phase"], "#eeeeee"), zorder=0)
        ax.text(start, 1.0, " " + p["phase"], transform=ax.get_xaxis_transform(),
                va="top", fontsize=8, color="#555555")


def main(folder):
    out = Path(folder)
    phases = rows(out / "phases.csv")

    refreshes = rows(out / "refreshes.csv")
    fig, ax = plt.subplots(figsize=(11, 4.5))
    shade(ax, phases)
    on_time = [(float(r["seconds"]), float(r["lateness_seconds"])) for r in refreshes if r["after_expiry"] == "0"]
    expired = [(float(r["seconds"]), float(r["lateness_seconds"])) for r in refreshes if r["after_expiry"] == "1"]
    if on_time:
        ax.scatter(*zip(*on_time), s=2, color="#1f77b4", label="refresh", zorder=2)
    if expired:
        ax.scatter(*zip(*expired), s=6, color="#d62728", label="after the token expired", zorder=3)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("seconds since the benchmark started")
    ax.set_ylabel("lateness against status.refreshAt (s)")
    ax.set_title("Refresh lateness over time")
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "lateness.png", dpi=110)

    memory = rows(out / "memory.csv")
    fig, ax = plt.subplots(figsize=(11, 4.5))
    shade(ax, phases)
    ax.plot([float(r["seconds"]) for r in memory], [float(r["rss_mib"]) for r in memory],
            ".", markersize=2, color="#2ca02c", zorder=2)
    ax.axhline(150, color="#d62728", linewidth=0.8, linestyle="--", label="target: 150 MiB")
    ax.set_xlabel("seconds since the benchmark started")
    ax.set_ylabel("operator RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Operator memory over time")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1])

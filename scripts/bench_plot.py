"""Draws the scale benchmark's plots from the CSV files it wrote:
lateness.png (every refresh against its schedule), memory.png (RSS of the
operator, and of the peer when one ran), cpu.png (cores used by the operator,
the peer, the API server and etcd, with the machine's load average)."""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {
    "start": "#dddddd", "steady": "#e8f0ff", "echo": "#e0f5e0", "restart": "#fff2cc",
    "outage": "#ffe0e0", "churn": "#f0e0ff", "eso-start": "#dddddd", "eso-steady": "#e8f0ff",
    "eso-restart": "#fff2cc",
}
LINES = {"operator": "#2ca02c", "eso": "#ff7f0e", "kube-apiserver": "#1f77b4", "etcd": "#9467bd"}


def rows(path):
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def shade(ax, phases):
    for p in phases:
        start, end = float(p["start_seconds"]), float(p["end_seconds"])
        ax.axvspan(start, end, color=COLOURS.get(p["phase"], "#eeeeee"), zorder=0)
        ax.text(start, 1.0, " " + p["phase"], transform=ax.get_xaxis_transform(),
                va="top", fontsize=7, color="#555555", rotation=90)


def lateness(out, phases):
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
    ax.set_title("Operator: refresh lateness over time")
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "lateness.png", dpi=110)


def memory(out, phases, processes):
    fig, ax = plt.subplots(figsize=(11, 4.5))
    shade(ax, phases)
    for who in ("operator", "eso"):
        points = [(float(r["seconds"]), float(r["rss_mib"])) for r in processes if r["who"] == who]
        if points:
            label = "oauth-token-operator" if who == "operator" else "External Secrets Operator"
            ax.plot(*zip(*points), ".", markersize=2, color=LINES[who], label=label, zorder=2)
    ax.set_xlabel("seconds since the benchmark started")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Memory over time")
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)


def cores(out, phases, processes):
    """CPU cores used per 10 s by each process, from cumulative CPU seconds."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    shade(ax, phases)
    by_who = defaultdict(list)
    for r in processes:
        by_who[r["who"]].append((float(r["seconds"]), int(r["pid"]), float(r["cpu_seconds"])))
    for who, samples in by_who.items():
        xs, ys = [], []
        for (t0, p0, c0), (t1, p1, c1) in zip(samples[::10], samples[10::10]):
            if p0 == p1 and t1 > t0:
                xs.append(t1)
                ys.append((c1 - c0) / (t1 - t0))
        if xs:
            ax.plot(xs, ys, "-", linewidth=1, color=LINES.get(who, "#333333"), label=who, zorder=2)
    load = rows(out / "load.csv")
    if load:
        ax.plot([float(r["seconds"]) for r in load], [float(r["load_1m"]) for r in load],
                ":", linewidth=1, color="#555555", label="machine load (1 min)", zorder=2)
    ax.axhline(2, color="#d62728", linewidth=0.8, linestyle="--", label="the machine's 2 cores")
    ax.set_xlabel("seconds since the benchmark started")
    ax.set_ylabel("cores (10 s averages)")
    ax.set_ylim(bottom=0)
    ax.set_title("CPU over time")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cpu.png", dpi=110)


def main(folder):
    out = Path(folder)
    phases = rows(out / "phases.csv")
    processes = rows(out / "processes.csv")
    lateness(out, phases)
    memory(out, phases, processes)
    cores(out, phases, processes)


if __name__ == "__main__":
    main(sys.argv[1])

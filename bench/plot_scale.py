#!/usr/bin/env python3
"""bench/scale.svg from bench/scale.json: time against N for each side, one panel per scenario.
Run by bench/scale.py with the bench's own virtual environment (matplotlib)."""

import json
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

SIDES = {"bookinfo-up": "tab:blue", "kubectl": "tab:orange", "helm": "tab:green",
         "floor": "tab:gray"}
SCENARIOS = {"cold": "cold (empty cluster)", "noop": "no-op", "drift": "1% drift"}


def main(src, out):
    results = json.load(open(src))
    cells = results["summary"]["cells"]
    sizes = results["summary"]["sizes"]
    plt.rcParams["svg.hashsalt"] = "bookinfo-up-bench-scale"
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True)
    for ax, (sc, title) in zip(axes, SCENARIOS.items()):
        for side, colour in SIDES.items():
            pts = [(n, cells[f"{side}/{sc}/{n}"]["seconds"]) for n in sizes
                   if f"{side}/{sc}/{n}" in cells]
            if not pts:
                continue
            label = "API server floor (Go, max-in-flight)" if side == "floor" else side
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour,
                    linestyle="--" if side == "floor" else "-", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title)
        ax.set_xlabel("objects (N)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("wall time (s)")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"bench scale, {results['date']}: time against N (median)")
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

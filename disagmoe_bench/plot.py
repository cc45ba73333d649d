"""The crossover map: where each design beats the baseline, one panel per timing mode.

Rows are the variants compared with the baseline (cpu-bs16), columns the timing
modes; each panel is a grid over the workload's two axes (decode: batch size x
context; trace: running requests x longest prompt), coloured by the speedup on a
log scale (blue: the variant is faster, red: slower) and labelled with it.
Needs matplotlib (`pip install 'disagmoe[plot]'`).
"""

from __future__ import annotations

import math
import textwrap

MODE_FIGURES = {
    "synced": "synced: each call until the device is done",
    "pipelined": "pipelined: wall time of steps back to back",
    "busy": "busy: device time added behind the forward",
}
"""What each timing mode's panels compare, for the title (the modes run, only)."""


def crossover_map(run: dict, path: str) -> None:
    """Draws the map of `run` (the command line's JSON) into `path`."""
    import matplotlib.pyplot as plt

    fig = crossover_figure(run)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def crossover_figure(run: dict):
    """The map's matplotlib figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    modes = run["timing_modes"]
    baseline = run["baseline"]
    compared = [v["name"] for v in run["variants"] if v["name"] != baseline]
    if not compared:
        raise ValueError(f"the crossover map compares variants with {baseline}: --variants names no other")
    axes_keys = list(run["points"][0]["point"])
    rows_key, cols_key = axes_keys
    row_values = sorted({p["point"][rows_key] for p in run["points"]})
    col_values = sorted({p["point"][cols_key] for p in run["points"]})
    width = max(7.5, 1.5 + 3.6 * len(modes))
    fig, axes = plt.subplots(
        len(compared), len(modes), squeeze=False, layout="constrained", figsize=(width, 1.2 + 2.8 * len(compared))
    )
    norm = LogNorm(vmin=1 / 8, vmax=8)
    image = None
    for j, mode in enumerate(modes):
        results = [p for p in run["points"] if p["mode"] == mode]
        for i, name in enumerate(compared):
            grid = [[math.nan] * len(col_values) for _ in row_values]
            for p in results:
                value = p.get("speedup", {}).get(name)
                if value is not None and value > 0:
                    grid[row_values.index(p["point"][rows_key])][col_values.index(p["point"][cols_key])] = value
            ax = axes[i][j]
            clipped = [[min(max(v, 1 / 8), 8) if not math.isnan(v) else math.nan for v in row] for row in grid]
            image = ax.imshow(clipped, cmap="RdBu", norm=norm, origin="lower", aspect="auto")
            for r, row in enumerate(grid):
                for c, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(
                            c,
                            r,
                            f"{v:.2g}x",
                            ha="center",
                            va="center",
                            fontsize=9,
                            color="white" if abs(math.log2(v)) > 1.5 else "black",
                        )
            ax.set_xticks(range(len(col_values)), [_short(v) for v in col_values])
            ax.set_yticks(range(len(row_values)), [str(v) for v in row_values])
            ax.set_xlabel(cols_key.replace("_", " "))
            ax.set_ylabel(rows_key.replace("_", " "))
            ax.set_title(f"{name} vs {baseline}: {mode}", fontsize=10)
    lines = [
        f"{run['workload']}: speedup = {baseline} time / variant time (> 1, blue: the variant is faster)",
        "; ".join(MODE_FIGURES[mode] for mode in modes),
        f"{run['device_name']}, commit {run['commit'][:10]}",
    ]
    # about 0.6 of the font size a character: the title stays within the figure's width
    fig.suptitle("\n".join(textwrap.fill(line, int(width * 72 / (0.6 * 9)) - 4) for line in lines), fontsize=9)
    assert image is not None  # one panel at least
    ticks = [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]
    bar = fig.colorbar(image, ax=axes, shrink=0.8, label="speedup (log scale)", ticks=ticks)
    bar.ax.set_yticklabels(["1/8x", "1/4x", "1/2x", "1x", "2x", "4x", "8x"])
    bar.ax.minorticks_off()
    return fig


def _short(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)

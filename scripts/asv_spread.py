"""Spread of each benchmark between asv runs of the same code.

    python3 scripts/asv_spread.py [--max PCT] RUN.json RUN.json [...]

Each RUN.json is an asv results file (results/<machine>/<commit>-<env>.json) of one
run. For every benchmark and grid point it takes the value each run stored (the
median of its samples) and prints, as a Markdown table, the values and the spread:
(max - min) / median of those values, in percent. Exit code 1 when a spread is over
`--max` (default 5) or a grid point has a value in some runs and not in others.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys


def load(path: str) -> dict[str, float | None]:
    """One run: {"benchmark(params)": value} for every grid point of every benchmark."""
    with open(path) as f:
        data = json.load(f)
    columns = data["result_columns"]
    values = {}
    for name, row in data["results"].items():
        fields = dict(zip(columns, row))
        results = fields["result"]
        if results is None:
            continue
        params = fields.get("params") or []
        points = [", ".join(p) for p in itertools.product(*params)] if params else [""]
        if not isinstance(results, list):
            results = [results]
        for point, value in zip(points, results, strict=True):
            values[f"{name}({point})" if point else name] = value
    return values


def spread(values: list[float]) -> float:
    """(max - min) / median, in percent; 0 when every value is 0."""
    middle = statistics.median(values)
    return 0.0 if middle == 0 else 100 * (max(values) - min(values)) / abs(middle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="asv results files, one per run of the same code")
    parser.add_argument("--max", type=float, default=5.0, help="largest acceptable spread, percent")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("a spread needs at least two runs")

    runs = [load(path) for path in args.runs]
    names = sorted(set().union(*runs))
    rows, missing = [], []
    for name in names:
        values = [run.get(name) for run in runs]
        if any(v is None for v in values):
            missing.append(name)
        else:
            rows.append((spread(values), name, values))
    rows.sort(reverse=True)

    over = [row for row in rows if row[0] > args.max]
    header = " | ".join(f"run {i + 1}" for i in range(len(runs)))
    print(f"{len(rows)} grid points in {len(runs)} runs; spread = (max - min) / median of the runs' values")
    if rows:
        spreads = [row[0] for row in rows]
        print(f"spread: median {statistics.median(spreads):.1f}%, max {max(spreads):.1f}%; "
              f"{len(over)} over {args.max:g}%\n")
    print(f"| spread | benchmark | {header} |")
    print("|---:|---|" + "---:|" * len(runs))
    for value, name, values in rows:
        cells = " | ".join(f"{v * 1e6:.1f} us" if ".time_" in name else f"{v:.4g}" for v in values)
        print(f"| {value:.1f}% | {name} | {cells} |")
    for name in missing:
        print(f"| missing | {name} | " + " | ".join("-" if run.get(name) is None else "ok" for run in runs) + " |")
    if missing:
        print(f"\n{len(missing)} grid points failed or were skipped in some runs", file=sys.stderr)
    return 1 if over or missing else 0


if __name__ == "__main__":
    sys.exit(main())

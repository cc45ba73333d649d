"""The serving benchmarks' tables and crossover map from an asv results file.

    python3 -m scripts.probes.asv_map results/h200/<commit>-*.json --workload trace [--plot map.png]

Reads `bench_pipelined.Step` (decode) or `bench_trace.Step` (trace) of one commit's asv
results: the median per variant, grid point and timing mode (asv's samples are the
windows), prints one table per mode with each variant's speedup over cpu-bs16, and with
`--plot` draws the map `python -m disagmoe_bench --plot` draws, from these numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
from ast import literal_eval

from disagmoe_bench.points import PRIMARY
from disagmoe_bench.variants import BASELINE

FIGURES = {"synced": "track_synced", "pipelined": "track_pipelined", "busy": "track_busy_added"}
MODULES = {
    "decode": ("bench_pipelined", ("batch_size", "context")),
    "trace": ("bench_trace", ("running", "max_prompt")),
}


def read(path: str, workload: str) -> dict:
    """The results as `python -m disagmoe_bench --workload` writes its JSON (medians only)."""
    data = json.load(open(path))
    module, axes = MODULES[workload]
    columns = data["result_columns"]
    points: dict = {}
    variants: list[str] = []
    for mode, method in FIGURES.items():
        entry = dict(zip(columns, data["results"][f"{module}.Step.{method}"]))
        for combo, value in zip(itertools.product(*entry["params"]), entry["result"]):
            variant, *point = (literal_eval(p) for p in combo)
            if variant not in variants:
                variants.append(variant)
            if value is None:
                continue
            result = points.setdefault(
                (mode, *point),
                {"mode": mode, "point": dict(zip(axes, point)), "primary": PRIMARY[mode], "variants": {}},
            )
            result["variants"][variant] = {"median": {PRIMARY[mode]: value}}
    for result in points.values():
        base = result["variants"].get(BASELINE.name, {}).get("median", {}).get(result["primary"])
        result["speedup"] = {
            v: base / r["median"][result["primary"]]
            for v, r in result["variants"].items()
            if v != BASELINE.name and base and r["median"][result["primary"]] > 0
        }
    return {
        "workload": workload,
        "timing_modes": list(FIGURES),
        "baseline": BASELINE.name,
        "variants": [{"name": v} for v in variants],
        "points": list(points.values()),
        "device_name": data["params"].get("machine", "?") + " (asv results)",
        "commit": data["commit_hash"],
    }


def print_tables(run: dict) -> None:
    for mode in run["timing_modes"]:
        rows = [p for p in run["points"] if p["mode"] == mode]
        names = [v["name"] for v in run["variants"]]
        print(f"\n{run['workload']}, {mode} ({rows[0]['primary'][:-3]} us per step); speedup over {run['baseline']}")
        keys = list(rows[0]["point"])
        print(" | ".join(keys + names + [f"speedup {n}" for n in names if n != run["baseline"]]))
        for p in rows:
            cells = [str(p["point"][k]) for k in keys]
            cells += [f"{p['variants'][n]['median'][p['primary']]:.1f}" if n in p["variants"] else "-" for n in names]
            cells += [f"{p['speedup'][n]:.2f}x" if n in p["speedup"] else "-" for n in names if n != run["baseline"]]
            print(" | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="an asv results file (results/<machine>/<commit>-*.json)")
    parser.add_argument("--workload", choices=list(MODULES), required=True)
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args()
    run = read(args.results, args.workload)
    print_tables(run)
    if args.plot:
        from disagmoe_bench.plot import crossover_map

        crossover_map(run, args.plot)


if __name__ == "__main__":
    main()

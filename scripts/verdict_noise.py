"""How far the verdict benchmarks move between processes of one commit, read from the
results that `asv continuous -a rounds=N` wrote (scripts/verdicts.sh runs it).

The verdict benchmarks are those scripts/verdicts.sh compares (`--bench`, the same regex:
benchmarks/verdict_set.py): the seed's `RelativeTime` and `InverseSpeedup`, the serving
benchmarks' `InverseSpeedup` (`bench_pipelined`, `bench_trace`) and `RelativeStep` (median
and tail; `bench_pipelined`, `bench_trace`, `bench_replay`). Each measures its whole grid in one `setup_cache`
process per round; `asv continuous` runs N rounds of each commit, the commits taking
turns, and records every process's samples one after the other (9 per grid point each:
the rounds of `common.measure_relative_times`, the serving benchmarks' windows). Split back into processes, they say how
much the same code moves from one process to the next on this machine: the noise
that a verdict between two commits cannot tell from a change. Where that is beyond
asv's factor, a flagged point may be noise, and this says so, with the spread.

    python3 -m scripts.verdict_noise --rounds N --factor F [--bench REGEX] BASE.json HEAD.json

With `--base BASE.json --head HEAD.json` it gives the verdict itself (scripts/verdicts.sh),
benchmark by benchmark, each with the smallest slowdown it could have told from noise:

- the minimum detectable change (MDC) of a benchmark is the largest ratio between two
  processes of one commit over every grid point of every verdict benchmark of its kind
  (the medians, or the tail), both commits: identical code moved that much in this very
  run, so a smaller change is one this run cannot tell from noise. (Taken over one
  benchmark alone it was too small: on the 2-core VM, identical code moved a whole trace
  benchmark by 1.17x-1.24x between the commits while its own processes stayed within 13%;
  the line of each benchmark also prints its own);
- a point is "slower" where HEAD's median over BASE's exceeds both the benchmark's factor
  (benchmarks/verdict_set.py: 1.05 for the medians, 1.25 for the tail) and 1 + MDC, and
  every process of HEAD was slower than every process of BASE; "faster" the other way;
- every other point is "no change" where the MDC is below the factor, and "inconclusive"
  where it is not: there a change as large as the factor could have gone unseen.

Exit code: 1 where a point is slower, else 3 where a benchmark is inconclusive, else 0
(2: nothing to judge). `--json PATH` writes the verdict (per benchmark: factor, MDC, points
with their ratio and verdict) for other tools (scripts/check_regression.sh's table).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys

from benchmarks.verdict_set import MEDIAN_FACTOR, TAIL, TAIL_FACTOR, VERDICTS, factor_of

SHORT = {
    "bench_relative.": "",
    "bench_speedup.": "",
    "bench_pipelined.": "decode ",
    "bench_trace.": "trace ",
    "bench_replay.": "replay ",
}


def point_samples(
    path: str, rounds: int, bench: str = VERDICTS
) -> dict[tuple[str, tuple[str, ...]], list[list[float]]]:
    """(asv's benchmark name, grid point) -> each process's samples, from one commit's
    results (asv records the processes' samples one after the other)."""
    with open(path) as f:
        data = json.load(f)
    columns = data["result_columns"]
    out = {}
    for name, row in data["results"].items():
        if not re.search(bench, name):
            continue
        row = row + [None] * (len(columns) - len(row))  # asv leaves out a failed benchmark's empty columns
        points: list[list[str]] = [[]]
        for values in row[columns.index("params")] or []:
            points = [p + [v] for p in points for v in values]
        for point, samples in zip(points, row[columns.index("samples")] or []):
            if not samples or len(samples) % rounds:
                continue
            size = len(samples) // rounds
            out[(name, tuple(point))] = [samples[i : i + size] for i in range(0, len(samples), size)]
    return out


def process_medians(path: str, rounds: int, bench: str = VERDICTS) -> dict[str, list[float]]:
    """(benchmark and grid point) -> the median of each process's samples."""
    return {
        f"{short(name)}({', '.join(point)})": [statistics.median(p) for p in processes]
        for (name, point), processes in point_samples(path, rounds, bench).items()
    }


def short(name: str) -> str:
    """bench_relative.RelativeTime.track_X -> "RelativeTime X"; the serving benchmarks' names
    say their workload: bench_trace.InverseSpeedup.track_pipelined -> "trace InverseSpeedup
    pipelined"."""
    module, _, rest = name.partition(".")
    return SHORT.get(module + ".", module + " ") + rest.replace(".track_", " ")


def spread(medians: list[float]) -> float:
    """(max - min) / median of one point's process medians."""
    return (max(medians) - min(medians)) / statistics.median(medians)


def judge(
    base_path: str,
    head_path: str,
    rounds: int,
    bench: str = VERDICTS,
    median_factor: float = MEDIAN_FACTOR,
    tail_factor: float = TAIL_FACTOR,
) -> dict[str, dict]:
    """The verdict of HEAD against BASE (the module docstring): {benchmark: {"name", "factor",
    "mdc", "verdict", "points": [{"point", "ratio", "base", "head", "verdict"}]}} ("base" and
    "head": each process's median), over the points both commits measured."""
    base, head = point_samples(base_path, rounds, bench), point_samples(head_path, rounds, bench)
    benchmarks: dict[str, dict] = {}
    for name, point in sorted(base.keys() & head.keys()):
        entry = benchmarks.setdefault(
            short(name), {"name": name, "factor": factor_of(name, median_factor, tail_factor), "mdc": 0.0, "points": []}
        )
        medians = {}
        for which, processes in (("base", base[(name, point)]), ("head", head[(name, point)])):
            medians[which] = [statistics.median(p) for p in processes]
            entry["mdc"] = max(entry["mdc"], max(medians[which]) / max(min(medians[which]), 1e-12) - 1)
        ratio = statistics.median(sum(head[(name, point)], [])) / max(
            statistics.median(sum(base[(name, point)], [])), 1e-12
        )
        entry["points"].append({"point": list(point), "ratio": ratio, **medians})
    return relabel(benchmarks)


def relabel(benchmarks: dict[str, dict]) -> dict[str, dict]:
    """Each benchmark's MDC becomes the largest of its kind (the medians, or the tail) in the
    run ("own_mdc" keeps its own), and each point its verdict by it (the module docstring)."""
    largest: dict[bool, float] = {}
    for entry in benchmarks.values():
        entry["own_mdc"] = entry.get("own_mdc", entry["mdc"])
        tail = re.search(TAIL, entry["name"]) is not None
        largest[tail] = max(largest.get(tail, 0.0), entry["own_mdc"])
    for entry in benchmarks.values():
        entry["mdc"] = largest[re.search(TAIL, entry["name"]) is not None]
        factor, mdc = entry["factor"], entry["mdc"]
        bar = max(factor, 1 + mdc)
        blind = 1 + mdc > factor
        for p in entry["points"]:
            r = p["ratio"]
            if r > bar and min(p["head"]) > max(p["base"]):
                p["verdict"] = "slower"
            elif r < 1 / bar and max(p["head"]) < min(p["base"]):
                p["verdict"] = "faster"
            else:
                p["verdict"] = "inconclusive" if blind else "no change"
        found = {p["verdict"] for p in entry["points"]}
        entry["verdict"] = next(v for v in ("slower", "inconclusive", "faster", "no change") if v in found)
    return benchmarks


def report(benchmarks: dict[str, dict]) -> int:
    """Prints the verdict benchmark by benchmark, then the points that moved past their factor;
    returns the exit code (1 slower, 3 inconclusive, 0 otherwise)."""
    print("verdict: benchmark by benchmark; MDC = the smallest slowdown this run could tell from noise")
    for key, entry in sorted(benchmarks.items()):
        ratios = [p["ratio"] for p in entry["points"]]
        counts = {v: sum(p["verdict"] == v for p in entry["points"]) for v in ("slower", "faster")}
        moved = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        print(
            f"  {key:<52} factor {entry['factor']:.2f}, MDC {entry['mdc']:4.0%} (own {entry['own_mdc']:4.0%}):"
            f" {entry['verdict']}"
            f" ({len(ratios)} points, {min(ratios):.2f}x-{max(ratios):.2f}x{', ' + moved if moved else ''})"
        )
    for _, entry in sorted(benchmarks.items()):
        for p in entry["points"]:
            if p["ratio"] > entry["factor"] or p["ratio"] < 1 / entry["factor"]:
                print(
                    f"  {p['verdict']:<12} {short(entry['name'])}({', '.join(p['point'])}): {p['ratio']:.2f}x"
                    f" (factor {entry['factor']:.2f}, MDC {entry['mdc']:.0%})"
                )
    slower = sum(p["verdict"] == "slower" for e in benchmarks.values() for p in e["points"])
    blind = [e for e in benchmarks.values() if e["verdict"] == "inconclusive"]
    if slower:
        print(f"verdict: SLOWER at {slower} points, each beyond its factor and beyond this run's noise")
        return 1
    if blind:
        print(
            f"verdict: INCONCLUSIVE: no point moved beyond this run's noise, but {len(blind)} of {len(benchmarks)}"
            f" benchmarks could not have told a change of their factor from it (MDC up to"
            f" {max(e['mdc'] for e in blind):.0%}): not 'no change'"
        )
        return 3
    print("verdict: no change beyond any factor, and this run could have seen one")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, required=True, help="processes per commit (asv -a rounds=N)")
    parser.add_argument(
        "--factor", type=float, default=MEDIAN_FACTOR, help=f"the medians' factor (default {MEDIAN_FACTOR})"
    )
    parser.add_argument("--bench", default=VERDICTS, help=f"the verdicts' asv --bench regex (default {VERDICTS})")
    parser.add_argument("--tail-factor", type=float, default=TAIL_FACTOR, help=f"the tail's (default {TAIL_FACTOR})")
    parser.add_argument("--base", help="BASE's asv results file: with --head, the verdict")
    parser.add_argument("--head", help="HEAD's asv results file")
    parser.add_argument("--json", help="with --base and --head: write the verdict here")
    parser.add_argument("results", nargs="*", help="asv results files of the commits compared")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        print("verdict_noise: one process per commit tells nothing of the noise (rounds >= 2)", file=sys.stderr)
        return 2
    if args.base or args.head:
        if not (args.base and args.head):
            print("verdict_noise: --base and --head go together", file=sys.stderr)
            return 2
        benchmarks = judge(args.base, args.head, args.rounds, args.bench, args.factor, args.tail_factor)
        if not benchmarks:
            print(f"verdict_noise: no verdict benchmark measured by both {args.base} and {args.head}", file=sys.stderr)
            return 2
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rounds": args.rounds, "benchmarks": benchmarks}, f, indent=1)
        return report(benchmarks)
    if not args.results:
        print("verdict_noise: give asv results files, or --base and --head", file=sys.stderr)
        return 2
    spreads: dict[str, float] = {}
    for path in args.results:
        for point, medians in process_medians(path, args.rounds, args.bench).items():
            spreads[point] = max(spreads.get(point, 0.0), spread(medians))
    if not spreads:
        print("verdict_noise: no verdict benchmark with recorded samples in " + " ".join(args.results), file=sys.stderr)
        return 2
    limit = args.factor - 1
    values = sorted(spreads.values())
    worst = max(spreads, key=spreads.get)
    beyond = sum(v > limit for v in values)
    print(
        f"verdict noise: the same commit, one process against the next ({args.rounds} a commit): "
        f"median {statistics.median(values):.0%}, largest {values[-1]:.0%} ({worst}); "
        f"{beyond} of {len(values)} points beyond the factor {args.factor:g} ({limit:.0%})"
    )
    by_benchmark: dict[str, list[float]] = {}
    for point, value in spreads.items():
        name, _, params = point.partition("(")
        first = params.split(",")[0]  # a backend or variant, quoted, is part of the row's name
        by_benchmark.setdefault(name + (" " + first if first.startswith("'") else ""), []).append(value)
    for key, vs in sorted(by_benchmark.items()):
        print(f"  {key:<52} median {statistics.median(vs):4.0%}, largest {max(vs):4.0%}")
    if beyond:
        print(
            f"verdict noise: WARNING: this machine's noise is beyond the factor {args.factor:g}: identical "
            f"code moved by up to {values[-1]:.0%} here, so a point flagged above may be noise, and only a "
            f"change well beyond {values[-1]:.0%} is one this machine can show."
        )
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())

"""How far the verdict benchmarks move between processes of one commit, read from the
results that `asv continuous -a rounds=N` wrote (scripts/verdicts.sh runs it).

The verdict benchmarks are those scripts/verdicts.sh compares (`--bench`, the same regex):
the seed's `RelativeTime` and `InverseSpeedup` and the serving benchmarks' `InverseSpeedup`
(`bench_pipelined`, `bench_trace`). Each measures its whole grid in one `setup_cache`
process per round; `asv continuous` runs N rounds of each commit, the commits taking
turns, and records every process's samples one after the other (9 per grid point each:
the rounds of `common.measure_relative_times`, the serving benchmarks' windows). Split back into processes, they say how
much the same code moves from one process to the next on this machine: the noise
that a verdict between two commits cannot tell from a change. Where that is beyond
asv's factor, a flagged point may be noise, and this says so, with the spread.

    python3 scripts/verdict_noise.py --rounds N --factor F [--bench REGEX] BASE.json HEAD.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys

VERDICTS = "RelativeTime|InverseSpeedup"
"""asv's --bench regex of the verdicts (scripts/verdicts.sh passes the one it ran)."""
SHORT = {"bench_relative.": "", "bench_speedup.": "", "bench_pipelined.": "decode ", "bench_trace.": "trace "}


def process_medians(path: str, rounds: int, bench: str = VERDICTS) -> dict[str, list[float]]:
    """(benchmark and grid point) -> the median of each process's samples."""
    with open(path) as f:
        data = json.load(f)
    columns = data["result_columns"]
    out = {}
    for name, row in data["results"].items():
        if not re.search(bench, name):
            continue
        params = row[columns.index("params")]
        points = [[]]
        for values in params:
            points = [p + [v] for p in points for v in values]
        for point, samples in zip(points, row[columns.index("samples")] or []):
            if not samples or len(samples) % rounds:
                continue
            size = len(samples) // rounds
            out[f"{short(name)}({', '.join(point)})"] = [
                statistics.median(samples[i : i + size]) for i in range(0, len(samples), size)
            ]
    return out


def short(name: str) -> str:
    """bench_relative.RelativeTime.track_X -> "RelativeTime X"; the serving benchmarks' names
    say their workload: bench_trace.InverseSpeedup.track_pipelined -> "trace InverseSpeedup
    pipelined"."""
    module, _, rest = name.partition(".")
    return SHORT.get(module + ".", module + " ") + rest.replace(".track_", " ")


def spread(medians: list[float]) -> float:
    """(max - min) / median of one point's process medians."""
    return (max(medians) - min(medians)) / statistics.median(medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, required=True, help="processes per commit (asv -a rounds=N)")
    parser.add_argument("--factor", type=float, default=1.1, help="asv's threshold (default 1.1)")
    parser.add_argument("--bench", default=VERDICTS, help=f"the verdicts' asv --bench regex (default {VERDICTS})")
    parser.add_argument("results", nargs="+", help="asv results files of the commits compared")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        print("verdict_noise: one process per commit tells nothing of the noise (rounds >= 2)", file=sys.stderr)
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
        f"{beyond} of {len(values)} points beyond asv's factor {args.factor:g} ({limit:.0%})"
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
            f"verdict noise: WARNING: this machine's noise is beyond asv's factor {args.factor:g}: identical "
            f"code moved by up to {values[-1]:.0%} here, so a point flagged above may be noise, and only a "
            f"change well beyond {values[-1]:.0%} is one this machine can show."
        )
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())

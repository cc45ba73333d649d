"""The table of scripts/compare_commits.sh: per design and point, each round's median host
time of a step for the old and the new commit, their ratio, and each process's canary.

    python3 scripts/probes/compare_report.py out/compare/steps.jsonl --old SHA --new SHA
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def point(r: dict) -> str:
    if r["workload"] == "decode":
        return f"{r['design']} B={r['batch_size']} L={r['context']}"
    return f"{r['design']} trace R={r['running']} P={r['max_prompt']}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    args = parser.parse_args()
    runs: list[list[dict]] = []  # one list of results per process, in order
    with open(args.results) as f:
        for line in f:
            r = json.loads(line)
            if "canary_us" in r:
                runs.append([r])
            else:
                runs[-1].append(r)
    medians: dict[tuple[str, str], list[float]] = defaultdict(list)
    canaries: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        label = run[0]["label"]
        canaries[label].append(run[0]["canary_us"])
        for r in run[1:]:
            medians[(point(r), label)].append(r["host_median_us"])
    print(
        f"Median host time of a pipelined step, us, per round (old {args.old}, new {args.new}); "
        f"card: {runs[0][0]['card']}\n"
    )
    print("| design, point | new | old | new / old |")
    print("|---|---|---|---|")
    for p in sorted({p for p, _ in medians}):
        new, old = medians.get((p, args.new), []), medians.get((p, args.old), [])
        ratios = ", ".join(f"{n / o:.2f}" for n, o in zip(new, old)) if new and old else "-"
        print(
            f"| {p} | {', '.join(f'{v:.1f}' for v in new) or '-'} | {', '.join(f'{v:.1f}' for v in old) or '-'} "
            f"| {ratios} |"
        )
    print(
        f"\nCanary (host-only workload, us) per process: new {', '.join(f'{v:.0f}' for v in canaries[args.new])}; "
        f"old {', '.join(f'{v:.0f}' for v in canaries[args.old])}"
    )


if __name__ == "__main__":
    main()

"""asv's output with its skip notices folded: `asv run --show-stderr | python3 scripts/lib/skips.py`.

asv writes two lines for every grid point a benchmark skips ("For parameters: ..." and
"asv: skipped: <why>"), hundreds on a machine without CUDA. This passes every other line
through as it comes and ends with one line per reason (its first number written N, so that
one limit hit at many sizes is one reason): how many points of how many benchmarks.
"""

from __future__ import annotations

import re
import sys

BENCHMARK = re.compile(r"^\[\s*[\d.]+%\] ··· ([A-Za-z_][\w.]*\.\w+)\s")
POINT = re.compile(r"^(\[\s*[\d.]+%\] ····)?\s*For parameters: ")
SKIPPED = re.compile(r"^\s*asv: skipped: (.*)$")


def fold(lines, out) -> dict[str, tuple[int, set[str]]]:
    """Writes `lines` to `out` without the skip notices; returns {reason: (points, benchmarks)}."""
    groups: dict[str, tuple[int, set[str]]] = {}
    benchmark, held, after_skip = "", None, False
    for line in lines:
        found = BENCHMARK.match(line)
        if found:
            benchmark = found.group(1)
        skipped = SKIPPED.match(line) if held is not None else None
        if skipped:
            reason = re.sub(r"\d+", "N", skipped.group(1).strip(), count=1)
            points, names = groups.get(reason, (0, set()))
            groups[reason] = (points + 1, names | {benchmark})
            held, after_skip = None, True
            continue
        if held is not None:
            out.write(held)
            held = None
        if after_skip and not line.strip():
            after_skip = False
            continue
        after_skip = False
        if POINT.match(line):
            held = line
            continue
        out.write(line)
        out.flush()
    if held is not None:
        out.write(held)
    return groups


def main() -> int:
    groups = fold(sys.stdin, sys.stdout)
    for reason, (points, names) in sorted(groups.items()):
        count = f"{len(names)} benchmark" + ("s" if len(names) != 1 else "")
        print(f"asv skipped {points} grid points of {count}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

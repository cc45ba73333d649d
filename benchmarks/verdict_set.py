"""The verdict set: which benchmarks a verdict between two commits reads, and the factor each
must pass (scripts/verdicts.sh, scripts/verdict_noise.py, scripts/check_regression.sh; the
site may read it too). Plain data, no import of torch or of the package, so that scripts
read it quickly.

Every verdict benchmark is a ratio measured in one process against work timed in turn with
it (the reference step, or the cpu design), lower is better: a rise by more than its factor,
and by more than the run's own noise (the minimum detectable change, verdict_noise.py), is
a regression.

- the medians, factor 1.05: `RelativeTime` (each operation over the seed suite's
  reference), `InverseSpeedup` (a design's time over the cpu design's) and the serving
  modules' `RelativeStep.track_pipelined` (the pipelined step's wall time over the
  reference step's). A 10% slowdown is what they must catch at every point; at asv's own
  1.1 a 10% slowdown's ratios land on both sides of the factor, so the factor is half of
  it, and the run's minimum detectable change says where the machine cannot see even that;
- the tail, factor 1.25: `RelativeStep.track_pipelined_host_p99` (the p99 of each step's host
  time over the reference step's, 128 steps a sample: step_tail.py). A p99 of 128 steps
  is the second-largest step, which moves more from sample to sample than a median of 32
  windows; the regression it is there for, a stall in one step of fifty, moves it by far
  more than 1.25 (a stall of twice a median step puts a p99 near three median steps).
"""

import re

MEDIAN_FACTOR = 1.05
TAIL_FACTOR = 1.25

VERDICTS = r"RelativeTime|InverseSpeedup|RelativeStep"
"""asv's --bench regex of the whole verdict set (the tail included)."""

TAIL = r"\.RelativeStep\.track_pipelined_host_p99$"
"""The tail verdicts, by benchmark name (re.search); every other verdict is a median."""


def factor_of(benchmark: str, median_factor: float = MEDIAN_FACTOR, tail_factor: float = TAIL_FACTOR) -> float:
    """The factor a change of `benchmark` (asv's name, without parameters) must pass."""
    return tail_factor if re.search(TAIL, benchmark) else median_factor


SENSITIVITY = {
    "cpu-2core-vm": {
        "date": "2026-12-07",
        "commit": "3c61fd7",
        "command": 'scripts/check_regression.sh --injected --slowdown "10 400" --rounds 3',
        "mdc": {
            "decode RelativeStep pipelined": {
                "uniform-10": 2.92,
                "uniform-400": 0.97,
                "stall": 0.32,
                "identical": 0.52,
            },
            "decode RelativeStep pipelined_host_p99": {
                "uniform-10": 22.42,
                "uniform-400": 4.08,
                "stall": 1.07,
                "identical": 0.69,
            },
            "replay RelativeStep pipelined": {
                "uniform-10": 2.92,
                "uniform-400": 0.97,
                "stall": 0.32,
                "identical": 0.52,
            },
            "replay RelativeStep pipelined_host_p99": {
                "uniform-10": 22.42,
                "uniform-400": 4.08,
                "stall": 1.07,
                "identical": 0.69,
            },
            "trace RelativeStep pipelined": {"uniform-10": 2.92, "uniform-400": 0.97, "stall": 0.32, "identical": 0.52},
            "trace RelativeStep pipelined_host_p99": {
                "uniform-10": 22.42,
                "uniform-400": 4.08,
                "stall": 1.07,
                "identical": 0.69,
            },
        },
    },
    "h200": None,
}
"""Measured sensitivity per machine (docs/performance.md, "Verdict sensitivity"): per verdict
benchmark (verdict_noise.py's short name), the minimum detectable change of each injected
run (the largest of its kind, median or tail, in that run), as a fraction (2.92: identical
code moved by 292%, so only a change beyond 3.92x could be told from noise in that run).
None: owed (the command is in docs/performance.md). A live run's own figures are in
.asv/verdicts/<machine>.json (scripts/verdicts.sh)."""

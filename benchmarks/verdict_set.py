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

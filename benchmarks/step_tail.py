"""The tail verdict of the serving benchmarks: p99 of each step's host time over the reference's.

A serving engineer reads p99 time per output token, and a step that stalls one time in fifty
moves the p99 of the step's host time while the median and the mean barely move. So beside
`RelativeStep.track_pipelined` (the median window's wall time over the reference step's)
each serving module's `RelativeStep` tracks `track_pipelined_host_p99`: per sample, the
p99 of a variant's per-step host times over the p99 of the reference step's, both from the
same windows of the same process (the runners take turns window by window), so that the
machine's speed of the moment divides out as it does for the median. Lower is better.

Steps per sample: `TAIL_STEPS` (128), consecutive windows joined until a sample holds at
least that many (4 windows of 32). The p99 is the nearest rank, which for n steps is the
ceil(0.99 n)-th smallest: below 100 steps that is the largest step (one stray interrupt
or collector pause would set it), from 100 steps the second largest, so a sample of 128
steps reads a tail that at least two steps share. A stall in one step of fifty puts two or
three stalled steps in every sample, and so moves every sample's p99. The 9 windows of a
process give 2 samples (the ninth window is left out of the tail).

The per-step host times are those the harness's `measure` keeps for its own tail summary
(`timing.tail`): `measure_keeping_steps` reads them there, so the steps are timed exactly
as before and the other figures are untouched. A commit whose harness keeps no per-step
times has no tail samples (asv: n/a).
"""

from __future__ import annotations

import math

from .common import SkipNotImplemented

TAIL_STEPS = 128
TAIL_QUANTILE = 0.99


def measure_keeping_steps(timing_module, runners: dict, mode: str, timing, forward) -> dict:
    """`timing_module.measure(...)["runners"]` for one point and mode; in pipelined mode each
    runner's figures also hold "host_steps_us": every timed step's host time (us), one list
    per window, in the order the windows ran."""
    summarise = getattr(timing_module, "tail", None)
    kept: list[list[float]] = []

    def keep(step_times):
        kept.append(list(step_times))
        return summarise(step_times)

    if summarise is not None:
        timing_module.tail = keep
    try:
        result = timing_module.measure(runners, mode, timing.window, timing.windows, timing.warmup, forward)
    finally:
        if summarise is not None:
            timing_module.tail = summarise
    figures = result["runners"]
    if mode == "pipelined" and len(kept) == len(figures):
        n = result["steps_per_window"]
        for steps, runner_figures in zip(kept, figures.values()):
            runner_figures["host_steps_us"] = [[t * 1e6 for t in steps[i : i + n]] for i in range(0, len(steps), n)]
    return figures


def nearest_rank(values: list[float], quantile: float) -> float:
    """The quantile of `values` by nearest rank (as the harness's tail): the
    ceil(quantile * n)-th smallest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]


def tail_samples(windows: list[list[float]], steps: int = TAIL_STEPS) -> list[list[float]]:
    """Consecutive windows joined into samples of at least `steps` steps each (a last,
    shorter remainder is left out)."""
    samples, current = [], []
    for window in windows:
        current.extend(window)
        if len(current) >= steps:
            samples.append(current)
            current = []
    return samples


def tail_ratios(cache: dict, key: tuple, runner: str, over: str = "reference") -> dict:
    """asv's samples of the tail verdict: per sample (`tail_samples`), the p99 of `runner`'s
    step host times over the p99 of `over`'s from the same windows."""
    figures = cache["points"][key]["pipelined"]
    mine, theirs = figures[runner].get("host_steps_us"), figures[over].get("host_steps_us")
    if not mine or not theirs:
        raise SkipNotImplemented("this commit's serving harness keeps no per-step host times to take a p99 of")
    ratios = [
        nearest_rank(a, TAIL_QUANTILE) / nearest_rank(b, TAIL_QUANTILE)
        for a, b in zip(tail_samples(mine), tail_samples(theirs))
    ]
    if not ratios:
        raise SkipNotImplemented(f"fewer than {TAIL_STEPS} timed steps: no p99 that is not a window's maximum")
    return {"samples": [float(f"{r:.4g}") for r in ratios], "number": 1}

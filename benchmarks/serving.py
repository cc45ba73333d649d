"""What the serving benchmark modules (bench_pipelined, bench_trace, bench_replay, bench_prefix)
share: their grids, the reference step their verdicts divide by, and the one measurement of a
whole grid.

The workloads, timing modes and variants are the installed commit's serving harness
(`common.harness`: the lab package `disagmoe_bench`), the same ones `python -m disagmoe_bench --workload ...` runs. A
module's `setup_cache` measures its whole grid in one process, every timing mode, the
variants and the reference taking turns window by window; each `track_` then reads its
figure, the windows being asv's samples. On torch's CPU device (no CUDA) the points past
`CPU_DEVICE_TOKENS` tokens are skipped (the `gpu` design's torch kernels would take
minutes there), as is the `busy` mode everywhere but on CUDA; a commit whose package
predates the serving benchmarks (or a variant's backend) skips them too.
"""

from __future__ import annotations

import os
import re
import statistics

from .common import ReferenceWork, SkipNotImplemented, check_fork_safe, env_ints, harness, workloads
from .step_tail import TAIL_STEPS, measure_keeping_steps, tail_ratios

_ints = env_ints
ALL_MODES = ("synced", "pipelined", "busy")


def _names(variable: str, default: list[str], pattern: str, what: str) -> list[str]:
    """The names listed in `variable`, each matching `pattern`; ValueError naming the
    variable and the value otherwise."""
    text = os.environ.get(variable, "")
    names = text.replace(",", " ").split() or default
    for name in names:
        if not re.fullmatch(pattern, name):
            raise ValueError(f"{variable}={text!r}: {name!r} is not {what}")
    return names


# The default is a literal for the reason common.DESIGNS is (old commits, stable history);
# the lab's own list is disagmoe_bench.variants.VARIANT_NAMES, from the registry.
VARIANTS = _names(
    "DISAGMOE_SERVING_VARIANTS",
    ["cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16"],
    r"[a-z]+-bs[1-9][0-9]{0,8}",
    "a variant such as cpu-bs16 (<backend>-bs<block size>)",
)
BASELINE = "cpu-bs16"
COMPARED = [v for v in VARIANTS if v != BASELINE]
BATCH_SIZES = _ints("DISAGMOE_SERVING_BATCH_SIZES", [16, 64, 256, 1024])
CONTEXTS = _ints("DISAGMOE_SERVING_CONTEXTS", [1024, 8192, 65536])
TRACE_RUNNING = _ints("DISAGMOE_TRACE_RUNNING", [64, 256, 1024])
TRACE_PROMPTS = _ints("DISAGMOE_TRACE_PROMPTS", [2048, 16384, 65536])
REPLAY_TRACES = _names(
    "DISAGMOE_REPLAY_TRACES",
    ["azure-conv", "mooncake"],
    "azure-conv|mooncake",
    "a bundled trace (azure-conv, mooncake)",
)
PREFIX_TRACES = _names(
    "DISAGMOE_PREFIX_TRACES",
    ["mooncake", "servegen-offline", "servegen-offline-poisson"],
    "mooncake|servegen-offline|servegen-offline-poisson",
    "a bundled trace with prefix hashes (mooncake, servegen-offline, servegen-offline-poisson)",
)
PREFIX_MODES = ["off", "miss", "on"]
PREFIX_VARIANTS = [v for v in VARIANTS if v.endswith("-bs16")]  # a prefix replay's block size is its scheduler's
MODES = tuple(
    _names("DISAGMOE_SERVING_MODES", list(ALL_MODES), "|".join(ALL_MODES), f"a timing mode ({', '.join(ALL_MODES)})")
)
CPU_DEVICE_TOKENS = 1 << 20
WINDOW, WINDOWS, WARMUP = 32, 9, 16  # steps a window, windows (asv's samples), untimed steps first


def _point(kind: str, key: tuple[int, int]) -> tuple[object, int]:
    """(workload factory, tokens at the start) of a decode (B, L) or trace (R, P) point."""
    points = harness("points")
    TraceConfig = harness("workloads").TraceConfig

    if kind == "decode":
        return points.decode_point(*key), key[0] * key[1]
    return points.trace_point(TraceConfig(*key)), key[0] * key[1]


def _replay_point(key: tuple[str]) -> tuple[object, int]:
    """(workload factory, the pool's slots) of a bundled trace's replay: the scheduler's
    defaults, its busiest stretch (bench_replay's docstring)."""
    traces, scheduler = harness("traces"), harness("scheduler")
    SchedulerConfig, TraceReplay, busiest_window = (
        scheduler.SchedulerConfig,
        scheduler.TraceReplay,
        scheduler.busiest_window,
    )

    name = {"azure-conv": "azure", "mooncake": "mooncake"}[key[0]]
    requests, config = traces.read_trace(traces.bundled(name), name), SchedulerConfig()

    def factory(num_steps: int) -> TraceReplay:
        return TraceReplay(requests, config, busiest_window(requests, config, num_steps), num_steps, key[0])

    return factory, config.num_blocks * config.block_size


def _prefix_point(key: tuple[str, str]) -> tuple[object, int]:
    """(workload factory, the pool's slots) of a bundled trace's replay in a prefix-cache mode
    (trace name, "off" | "miss" | "on"): the scheduler's defaults, its busiest stretch."""
    traces, scheduler = harness("traces"), harness("scheduler")
    requests, config = traces.read_replay(key[0]), scheduler.SchedulerConfig()

    def factory(num_steps: int):
        start = scheduler.busiest_window(requests, config, num_steps)
        return scheduler.TraceReplay(requests, config, start, num_steps, key[0], key[1])

    return factory, config.num_blocks * config.block_size


def measure_prefix(names: list[str], modes: list[str]) -> dict:
    """Every bundled trace of `names` in every prefix-cache mode of `modes`, the variants at
    the scheduler's block size, timed pipelined (and busy on CUDA); "prefix" holds each
    replay's window figures (`TraceReplay.prefix_stats`). A commit whose lab or managers
    have no prefix cache skips them."""
    try:
        if not hasattr(harness("scheduler"), "PREFIX_MODES"):
            raise ImportError("its scheduler has no prefix_cache")
        missing = [v for v in PREFIX_VARIANTS if not hasattr(_design_class(v), "match_prefix")]
        if missing:
            raise ImportError(f"the managers of {', '.join(missing)} have no match_prefix")
    except (ImportError, KeyError) as err:
        return _unavailable(f"this commit's package has no prefix cache ({err})")
    keys = [(name, mode) for name in names for mode in modes]
    return measure_grid("prefix", keys, PREFIX_VARIANTS, [m for m in MODES if m != "synced"])


def _unavailable(reason: str) -> dict:
    """What a measurement returns when the installed commit cannot make it: nothing
    measured, and why (each benchmark then skips with that reason)."""
    return {
        "device": "-",
        "on_cuda": False,
        "skipped": {},
        "points": {},
        "missing_variants": {},
        "unavailable": reason,
    }


def _design_class(variant_name: str) -> type:
    import disagmoe

    return disagmoe.BACKENDS[variant_name.rpartition("-bs")[0]]


def measure_replays(names: list[str]) -> dict:
    """Every bundled trace of `names`, replayed in every mode (`measure_grid`); a commit
    whose package has no scheduler skips them."""
    try:
        harness("scheduler")
    except ImportError as err:
        return _unavailable(f"this commit's package has no trace replays ({err})")
    return measure_grid("replay", [(name,) for name in names])


def measure_grid(
    kind: str, keys: list[tuple], variant_names: list[str] | None = None, timing_modes: list[str] | None = None
) -> dict:
    """Every point of a decode grid (B, L), trace grid (R, P), of replays (trace name,) or
    of prefix-cache replays (trace name, mode) in every timing mode (`timing_modes`, default
    MODES), for `variant_names` (default VARIANTS); see the module docstring.

    Returns {"device", "on_cuda", "skipped": {key: reason}, "points": {key: {mode:
    {runner: samples}}}, "prefix": {key: window figures}} with samples as
    `disagmoe_bench.timing.measure` gives them (pipelined: with every step's host time,
    window by window, under "host_steps_us": step_tail.py), the reference under "reference"."""
    check_fork_safe()
    bench = workloads()
    device = bench.default_device()
    bench.limit_cpu_threads(device)
    out: dict = {"device": bench.device_name(device), "on_cuda": device.type == "cuda", "skipped": {}, "points": {}}
    out["prefix"] = {}
    try:
        serving_points, timing_module, variants_module = harness("points"), harness("timing"), harness("variants")
        Forward, Replay = timing_module.Forward, timing_module.Replay
        make_manager, variant = variants_module.make_manager, variants_module.variant
    except ImportError as err:
        out["unavailable"] = f"this commit's package has no serving benchmarks ({err})"
        return out
    variants, missing = {}, {}
    for name in variant_names or VARIANTS:
        try:
            variants[name] = variant(name)
        except ValueError as err:
            missing[name] = str(err)
    out["missing_variants"] = missing
    timing = serving_points.Timing(window=WINDOW, windows=WINDOWS, warmup=WARMUP)
    forward = Forward(timing.forward_us, device) if device.type == "cuda" else None
    modes = [m for m in timing_modes or MODES if m != "busy" or forward is not None]
    for key in keys:
        if kind == "prefix":
            factory, tokens = _prefix_point(key)
        else:
            factory, tokens = _replay_point(key) if kind == "replay" else _point(kind, key)
        if device.type != "cuda" and tokens > CPU_DEVICE_TOKENS:
            out["skipped"][key] = f"{tokens} tokens: past {CPU_DEVICE_TOKENS} on torch's CPU device"
            continue
        workload = factory(timing.num_steps)
        if kind == "prefix" and key[1] != "off":
            out["prefix"][key] = workload.prefix_stats()
        runners = {
            name: Replay(make_manager(v, workload, timing.num_steps, device), workload) for name, v in variants.items()
        }
        serving_points.check_variants(runners, variants)
        runners["reference"] = ReferenceWork.serving(device)
        out["points"][key] = {
            mode: measure_keeping_steps(timing_module, runners, mode, timing, forward) for mode in modes
        }
        for runner in runners.values():
            if isinstance(runner, Replay):
                runner.manager.reset_state()
        del runners
    return out


def samples(cache: dict, key: tuple, mode: str, runner: str, figure: str) -> dict:
    """asv's samples of one figure (us per step, one per window)."""
    return {"samples": [_digits(v) for v in cache["points"][key][mode][runner][figure]], "number": 1}


def step_tail(cache: dict, key: tuple, mode: str, runner: str, quantile: str = "p99") -> dict:
    """One value: a quantile ("p50", "p99", "max") of every step's own host time over the
    windows (an older commit's package did not keep them: skipped)."""
    steps = cache["points"][key][mode][runner].get("host_step_us")
    if not steps:
        raise SkipNotImplemented("this commit's serving benchmarks kept no per-step host times")
    return {"samples": [_digits(steps[quantile])], "number": 1}


def ratios(cache: dict, key: tuple, mode: str, runner: str, over: str, figure: str = "wall_us") -> dict:
    """Window by window, `runner`'s figure over `over`'s (they ran in the same round); a mode
    left out of the measurement (DISAGMOE_SERVING_MODES) is a skip."""
    if mode not in cache["points"][key]:
        raise SkipNotImplemented(f"{mode} timing was not measured (DISAGMOE_SERVING_MODES)")
    mine = cache["points"][key][mode][runner][figure]
    theirs = cache["points"][key][mode][over][figure]
    return {"samples": [_digits(a / b) for a, b in zip(mine, theirs)], "number": 1}


def _digits(value: float) -> float:
    return float(f"{value:.4g}")


def check_measured(cache: dict, key: tuple, variant_name: str | None = None, mode: str | None = None) -> None:
    """Raises SkipNotImplemented (asv: skipped, n/a) where the cache holds no such figure."""
    if "unavailable" in cache:
        raise NotImplementedError(cache["unavailable"])
    if key in cache["skipped"]:
        raise NotImplementedError(cache["skipped"][key])
    if variant_name in cache["missing_variants"]:
        raise NotImplementedError(cache["missing_variants"][variant_name])
    if mode is not None and mode not in cache["points"][key]:
        raise SkipNotImplemented(f"{mode} timing needs CUDA; this ran on {cache['device']}")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# -- the asv classes of a serving module, from one definition ---------------------------------

_FORWARD = "behind a 300 us forward"
FIGURES = {
    # name: (mode, figure or tail quantile, what asv's page says after "<workload> step")
    "synced": ("synced", "wall_us", ", synced (each call until the device is done): us, lower is better"),
    "pipelined": ("pipelined", "wall_us", ", pipelined (32 back to back): wall us per step, lower is better"),
    "pipelined_host": ("pipelined", "host_us", ", pipelined: host us per step (until the calls return)"),
    "pipelined_host_p50": ("pipelined", "p50", ", pipelined: p50 of each step's host us"),
    "pipelined_host_p90": ("pipelined", "p90", ", pipelined: p90 of each step's host us"),
    "pipelined_host_p99": ("pipelined", "p99", ", pipelined: p99 of each step's host us (the tail)"),
    "pipelined_host_max": ("pipelined", "max", ", pipelined: the slowest step's host us"),
    "busy_added": ("busy", "added_us", f" {_FORWARD}: device us added per step"),
    "busy_host": ("busy", "host_us", f" {_FORWARD}: host us per step"),
}


def _track_figure(workload: str, name: str):
    mode, figure, says = FIGURES[name]

    def track(self, cache, variant, *key):
        if mode == "busy":
            check_measured(cache, key, variant, "busy")
        if figure in ("p50", "p90", "p99", "max"):
            return step_tail(cache, key, mode, variant, figure)
        return samples(cache, key, mode, variant, figure)

    track.pretty_name = f"{workload} step{says}"
    return track


def _track_ratio(workload: str, mode: str, over: str):
    def track(self, cache, variant, *key):
        return ratios(cache, key, mode, variant, over)

    if over == "reference":
        track.pretty_name = f"{workload} step, {mode}: wall time / reference step's, lower is better (verdicts)"
    else:
        track.pretty_name = f"{workload} step, {mode}: variant time / {over} time = 1 / speedup, lower is better"
    return track


def _track_tail_ratio(workload: str):
    def track(self, cache, variant, *key):
        return tail_ratios(cache, key, variant)

    track.pretty_name = (
        f"{workload} step, pipelined: p99 of each step's host time / reference step's "
        f"({TAIL_STEPS} steps a sample), lower is better (tail verdicts)"
    )
    return track


def _setup(self, cache, variant, *key):
    check_measured(cache, key, variant)


def figure_class(
    name: str, workload: str, grid: tuple[list, ...], names: list[str], figures: list[str], variants: list[str]
) -> type:
    """A class `name` of a serving module whose setup_cache measured `grid` (one list of
    values per name in `names`) for `variants`, tracking each of `figures` (FIGURES' names)
    per variant. asv names a benchmark after the module that holds its class and the
    class's name, so each module assigns it under `name`."""
    step = {"track_" + figure: _track_figure(workload, figure) for figure in figures}
    attrs = {"param_names": ["variant", *names], "processes": 1, "setup": _setup, "params": (variants, *grid)}
    return type(name, (), {**attrs, "unit": "us per step", **step})


def step_classes(workload: str, grid: tuple[list, ...], names: list[str], figures: list[str]) -> tuple[type, type]:
    """(Step, RelativeStep): the asv classes of a serving module whose setup_cache measured
    `grid` (one list of values per name in `names`). `Step` tracks each of `figures`
    (FIGURES' names) per variant; `RelativeStep` the verdicts: the pipelined wall time over
    the reference step's (`track_pipelined`) and the p99 of each step's host time over the
    reference step's (`track_pipelined_host_p99`, step_tail.py). asv names a benchmark
    after the module that holds its class and the class's name, so each module assigns
    them under these names."""
    common = {"param_names": ["variant", *names], "processes": 1, "setup": _setup}
    relative = {
        "track_pipelined": _track_ratio(workload, "pipelined", "reference"),
        "track_pipelined_host_p99": _track_tail_ratio(workload),
    }
    return (
        figure_class("Step", workload, grid, names, figures, VARIANTS),
        type(
            "RelativeStep",
            (),
            {**common, "params": (VARIANTS, *grid), "unit": "step time / reference step time", **relative},
        ),
    )


def speedup_class(workload: str, grid: tuple[list, ...], names: list[str]) -> type:
    """InverseSpeedup of a serving module (as `step_classes`): each compared variant's time
    over the baseline's, pipelined and synced, window by window."""
    tracks = {f"track_{mode}": _track_ratio(workload, mode, BASELINE) for mode in ("pipelined", "synced")}
    attrs = {"param_names": ["variant", *names], "processes": 1, "setup": _setup, "params": (COMPARED, *grid)}
    return type("InverseSpeedup", (), {**attrs, "unit": f"variant time / {BASELINE} time", **tracks})


SERVING_FIGURES = ["synced", "pipelined", "pipelined_host", "pipelined_host_p99", "busy_added", "busy_host"]
REPLAY_FIGURES = [
    "synced",
    "pipelined",
    "pipelined_host",
    "pipelined_host_p50",
    "pipelined_host_p90",
    "pipelined_host_p99",
    "pipelined_host_max",
    "busy_added",
]

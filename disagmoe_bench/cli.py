"""`python -m disagmoe_bench --workload decode|trace`: the serving benchmarks' command line.

Per grid point it checks the variants against each other (same lengths and metadata;
block tables too at equal block size), then times them side by side in each timing
mode, prints one table per mode (`disagmoe_bench.summary`) and, with `--plot`, draws the crossover map.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import sys
from typing import Callable

import torch

from disagmoe.block_manager import design
from disagmoe_bench import inputs, points, summary, traces
from disagmoe_bench.attention import AttentionShape
from disagmoe_bench.prefix_hashes import BlockHashes
from disagmoe_bench.scheduler import (
    LAST_STEP,
    PREFIX_MODES,
    RATE_SCALES,
    STEP_SECONDS,
    SchedulerConfig,
    TraceReplay,
    busiest_window,
)
from disagmoe_bench.text import Progress, wrap
from disagmoe_bench.timing import MODES, BusyUnavailable, Forward
from disagmoe_bench.traces import FORMATS, REPLAYS
from disagmoe_bench.variants import BASELINE, VARIANT_NAMES, VARIANTS, variant
from disagmoe_bench.workloads import LENGTHS, PrefixMismatch, TraceConfig

SERVING_OPTIONS = (
    "timing",
    "contexts",
    "running",
    "prompts",
    "chunk",
    "max_output",
    "layers",
    "trace",
    "trace_format",
    "rate_scale",
    "pool_blocks",
    "step_ms",
    "lengths",
    "seed",
    "window",
    "windows",
    "forward_us",
    "variants",
    "plot",
    "model_layers",
    "prefix_cache",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving benchmarks (with --workload)")
    group.add_argument(
        "--workload",
        choices=("decode", "trace", *REPLAYS),
        help="time whole engine steps of this workload (default: the seed's table); "
        f"{', '.join(REPLAYS)} replay the bundled production traces",
    )
    group.add_argument(
        "--trace",
        metavar="PATH",
        help="replay this request log (Azure's CSV, Mooncake's or ServeGen's JSONL) through the scheduler",
    )
    group.add_argument("--trace-format", choices=FORMATS, help="the --trace file's format (default: by its suffix)")
    group.add_argument(
        "--prefix-cache",
        choices=PREFIX_MODES,
        default="off",
        help="replays of traces with prefix hashes: the managers' prefix cache off (default), on, or "
        "on with every hash unique (miss: its cost at a 0%% hit rate); block size 16 variants only",
    )
    group.add_argument(
        "--rate-scale", type=float, default=1.0, help="replays: play the trace this many times faster (default 1)"
    )
    group.add_argument(
        "--pool-blocks",
        type=int,
        default=SchedulerConfig.num_blocks,
        help=f"replays: the scheduler's KV pool, in blocks of 16 (default {SchedulerConfig.num_blocks})",
    )
    group.add_argument(
        "--step-ms",
        type=float,
        default=SchedulerConfig.step_seconds * 1e3,
        help="replays: the engine step's duration the arrivals are mapped with (default 20)",
    )
    group.add_argument(
        "--timing",
        nargs="+",
        choices=MODES,
        metavar="MODE",
        help="synced, pipelined and/or busy (default: all three on CUDA, else synced pipelined)",
    )
    group.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        metavar="L",
        help=f"decode contexts (default {' '.join(map(str, points.CONTEXTS))})",
    )
    group.add_argument(
        "--running",
        type=int,
        nargs="+",
        metavar="R",
        help=f"trace: running requests (default {' '.join(map(str, points.TRACE_RUNNING))}); "
        f"replays: the cap on running requests (default {SchedulerConfig.max_running})",
    )
    group.add_argument(
        "--prompts",
        type=int,
        nargs="+",
        metavar="P",
        help=f"trace: longest prompt (default {' '.join(map(str, points.TRACE_PROMPTS))})",
    )
    group.add_argument(
        "--chunk",
        type=int,
        default=TraceConfig.chunk,
        help="trace: prefill tokens a step; replays: the step's token budget",
    )
    group.add_argument("--max-output", type=int, default=TraceConfig.max_output, help="trace: longest output")
    group.add_argument("--seed", type=int, default=TraceConfig.seed, help="trace: random seed")
    group.add_argument("--layers", type=int, help="layers a step (default: decode 1, trace 2)")
    group.add_argument(
        "--lengths",
        choices=LENGTHS,
        default="grow",
        help="decode: lengths grow every step (default) or cycle through [L, L+16]",
    )
    group.add_argument("--window", type=int, help="steps per timed window (default 48, --quick 8)")
    group.add_argument("--windows", type=int, help="timed windows per mode (default 5, --quick 3)")
    group.add_argument(
        "--forward-us", type=float, default=points.Timing.forward_us, help="busy: the stand-in forward's length"
    )
    group.add_argument(
        "--variants", nargs="+", metavar="NAME", help=f"design-bs<block size> (default {' '.join(VARIANT_NAMES)})"
    )
    group.add_argument("--plot", metavar="FILE.png", help="draw the crossover map here (needs matplotlib)")
    group.add_argument(
        "--model-layers",
        type=int,
        default=AttentionShape.model_layers,
        help="replays: the model's attention layers, for the bookkeeping's share of a step of "
        "bookkeeping and FlexAttention over the metadata (0: no attention; default 32)",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every serving option checked before anything runs (`disagmoe_bench.inputs`): a
    refusal is parser.error's one line naming the option (exit code 2)."""
    if args.trace is not None:
        if args.workload not in (None, "replay"):
            parser.error(f"--trace replays a file; it does not go with --workload {args.workload}")
        args.workload = "replay"
    if args.workload is None:
        given = [name for name in SERVING_OPTIONS if getattr(args, name) not in (None, parser.get_default(name))]
        if given:
            needs = f"a replay (--workload {'|'.join(REPLAYS)} or --trace)" if given[0] == "prefix_cache" else None
            parser.error(f"--{given[0].replace('_', '-')} needs {needs or '--workload decode|trace'}")
        return
    if args.seq_lens is not None:
        parser.error("--seq-lens is the seed table's; the serving decode takes --contexts")
    given = [
        name
        for name in (*SERVING_OPTIONS, "batch_sizes")
        if getattr(args, name) not in (None, parser.get_default(name))
    ]
    try:
        _check_unread(args, given)
        _check_serving(args)
    except inputs.InputError as err:
        parser.error(str(err))
    except ValueError as err:  # a variant's name
        parser.error(str(err))
    names = [v.name for v in args.variant_list]
    if len(set(names)) != len(names):
        parser.error(f"--variants {names} names a variant twice")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_unread(args: argparse.Namespace, given: list[str]) -> None:
    """Refuses an option (of `given`, those set) that the workload never reads."""
    if args.workload == "replay":
        inputs.unread_option("--trace", f"--trace {args.trace}", given)
    else:
        inputs.unread_option(
            "bundled" if args.workload in REPLAYS else args.workload, f"--workload {args.workload}", given
        )
    if "forward_us" in given and args.timing is not None and "busy" not in args.timing:
        raise inputs.InputError(
            f"--forward-us {args.forward_us:g} is the busy mode's forward; "
            f"--timing {' '.join(args.timing)} never reads it"
        )


def _check_serving(args: argparse.Namespace) -> None:
    for name in ("output", "plot"):  # every workload's, replays' included
        if getattr(args, name, None) is not None:
            inputs.output_path(_option(name), getattr(args, name))
    trace = traces.bundled(REPLAYS[args.workload][0]) if args.workload in REPLAYS else args.trace
    inputs.distinct_files({"--output": getattr(args, "output", None), "--plot": args.plot, "--trace": trace})
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise inputs.InputError(f"--plot {args.plot}: drawing the map needs matplotlib (pip install 'disagmoe[plot]')")
    if args.plot is not None:
        inputs.plot_format("--plot", args.plot)
    for name in ("contexts", "running", "prompts", "batch_sizes"):
        for value in getattr(args, name) or ():
            inputs.count(_option(name), value)
    for name in ("chunk", "max_output", "window", "windows"):
        if getattr(args, name) is not None:
            inputs.count(_option(name), getattr(args, name))
    if args.layers is not None:
        inputs.count("--layers", args.layers, 1, inputs.MAX_LAYERS)
    inputs.count("--seed", args.seed, 0, 2**63 - 1)
    inputs.forward_us(args.forward_us)
    if args.prefix_cache != "off" and args.workload not in ("replay", *REPLAYS):
        raise inputs.InputError(
            f"--prefix-cache {args.prefix_cache} is a replay's (--workload {'|'.join(REPLAYS)} or --trace): "
            f"the {args.workload} workload has no prefix hashes"
        )
    default = VARIANT_NAMES if args.prefix_cache == "off" else _prefix_variants()
    args.variant_list = []
    for name in args.variants or default:
        try:
            args.variant_list.append(variant(name))
        except ValueError as err:
            raise inputs.InputError(f"--variants {name}: {err}") from None
    for v in args.variant_list:
        inputs.count(f"--variants {v.name}: the block size", v.block_size)
    timing = points.QUICK_TIMING if args.quick else points.Timing()
    window, windows = args.window or timing.window, args.windows or timing.windows
    steps = timing.warmup + window * windows
    if steps > inputs.MAX_STEPS:
        raise inputs.InputError(
            f"--window {window} x --windows {windows}: {steps} steps a grid point, past {inputs.MAX_STEPS}"
        )
    if args.workload in ("replay", *REPLAYS):
        _check_replay(args)
        return
    if args.plot is not None and not (BASELINE in args.variant_list and len(args.variant_list) > 1):
        raise inputs.InputError(
            f"--plot maps each variant's speedup over {BASELINE.name}: --variants "
            f"{' '.join(v.name for v in args.variant_list)} needs {BASELINE.name} and at least one other"
        )
    if args.model_layers != AttentionShape.model_layers:
        raise inputs.InputError(
            "--model-layers weighs the bookkeeping against attention in a replay "
            "(--workload azure-conv|mooncake or --trace)"
        )
    for point, _ in _grid(args):
        for v in args.variant_list:
            if args.workload == "decode":
                grown = 16 if args.lengths == "cycle" else steps
                inputs.pool_slots(
                    f"--batch-sizes {point['batch_size']} --contexts {point['context']} ({v.name})",
                    point["batch_size"],
                    point["context"] + grown,
                    v.block_size,
                )
            else:
                inputs.pool_slots(
                    f"--running {point['running']} --prompts {point['max_prompt']} --max-output "
                    f"{args.max_output} ({v.name})",
                    point["running"],
                    point["max_prompt"] + args.max_output,
                    v.block_size,
                )


def _prefix_variants() -> list[str]:
    """The variants a prefix-cache replay compares by default: those at the scheduler's block size."""
    return [v.name for v in VARIANTS if v.block_size == SchedulerConfig.block_size]


def _check_replay(args: argparse.Namespace) -> None:
    """A replay's options, and its trace read (a malformed file named by line, before anything
    runs)."""
    for r in args.running or ():
        if r > args.chunk:
            raise inputs.InputError(
                f"--running {r}: a replay's running cap must be at most its token budget "
                f"(--chunk {args.chunk}), so that every running request can decode"
            )
    inputs.count("--pool-blocks", args.pool_blocks)
    inputs.count("--model-layers", args.model_layers, 0, inputs.MAX_LAYERS)
    for v in args.variant_list:
        inputs.pool_slots(f"--pool-blocks {args.pool_blocks} ({v.name})", 1, args.pool_blocks * 16, v.block_size)
    low, high = RATE_SCALES
    if not low <= args.rate_scale <= high:
        raise inputs.InputError(f"--rate-scale {args.rate_scale:g} must be a number in [{low:g}, {high:g}]")
    low, high = STEP_SECONDS
    if not low <= args.step_ms / 1e3 <= high:
        raise inputs.InputError(f"--step-ms {args.step_ms:g} must be a number in [{low * 1e3:g}, {high * 1e3:g}]")
    if args.plot is not None:
        raise inputs.InputError("--plot draws the synthetic grids' crossover maps; a replay has no grid")
    if args.workload in REPLAYS:
        path, fmt = traces.bundled(REPLAYS[args.workload][0]), REPLAYS[args.workload][0]
        args.trace_source = args.workload
    else:
        path, fmt = inputs.input_file("--trace", args.trace), args.trace_format
        args.trace_source = path.name
        if fmt is None and path.suffix.lower() not in traces.SUFFIXES:
            known = ", ".join(f"{suffix}: {name}" for suffix, name in sorted(traces.SUFFIXES.items()))
            shown = f"its suffix {path.suffix}" if path.suffix else "its name"
            raise inputs.InputError(
                f"--trace {path}: cannot tell its format from {shown} ({known}); "
                f"name it with --trace-format {'|'.join(FORMATS)}"
            )
    try:
        read = args.workload in REPLAYS
        args.trace_requests = traces.read_replay(args.workload) if read else traces.read_trace(path, fmt)
    except traces.TraceError as err:
        raise inputs.InputError(f"--trace {err}") from None
    except ValueError as err:  # an unknown suffix
        raise inputs.InputError(f"--trace {path}: {err}") from None
    except OSError as err:
        raise inputs.InputError(f"--trace {path}: cannot be read: {err.strerror or err}") from None
    if not args.trace_requests:
        raise inputs.InputError(f"--trace {path}: no requests")
    _check_replayable(args)
    if args.prefix_cache != "off":
        _check_prefix(args)


def _check_replayable(args: argparse.Namespace) -> None:
    """The trace's arrivals map to steps the scheduler holds, and the pool holds a request."""
    requests, source = args.trace_requests, args.trace_source
    config = SchedulerConfig(step_seconds=args.step_ms / 1e3, rate_scale=args.rate_scale)
    last = max(r.arrival_s for r in requests)
    try:
        config.arrival_step(last)
    except ValueError:
        step = last / args.rate_scale / (args.step_ms / 1e3)
        raise inputs.InputError(
            f"--rate-scale {args.rate_scale:g} --step-ms {args.step_ms:g}: the last arrival of {source}, at "
            f"{last:g} s, falls on step {step:.3g}, past the scheduler's last step {LAST_STEP} (2**53)"
        ) from None
    capacity = args.pool_blocks * SchedulerConfig.block_size
    smallest = min(r.prompt_tokens + r.output_tokens - 1 for r in requests)
    if smallest > capacity:
        raise inputs.InputError(
            f"--pool-blocks {args.pool_blocks}: every request of {source} holds more than the pool's {capacity} "
            f"tokens at its end (the smallest {smallest}): the scheduler would reject them all"
        )


def _check_prefix(args: argparse.Namespace) -> None:
    """A prefix-cache replay: variants at the scheduler's block size, a trace with hashes
    that cover its prompts."""
    mode, bs = args.prefix_cache, SchedulerConfig.block_size
    for v in args.variant_list:
        if not hasattr(design(v.design).cls, "match_prefix"):
            raise inputs.InputError(
                f"--prefix-cache {mode}: the {v.design} design of this build has no prefix cache (match_prefix)"
            )
        if v.block_size != bs:
            raise inputs.InputError(
                f"--variants {v.name}: --prefix-cache {mode} replays at the scheduler's block size {bs} "
                f"(its matches and evictions are counted in those blocks); pick from {' '.join(_prefix_variants())}"
            )
    try:
        hashes = BlockHashes(args.trace_requests, bs)
    except ValueError as err:
        raise inputs.InputError(f"--prefix-cache {mode}: {args.trace_source}: {err}") from None
    if not hashes.any:
        raise inputs.InputError(
            f"--prefix-cache {mode}: {args.trace_source} has no prefix hashes, so every match would be empty "
            "(on would be off with a cache that never hits); replay it with --prefix-cache off"
        )


def _replay_point(requests: list, config: SchedulerConfig, source: str, prefix_cache: str = "off") -> Callable:
    """A factory of the replay of `num_steps` steps from the trace's busiest stretch; the
    same replay each time (the timing and the attention read the same steps: scheduled once)."""

    @functools.cache
    def factory(num_steps: int) -> TraceReplay:
        start = busiest_window(requests, config, num_steps)
        return TraceReplay(requests, config, start, num_steps, source, prefix_cache)

    return factory


def _grid(args) -> list[tuple[dict, Callable]]:
    if args.workload in ("replay", *REPLAYS):
        layers = args.layers or SchedulerConfig.num_layers
        return [
            (
                {"trace": args.trace_source, "running": r},
                _replay_point(
                    args.trace_requests,
                    SchedulerConfig(
                        token_budget=args.chunk,
                        max_running=r,
                        num_blocks=args.pool_blocks,
                        step_seconds=args.step_ms / 1e3,
                        rate_scale=args.rate_scale,
                        num_layers=layers,
                    ),
                    args.trace_source,
                    args.prefix_cache,
                ),
            )
            for r in args.running or [SchedulerConfig.max_running]
        ]
    if args.workload == "decode":
        batch_sizes = args.batch_sizes or (points.QUICK_BATCH_SIZES if args.quick else points.BATCH_SIZES)
        contexts = args.contexts or (points.QUICK_CONTEXTS if args.quick else points.CONTEXTS)
        layers = args.layers or 1
        return [
            ({"batch_size": b, "context": c}, points.decode_point(b, c, layers, args.lengths))
            for b in batch_sizes
            for c in contexts
        ]
    running = args.running or (points.QUICK_TRACE_RUNNING if args.quick else points.TRACE_RUNNING)
    prompts = args.prompts or (points.QUICK_TRACE_PROMPTS if args.quick else points.TRACE_PROMPTS)
    layers = args.layers or TraceConfig.num_layers
    return [
        (
            {"running": r, "max_prompt": p},
            points.trace_point(TraceConfig(r, p, args.chunk, args.max_output, layers, args.seed)),
        )
        for r in running
        for p in prompts
    ]


def main(args, run: dict) -> int:
    device = torch.device(run["device"])
    modes = args.timing or (list(MODES) if device.type == "cuda" else ["synced", "pipelined"])
    forward = None
    if "busy" in modes:
        try:
            forward = Forward(args.forward_us, device)
        except BusyUnavailable as err:
            print(f"disagmoe-bench: {err}; run --timing synced pipelined here", file=sys.stderr)
            return 2
    timing = points.QUICK_TIMING if args.quick else points.Timing()
    timing = points.Timing(args.window or timing.window, args.windows or timing.windows, timing.warmup, args.forward_us)
    grid = _grid(args)
    print(
        wrap(
            f"Device: {run['device_name']}; torch {run['torch_version']}; triton {run['triton_version'] or 'none'}; "
            f"commit {run['commit'][:12]}; workload {args.workload}; timing {' '.join(modes)}; "
            f"variants {' '.join(v.name for v in args.variant_list)}"
        )
    )
    if args.workload in ("replay", *REPLAYS):
        summary.warn_rejected(args.trace_requests, args.trace_source, args.pool_blocks)
        idle = summary.idle_windows(grid, timing.num_steps)
        if idle:
            print(
                wrap(
                    f"disagmoe-bench: {args.trace_source}: the replayed window ({'; '.join(idle)}) runs no "
                    "request (none arrives there or none fits the pool): nothing to time"
                ),
                file=sys.stderr,
            )
            return 1
    progress = Progress(len(grid) * (1 + len(modes) * timing.windows * len(args.variant_list)))
    run.update(
        {
            "workload": args.workload,
            "prefix_cache": args.prefix_cache,
            "timing_modes": modes,
            "timing": dataclasses.asdict(timing),
            "variants": [{"name": v.name, "design": v.design, "block_size": v.block_size} for v in args.variant_list],
            "baseline": BASELINE.name,
            "points": [],
        }
    )
    by_mode: dict[str, list] = {mode: [] for mode in modes}
    for point, factory in grid:
        progress.label = " ".join(f"{k}={v}" for k, v in point.items())
        try:
            results = points.run_point(
                factory, args.variant_list, modes, timing, device, forward, on_window=progress.advance
            )
        except points.VariantMismatch as err:
            progress.close()
            print(f"disagmoe-bench: the variants disagree, nothing timed: {err}", file=sys.stderr)
            return 1
        except PrefixMismatch as err:
            progress.close()
            print(f"disagmoe-bench: a manager's prefix cache disagrees with the scheduler's: {err}", file=sys.stderr)
            return 1
        progress.advance()
        for result in results:
            result["point"] = point
            run["points"].append(result)
            by_mode[result["mode"]].append((point, result))
    progress.close()
    print(
        wrap(
            "Variants checked against each other at every grid point (lengths and metadata; block tables "
            "and slots between equal block sizes): identical."
        )
    )
    if args.workload in ("replay", *REPLAYS):
        summary.print_scheduler(run)
        summary.print_trace(args.trace_requests, args.trace_source, run, args.prefix_cache)
    for mode in modes:
        summary.print_table(mode, by_mode[mode])
    if args.prefix_cache != "off":
        try:
            summary.print_prefix(run, grid, timing.num_steps, device, args.prefix_cache, args.variant_list)
        except PrefixMismatch as err:
            print(f"disagmoe-bench: a manager's prefix cache disagrees with the scheduler's: {err}", file=sys.stderr)
            return 1
    if args.workload in ("replay", *REPLAYS) and args.model_layers:
        summary.print_attention(run, grid, timing.num_steps, device, args.model_layers)
    if device.type == "cuda":
        run["floors"] = summary.print_floors(
            device, [(point, results[0]) for point, results in summary.first_of_each(run)]
        )
    return 0


def draw_plot(args, run: dict) -> int:
    """`--plot`'s map of a finished run (after its `--output` is written: a map that fails
    loses no numbers); the exit status, 1 when it could not be drawn."""
    if not args.plot:
        return 0
    from disagmoe_bench.plot import crossover_map

    try:
        crossover_map(run, args.plot)
    except ImportError as err:
        print(f"disagmoe-bench: --plot needs matplotlib ({err}); pip install 'disagmoe[plot]'", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as err:
        print(wrap(f"disagmoe-bench: --plot {args.plot}: the map could not be drawn: {err}"), file=sys.stderr)
        return 1
    print(f"wrote {args.plot}", file=sys.stderr)
    return 0

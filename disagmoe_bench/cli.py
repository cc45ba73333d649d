"""`python -m disagmoe_bench --workload decode|trace`: the serving benchmarks' command line.

Per grid point it checks the variants against each other (same lengths and metadata;
block tables too at equal block size), then times them side by side in each timing
mode, prints one table per mode and, with `--plot`, draws the crossover map.
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
from disagmoe_bench import attention, inputs, points, prefix_calls, text, traces
from disagmoe_bench.attention import AttentionShape
from disagmoe_bench.floors import measure_floors
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


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def speedup_text(x: float | None) -> str:
    """A speedup as every table prints it: three decimals, whatever its size."""
    return "-" if x is None else f"{x:.3f}"


def mode_header(mode: str, workload: dict, result: dict) -> str:
    layers = f"{workload['num_layers']} layer{'s' if workload['num_layers'] > 1 else ''} a step"
    if workload["workload"] == "decode":
        shape = f"decode, lengths {workload['lengths']}, {layers}"
    elif workload["workload"] == "replay":
        shape = (
            f"replay of {workload['source']} from step {workload['start']} (its busiest stretch), token "
            f"budget {workload['token_budget']}, pool {workload['num_blocks']} blocks, "
            f"{workload['step_seconds'] * 1e3:g} ms a step, rate x{workload['rate_scale']:g}, {layers}"
        )
    else:
        shape = (
            f"trace, chunks of {workload['chunk']} tokens, outputs up to {workload['max_output']}, "
            f"seed {workload['seed']}, {layers}"
        )
    how = {
        "synced": "each call until the device is done",
        "pipelined": f"windows of {result['steps_per_window']} steps back to back, one synchronise at the end",
        "busy": (
            f"each step followed by a {result['forward_us']:.0f} us stand-in forward; 'added' is the "
            "wall time beyond the forwards alone"
        ),
    }[mode]
    figure = "added" if mode == "busy" else "wall"
    return (
        f"\n{shape}; timing {mode}: {how}.\nus per step: {figure} and host are medians of "
        f"{result['windows']} windows; p50/p99/max are of every step's own host time; speedup = "
        f"{BASELINE.name}'s {result['primary'][:-3]} / the variant's (> 1: the variant is faster)"
    )


def print_table(mode: str, rows: list[tuple[dict, dict]]) -> None:
    """One line per grid point and variant, the columns as wide as their values; where that
    is wider than the terminal, each grid point is a heading over its variants' lines."""
    first = rows[0][1]
    print(wrap(mode_header(mode, first["workload"], {**first, "forward_us": first.get("forward_median_us", 0.0)})))
    keys = list(rows[0][0])
    numbers = ["added" if mode == "busy" else "wall", "host", "p50", "p99", "max", "speedup"]
    lines: list[tuple[dict, list[str]]] = []
    for point, result in rows:
        for name, r in result["variants"].items():
            steps = r.get("host_step_us", {})
            speedup = "" if name == BASELINE.name else speedup_text(result.get("speedup", {}).get(name)) + "x"
            figures = [r["median"][first["primary"]], r["median"]["host_us"], *(steps.get(k) for k in ("p50", "p99"))]
            lines.append((point, [name, *map(_num, figures), _num(steps.get("max")), speedup]))
    right = set(range(1, len(numbers) + 1))
    heads = [k.replace("_", " ").capitalize() for k in keys]
    lead: list[list[str]] = []
    for k, (point, _) in enumerate(lines):
        same = k > 0 and lines[k - 1][0] is point
        lead.append(["" if same else str(point[key]) for key in keys])
    wide = text.table(
        [*heads, "variant", *numbers],
        [cells + row for cells, (_, row) in zip(lead, lines)],
        {len(keys) + k for k in right},
    )
    if max(map(len, wide)) <= text.width():
        print("\n".join(wide), flush=True)
        return
    narrow = text.table(["variant", *numbers], [row for _, row in lines], right)
    print(narrow[0])
    for k, (point, _) in enumerate(lines):
        if not k or lines[k - 1][0] is not point:
            print(wrap(" ".join(f"{key}={point[key]}" for key in keys) + ":"))
        print(narrow[k + 1], flush=True)


def print_scheduler(run: dict) -> None:
    """What the scheduler made of each replayed window."""
    print(
        wrap(
            "\nScheduler, per replayed window: requests holding KV (mean / peak), waiting (mean / peak), "
            "KV pool in use (mean / peak), prefill and decode tokens a step (mean), preemptions, "
            "arrived / admitted / finished"
        )
    )
    for point, results in _first_of_each(run):
        s = results[0]["workload"]["steps"]
        line = (
            f"  {point['trace']} running cap {point['running']}: {s['num_steps']} steps, {s['running_mean']:.1f} / "
            f"{s['running_peak']}, {s['waiting_mean']:.1f} / {s['waiting_peak']}, {100 * s['pool_mean']:.1f}% / "
            f"{100 * s['pool_peak']:.1f}%, {s['prefill_tokens_mean']:.0f} and {s['decode_tokens_mean']:.1f}, "
            f"{s['preemptions']}, {s['arrived']} / {s['admitted']} / {s['finished']}"
        )
        print(wrap(line, "  "))


def warn_rejected(requests: list, source: str, pool_blocks: int) -> None:
    """Warns on stderr when the pool can never hold some of the trace's requests: the
    scheduler leaves them out of the replay."""
    config = SchedulerConfig(num_blocks=pool_blocks)
    capacity = config.num_blocks * config.block_size
    rejected = sum(r.prompt_tokens + r.output_tokens - 1 > capacity for r in requests)
    if rejected:
        print(
            wrap(
                f"disagmoe-bench: warning: {rejected} of the {len(requests)} requests of {source} hold more than "
                f"the pool's {capacity} tokens at their end (--pool-blocks {pool_blocks}): never admitted, "
                "they are left out of the replay"
            ),
            file=sys.stderr,
        )


def idle_windows(grid: list, num_steps: int) -> list[str]:
    """The replayed grid points whose window runs no request at all (labels)."""
    idle = []
    for point, factory in grid:
        steps = factory(num_steps).stats()
        if not steps["prefill_tokens_mean"] and not steps["decode_tokens_mean"]:
            idle.append(" ".join(f"{k}={v}" for k, v in point.items()))
    return idle


def print_trace(requests: list, source: str, run: dict, prefix_cache: str = "off") -> None:
    """The whole trace: requests, and the prefix reuse its hashes would allow (shared by
    the managers with --prefix-cache on only)."""
    with_hashes = any(r.prefix_blocks for r in requests)
    try:
        reuse = traces.prefix_reuse(requests) if with_hashes else None
    except ValueError as err:  # hashes that do not cover their prompts: said, not fatal
        reuse, why = None, str(err)
    else:
        why = "" if with_hashes else "the trace has no prefix hashes"
    run["trace"] = {"source": source, "requests": len(requests), "prefix_reuse": reuse}
    shared = "blocks are shared here" if prefix_cache == "on" else "blocks are not shared here"
    tokens = next((r.prefix_block_tokens for r in requests if r.prefix_blocks), 0)
    said = (
        (
            f"{100 * reuse:.1f}% of its {tokens}-token prefix blocks repeat an earlier request's (what a prefix "
            f"cache could reuse; {shared})"
        )
        if reuse is not None
        else f"prefix reuse: {why}"
    )
    print(wrap(f"  {source}: {len(requests)} requests; {said}"))


def print_attention(run: dict, grid: list, num_steps: int, device: torch.device, model_layers: int) -> None:
    """Attention in the loop (`disagmoe_bench.attention`) at each replayed point, with its
    progress on stderr."""
    print(
        wrap(
            "\nAttention in the loop: FlexAttention over the metadata of the same steps; a step is the "
            f"bookkeeping once and {model_layers} layers of attention; share = bookkeeping / step"
        ),
        flush=True,
    )
    run["attention"] = []
    progress = Progress(len(grid) * num_steps * attention.passes(device))
    for (point, factory), (_, results) in zip(grid, _first_of_each(run)):
        progress.label = "attention " + " ".join(f"{k}={v}" for k, v in point.items())
        record = attention.report(results, factory, num_steps, device, model_layers, on_step=progress.advance)
        run["attention"].append({"point": point, **record})
        lines = attention.report_lines(point, record)
        if record.get("pool_blocks_that_run_it"):
            lines.append(smaller_pool_changes(factory(num_steps), record["pool_blocks_that_run_it"]))
        progress.close()
        print(wrap("\n".join(line for line in lines if line), "  "), flush=True)


def smaller_pool_changes(replay: TraceReplay, pool_blocks: int) -> str:
    """What replaying with `--pool-blocks pool_blocks` would change in the replay's window (its
    busiest stretch at that pool): a warning line, or "" when the window runs alike."""
    config = dataclasses.replace(replay.config, num_blocks=pool_blocks)
    requests = replay.scheduler.requests
    now = replay.stats()
    if sum(r.prompt_tokens + r.output_tokens - 1 <= pool_blocks * config.block_size for r in requests) == 0:
        return f"    warning: --pool-blocks {pool_blocks} holds none of the trace's requests: nothing would run"
    start = busiest_window(requests, config, replay.num_steps)
    then = TraceReplay(requests, config, start, replay.num_steps, replay.source, replay.prefix_cache).stats()
    changes = [
        f"{then['running_mean']:.1f} requests running on average (now {now['running_mean']:.1f})",
        f"{then['waiting_mean']:.1f} waiting (now {now['waiting_mean']:.1f})",
        f"{then['preemptions']} preemptions (now {now['preemptions']})",
        f"{then['rejected']} of {len(requests)} requests never fit the pool (now {now['rejected']})",
    ]
    keys = ("running_mean", "waiting_mean", "preemptions", "rejected")
    changed = [text for key, text in zip(keys, changes) if round(then[key], 1) != round(now[key], 1)]
    if not changed:
        return ""
    return f"    warning: --pool-blocks {pool_blocks} changes the replay: {', '.join(changed)}"


def print_prefix(run: dict, grid: list, num_steps: int, device: torch.device, mode: str, variants: list) -> None:
    """The prefix cache at each replayed point (`disagmoe_bench.prefix_calls`)."""
    print(
        wrap(
            f"\nPrefix cache {mode}"
            + (" (every hash unique to its admission: the cost at a 0% hit rate)" if mode == "miss" else "")
            + ", per replayed window: hit rate = prompt tokens served from the cache / prompt tokens the "
            "window's admissions prefill; bound = the same from a cache that keeps every block of every earlier "
            "admission; host us of one pass, each step synchronised: the slowest step's match_prefix calls, "
            "those of the step that matches most blocks, and the first-layer update of the step that evicts "
            "most (the eviction is timed with its allocation)"
        )
    )
    run["prefix"] = []
    for point, factory in grid:
        record = prefix_calls.report(factory, variants, num_steps, device)
        run["prefix"].append({"point": point, **record})
        print(wrap("\n".join(prefix_calls.report_lines(point, record))))


def _first_of_each(run: dict) -> list[tuple[dict, list]]:
    """(point, [its results]) per grid point, in order."""
    seen: dict = {}
    for result in run["points"]:
        seen.setdefault(tuple(result["point"].items()), (result["point"], []))[1].append(result)
    return list(seen.values())


def print_floors(device: torch.device, rows: list[tuple[dict, dict]]) -> dict:
    """Measures and prints the floors (`disagmoe_bench.floors`) beside each point's bytes
    that the cpu design copies per pack."""
    copied = {tuple(p.items()): r["metadata_bytes"].get(BASELINE.name) for p, r in rows}
    floors = measure_floors(device, [n for n in copied.values() if n])
    print(
        wrap(
            f"\nFloors, same process: bare synchronise {floors['bare_synchronize_us']:.1f} us; one tiny kernel "
            f"{floors['tiny_kernel_synced_us']:.1f} us synced, {floors['tiny_kernel_pipelined_us']:.1f} us a "
            f"launch back to back, {floors['graph_replay_pipelined_us']:.1f} us a graph replay of it; the "
            f"metadata's views {floors['metadata_views_us']:.1f} us; pinned host-to-device copies of the bytes "
            f"{BASELINE.name} copies per pack (first layer):"
        )
    )
    by_bytes = {c["bytes"]: c for c in floors["copies"]}
    for point, nbytes in copied.items():
        if nbytes:
            c = by_bytes[nbytes]
            label = " ".join(f"{k}={v}" for k, v in point)
            line = (
                f"  {label:<28} {nbytes / 1024:10.1f} KB: {c['synced_us']:8.1f} us synced, "
                f"{c['pipelined_us']:8.1f} us back to back"
            )
            print(wrap(line, "  "))
    floors["copied_bytes"] = [{"point": dict(p), "bytes": n} for p, n in copied.items()]
    return floors


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
        warn_rejected(args.trace_requests, args.trace_source, args.pool_blocks)
        idle = idle_windows(grid, timing.num_steps)
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
        print_scheduler(run)
        print_trace(args.trace_requests, args.trace_source, run, args.prefix_cache)
    for mode in modes:
        print_table(mode, by_mode[mode])
    if args.prefix_cache != "off":
        try:
            print_prefix(run, grid, timing.num_steps, device, args.prefix_cache, args.variant_list)
        except PrefixMismatch as err:
            print(f"disagmoe-bench: a manager's prefix cache disagrees with the scheduler's: {err}", file=sys.stderr)
            return 1
    if args.workload in ("replay", *REPLAYS) and args.model_layers:
        print_attention(run, grid, timing.num_steps, device, args.model_layers)
    if device.type == "cuda":
        run["floors"] = print_floors(device, [(point, results[0]) for point, results in _first_of_each(run)])
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

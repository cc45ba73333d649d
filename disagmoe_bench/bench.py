"""The command-line benchmark: the seed's table (the cpu and gpu designs side by side, then
hybrid beside cpu), and the serving benchmarks of all three designs (`--workload`).

    python -m disagmoe_bench [--quick] [--batch-sizes 16 64] [--seq-lens 128 1024]
        [--iterations 100] [--device cuda] [--output results.json] [--profile DIR]

For each grid point (batch size B, sequence length L) it first checks that the three
designs, given the same block size, produce the same metadata; then it times one
decode step of B requests holding L tokens: `update_block_table` at the first layer,
then `pack_flash_attn_metadata`, on every design in turn (the order alternates), each
call ending with `manager.synchronize()`. It prints the medians and CPU-over-GPU
speedups (the seed's table), then the same for hybrid beside cpu, and writes every
sample to `--output`.

The workload and its timing are the serving harness's (`disagmoe_bench.seed`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from disagmoe.block_manager import DESIGNS as DESIGN_OF
from disagmoe.block_manager.base import resolve_device
from disagmoe_bench import cli as serving_cli
from disagmoe_bench import inputs
from disagmoe_bench.points import VariantMismatch
from disagmoe_bench.seed import (
    BATCH_SIZES,
    CHECK_BLOCK_SIZE,
    DECODE_STEPS,
    DESIGNS,
    OPS,
    QUICK_BATCH_SIZES,
    QUICK_SEQ_LENS,
    SEQ_LENS,
    check_equivalent,
    decode_state,
    no_label,
    summarize,
    time_decode_steps,
)
from disagmoe_bench.summary import speedup_text
from disagmoe_bench.timing import device_name, limit_cpu_threads

# -- the command line -----------------------------------------------------------------------


def _title(design: str) -> str:
    """The design's name in a column's title: "GPU" (the seed's table), else "Hybrid"."""
    return "GPU" if design == "gpu" else design.title()


def header(design: str = "gpu") -> str:
    """The title line of the table of `design` beside cpu (for gpu: the seed's table)."""
    t = _title(design)
    return f"Batch Size   Seq Len   CPU Update (ms) {t} Update (ms) Speedup   CPU Pack (ms) {t} Pack (ms) Speedup"


HEADER = header("gpu")


def _speedup_key(design: str) -> str:
    """A point's key of cpu time / `design`'s time ("speedup" for gpu: the seed's JSON)."""
    return "speedup" if design == "gpu" else f"{design}_speedup"


def _row(point: dict, design: str = "gpu") -> str:
    """A grid point's line of the table of `design` beside cpu."""
    update, pack = point["update_block_table"], point["pack_flash_attn_metadata"]
    speedup = _speedup_key(design)
    update_width, pack_width = len(f"{_title(design)} Update (ms) "), len(f"{_title(design)} Pack (ms) ")
    return (
        f"{point['batch_size']:<13}{point['seq_len']:<10}{update['cpu_ms']:<16.4f}"
        f"{update[f'{design}_ms']:<{update_width}.4f}{speedup_text(update[speedup]):<10}"
        f"{pack['cpu_ms']:<14.4f}{pack[f'{design}_ms']:<{pack_width}.4f}{speedup_text(pack[speedup])}"
    )


def _print_summary(summary: dict, design: str, points: int) -> None:
    time_of = "GPU" if design == "gpu" else design
    print(f"Speedup (CPU time / {time_of} time, > 1: the {design} design is faster) over {points} grid points:")
    for op, s in summary.items():
        print(
            f"  {op:<26} mean {speedup_text(s['mean'])}x  median {speedup_text(s['median'])}x  "
            f"min {speedup_text(s['min'])}x  max {speedup_text(s['max'])}x"
        )


def _run_point(
    batch_size: int, seq_len: int, device: torch.device, iterations: int, warmup: int, profile_dir: Path | None
) -> dict:
    profiler: contextlib.AbstractContextManager = contextlib.nullcontext()
    label = no_label
    if profile_dir is not None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        profiler = torch.profiler.profile(activities=activities)
        label = torch.profiler.record_function
    with profiler as prof:
        with label("setup: check_equivalent"):
            check_equivalent(batch_size, seq_len, device)
        with label("setup: decode states"):
            states = {design: decode_state(design, batch_size, seq_len, device) for design in DESIGNS}
        with label("setup: warm-up steps"):
            time_decode_steps(states, warmup)
        samples = time_decode_steps(states, iterations, label)
    if prof is not None and profile_dir is not None:
        prof.export_chrome_trace(str(profile_dir / f"trace_b{batch_size}_s{seq_len}.json"))
    point: dict[str, object] = {"batch_size": batch_size, "seq_len": seq_len}
    for op in OPS:
        ms = {design: [s * 1e3 for s in samples[design][op]] for design in DESIGNS}
        medians = {f"{design}_ms": statistics.median(ms[design]) for design in DESIGNS}
        point[op] = {
            **medians,
            **{_speedup_key(d): medians["cpu_ms"] / medians[f"{d}_ms"] for d in DESIGNS if d != "cpu"},
            "stats_ms": {design: summarize(ms[design]) for design in DESIGNS},
            "samples_ms": ms,
        }
    return point


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="disagmoe-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", metavar="B", help=f"default {' '.join(map(str, BATCH_SIZES))}"
    )
    parser.add_argument("--seq-lens", type=int, nargs="+", metavar="L", help=f"default {' '.join(map(str, SEQ_LENS))}")
    parser.add_argument("--iterations", type=int, default=100, help="timed decode steps per grid point")
    parser.add_argument("--warmup", type=int, default=10, help="untimed decode steps first")
    parser.add_argument(
        "--quick", action="store_true", help=f"small grid: batch sizes {QUICK_BATCH_SIZES}, seq lens {QUICK_SEQ_LENS}"
    )
    parser.add_argument("--device", help="torch device of the managers (default: CUDA if any, else cpu)")
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="write every number here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write a torch profiler trace per grid point here (timings then carry its overhead)",
    )
    serving_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    serving_cli.check_arguments(parser, args)
    _check_device(parser, args)
    if args.workload is not None:
        if args.profile is not None:
            parser.error("--profile times the seed's table; it does not go with --workload")
        if args.iterations != parser.get_default("iterations") or args.warmup != parser.get_default("warmup"):
            parser.error(
                "--iterations and --warmup are the seed table's; the serving benchmarks take --window and --windows"
            )
        return args
    args.batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    args.seq_lens = args.seq_lens or list(QUICK_SEQ_LENS if args.quick else SEQ_LENS)
    try:
        for name in ("batch_sizes", "seq_lens"):
            for value in getattr(args, name):
                inputs.count(f"--{name.replace('_', '-')}", value)
        inputs.count("--iterations", args.iterations, 1, inputs.MAX_STEPS)
        inputs.count("--warmup", args.warmup, 0, inputs.MAX_STEPS)
        for b in args.batch_sizes:
            for s in args.seq_lens:
                for block_size in {CHECK_BLOCK_SIZE, *(DESIGN_OF[n].default_block_size for n in DESIGNS)}:
                    inputs.pool_slots(f"--batch-sizes {b} --seq-lens {s}", b, s + DECODE_STEPS, block_size)
        if args.output is not None:
            inputs.output_path("--output", args.output)
        if args.profile is not None and not args.profile.is_dir():
            inputs.output_path("--profile", args.profile)  # a folder to make: its parent must take it
    except inputs.InputError as err:
        parser.error(str(err))
    return args


def _check_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--device names a device this machine has, which the managers run on; busy timing
    needs CUDA."""
    try:
        args.device_resolved = resolve_device(args.device)
    except (TypeError, ValueError) as err:
        parser.error(f"--device {args.device}: {err}")
    if args.workload is not None and "busy" in (args.timing or ()) and args.device_resolved.type != "cuda":
        parser.error(
            f"--timing busy needs a CUDA device (the stand-in forward spins on the GPU); this run is on "
            f"{args.device_resolved}: run --timing synced pipelined here"
        )


def _run_info(device: torch.device) -> dict:
    """What every JSON output records of the run: device, card, versions, commit, host."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "commit": _commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
    }


def _write(path: Path | None, run: dict) -> int:
    """Writes the run's JSON to `path` (None: nowhere); the exit status: 1 when the write
    fails all the same (a full disk: the path itself was checked before the run)."""
    if path is None:
        return 0
    try:
        path.write_text(json.dumps(run, indent=1) + "\n")
    except OSError as err:
        print(f"disagmoe-bench: --output {path}: the run's numbers could not be written: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device_resolved
    limit_cpu_threads(device)
    if args.workload is not None:
        run = _run_info(device)
        status = serving_cli.main(args, run)
        if status:
            return status
        written = _write(args.output, run)
        return serving_cli.draw_plot(args, run) or written
    if args.profile is not None:
        args.profile.mkdir(exist_ok=True)  # (its parent was checked: no folder is made above it)
    grid = [(b, s) for b in args.batch_sizes for s in args.seq_lens]
    run = {
        **_run_info(device),
        "iterations": args.iterations,
        "warmup": args.warmup,
        "decode_steps_per_state": DECODE_STEPS,
        "check_block_size": CHECK_BLOCK_SIZE,
        "block_size": {d: DESIGN_OF[d].default_block_size for d in DESIGNS},
        "results": [],
    }
    print(
        f"Device: {run['device_name']}; torch {run['torch_version']}; triton {run['triton_version'] or 'none'}; "
        f"commit {run['commit'][:12]}; {args.iterations} decode steps per point, medians"
    )
    print(HEADER, flush=True)
    started = time.perf_counter()
    for k, (batch_size, seq_len) in enumerate(grid, 1):
        print(
            f"[{k}/{len(grid)}] batch_size={batch_size} seq_len={seq_len} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        try:
            point = _run_point(batch_size, seq_len, device, args.iterations, args.warmup, args.profile)
        except VariantMismatch as err:
            print(f"disagmoe-bench: the designs disagree, nothing timed: {err}", file=sys.stderr)
            return 1
        run["results"].append(point)
        print(_row(point), flush=True)
    print(
        f"\nEquivalence check passed at all {len(grid)} grid points: the {len(DESIGNS)} designs gave identical "
        f"metadata and lengths at block size {CHECK_BLOCK_SIZE}."
    )
    run["summary"] = {op: summarize([p[op]["speedup"] for p in run["results"]]) for op in OPS}
    _print_summary(run["summary"], "gpu", len(grid))
    for design in DESIGNS[2:]:  # each further design beside cpu
        print(f"\nThe {design} design beside cpu, timed in the same turns:\n{header(design)}")
        for point in run["results"]:
            print(_row(point, design))
        run[f"summary_{design}"] = {op: summarize([p[op][_speedup_key(design)] for p in run["results"]]) for op in OPS}
        _print_summary(run[f"summary_{design}"], design, len(grid))
    return _write(args.output, run)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark workloads, and the command-line benchmark of both backends side by side.

    python -m disagmoe.bench [--quick] [--batch-sizes 16 64] [--seq-lens 128 1024]
        [--iterations 100] [--device cuda] [--output results.json] [--profile DIR]

For each grid point (batch size B, sequence length L) it first checks that both
backends, given the same block size, produce the same metadata; then it times
one decode step of B requests holding L tokens: `update_block_table` at the
first layer, then `pack_flash_attn_metadata`, on both backends in turn (the
order alternates), each call ending with the device synchronised. It prints
the medians and CPU-over-GPU speedups, and writes every sample to `--output`.

The asv suite (benchmarks/) builds its workloads with the functions below.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from disagmoe import BACKENDS, BatchMetadata, BlockManager, CacheConfig, ModelConfig

BACKEND_NAMES = ("cpu", "gpu")
BATCH_SIZES = (16, 32, 64, 128, 256)
SEQ_LENS = (128, 256, 512, 1024)
QUICK_BATCH_SIZES = (16, 256)
QUICK_SEQ_LENS = (128, 1024)
CHECK_BLOCK_SIZE = 16  # both backends hand out the same block ids at this block size
DECODE_STEPS = 16  # first-layer steps a decode state takes before it is rebuilt (untimed)
FIRST_LAYER, LATER_LAYER = 0, 1
OPS = ("update_block_table", "pack_flash_attn_metadata")


# -- workloads (shared with the asv suite) -------------------------------------------------

def default_device() -> torch.device:
    """The CUDA device when there is one, else torch's CPU device (as the managers do)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The device and what it is, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cuda = "" if torch.cuda.is_available() else ", no CUDA on this machine"
    return f"{device} (torch's CPU device{cuda})"


def limit_cpu_threads(device: torch.device) -> None:
    """One intra-op thread when the managers run on torch's CPU device: their small
    torch operations gain nothing from more, and waking the thread pool made timings
    on a busy 2-core machine swing twentyfold."""
    if device.type == "cpu":
        torch.set_num_threads(1)


def make_manager(backend: str, batch_size: int, seq_len: int, device: torch.device | str | None = None,
                 block_size: int | None = None) -> BlockManager:
    """A manager sized for B requests of up to `seq_len + DECODE_STEPS` tokens.

    `block_size=None` takes the backend's default (cpu 16, gpu 1).
    """
    cls = BACKENDS[backend]
    block_size = block_size or cls.default_block_size
    max_seq_len = seq_len + DECODE_STEPS
    num_blocks = batch_size * -(-max_seq_len // block_size)
    model = ModelConfig(layer_ids=(FIRST_LAYER, LATER_LAYER), max_seq_len=max_seq_len,
                        max_batch_size_attn=batch_size)
    return cls(model, CacheConfig(block_size, num_blocks), batch_size, device=device)


def prefill_batch(batch_size: int, seq_len: int) -> BatchMetadata:
    return BatchMetadata(FIRST_LAYER, list(range(batch_size)), batch_size, [seq_len] * batch_size)


def decode_batch(batch_size: int, layer_id: int = FIRST_LAYER) -> BatchMetadata:
    return BatchMetadata(layer_id, list(range(batch_size)), 0, [])


class DecodeState:
    """B requests that each hold `seq_len` tokens, and the batches of their decode step.

    `make_room()` rebuilds the state (reset + prefill) once `DECODE_STEPS`
    first-layer steps were taken, so lengths stay within [L, L + DECODE_STEPS]
    and a block-size-16 manager allocates on one step in 16.
    """

    def __init__(self, manager: BlockManager, batch_size: int, seq_len: int) -> None:
        self.manager = manager
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = manager.device
        self.first = decode_batch(batch_size, FIRST_LAYER)
        self.later = decode_batch(batch_size, LATER_LAYER)
        self.rebuild()

    def rebuild(self) -> None:
        self.manager.reset_state()
        self.manager.update_block_table(prefill_batch(self.batch_size, self.seq_len))
        self.steps = 0
        self.manager.synchronize()  # deferred work included: the next timed call starts clean

    def make_room(self) -> None:
        if self.steps >= DECODE_STEPS:
            self.rebuild()

    def step(self) -> None:
        """One first-layer decode update (the caller times and synchronises it)."""
        self.manager.update_block_table(self.first)
        self.steps += 1

    def warm_up(self, steps: int = DECODE_STEPS) -> None:
        """Takes `steps` decode steps as the timed calls do (first-layer update, pack,
        later-layer update, each synchronised): Triton compiles, CUDA graphs are
        captured, buffers reach their size, caches warm. Then rebuilds the state."""
        for _ in range(steps):
            self.make_room()
            for call in (self.step, lambda: self.manager.pack_flash_attn_metadata(self.first),
                         lambda: self.manager.update_block_table(self.later)):
                call()
                self.manager.synchronize()
        self.rebuild()


def decode_state(backend: str, batch_size: int, seq_len: int, device: torch.device | str | None = None,
                 block_size: int | None = None) -> DecodeState:
    """A warmed-up decode state on a fresh manager."""
    state = DecodeState(make_manager(backend, batch_size, seq_len, device, block_size), batch_size, seq_len)
    state.warm_up()
    return state


# -- equivalence ----------------------------------------------------------------------------

class BackendMismatch(AssertionError):
    """The two backends disagree on a workload's metadata."""


def _snapshot(metadata) -> dict:
    return {field.name: (value.cpu().clone() if isinstance(value, torch.Tensor) else value)
            for field in dataclasses.fields(metadata)
            for value in (getattr(metadata, field.name),)}


def _trace(backend: str, batch_size: int, seq_len: int, device, block_size: int) -> dict[str, dict]:
    """What a prefill step, then a decode step at the first and a later layer, produce."""
    manager = make_manager(backend, batch_size, seq_len, device, block_size)
    prefill, first, later = prefill_batch(batch_size, seq_len), decode_batch(batch_size), \
        decode_batch(batch_size, LATER_LAYER)
    manager.update_block_table(prefill)
    trace = {"prefill pack": _snapshot(manager.pack_flash_attn_metadata(prefill))}
    manager.update_block_table(first)
    trace["decode pack"] = _snapshot(manager.pack_flash_attn_metadata(first))
    manager.update_block_table(later)
    trace["decode update"] = {"seq_lens (first layer)": first.seq_lens, "seq_lens (later layer)": later.seq_lens}
    manager.check_integrity()
    return trace


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def check_equivalent(batch_size: int, seq_len: int, device: torch.device | str | None = None,
                     block_size: int = CHECK_BLOCK_SIZE) -> None:
    """Raises BackendMismatch unless both backends, at the same block size, produce
    identical metadata (every field) and lengths for the grid point's workloads."""
    expected, got = (_trace(backend, batch_size, seq_len, device, block_size) for backend in BACKEND_NAMES)
    for step, fields in expected.items():
        for name, value in fields.items():
            if not _same(value, got[step][name]):
                raise BackendMismatch(f"batch_size={batch_size} seq_len={seq_len} block_size={block_size}: "
                                      f"{step}: {name} differs: cpu {value!r:.200} != gpu {got[step][name]!r:.200}")


# -- side-by-side timing --------------------------------------------------------------------

def _no_label(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _timed(call: Callable[[], object], manager: BlockManager) -> float:
    """Seconds of `call` until the device has finished its work, deferred work included."""
    start = time.perf_counter()
    call()
    manager.synchronize()
    return time.perf_counter() - start


def time_decode_steps(states: dict[str, DecodeState], iterations: int,
                      label: Callable[[str], contextlib.AbstractContextManager] = _no_label
                      ) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of `iterations` decode steps on each backend: the first-layer
    `update_block_table`, then `pack_flash_attn_metadata`, each call ending with the
    device synchronised. Backends take turns, in alternating order."""
    samples = {backend: {op: [] for op in OPS} for backend in states}
    order = list(states)
    for i in range(iterations):
        for backend in order if i % 2 == 0 else order[::-1]:
            state = states[backend]
            with label(f"setup: {backend} make_room"):
                state.make_room()
            with label(f"timed: {backend} update_block_table"):
                samples[backend]["update_block_table"].append(_timed(state.step, state.manager))
            pack = lambda: state.manager.pack_flash_attn_metadata(state.first)  # noqa: E731
            with label(f"timed: {backend} pack_flash_attn_metadata"):
                samples[backend]["pack_flash_attn_metadata"].append(_timed(pack, state.manager))
    return samples


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


# -- the command line -----------------------------------------------------------------------

HEADER = ("Batch Size   Seq Len   CPU Update (ms) GPU Update (ms) Speedup   "
          "CPU Pack (ms) GPU Pack (ms) Speedup")


def _row(point: dict) -> str:
    update, pack = point["update_block_table"], point["pack_flash_attn_metadata"]
    return (f"{point['batch_size']:<13}{point['seq_len']:<10}{update['cpu_ms']:<16.4f}{update['gpu_ms']:<16.4f}"
            f"{update['speedup']:<10.2f}{pack['cpu_ms']:<14.4f}{pack['gpu_ms']:<14.4f}{pack['speedup']:.2f}")


def _run_point(batch_size: int, seq_len: int, device: torch.device, iterations: int, warmup: int,
               profile_dir: Path | None) -> dict:
    profiler = contextlib.nullcontext()
    label = _no_label
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
            states = {backend: decode_state(backend, batch_size, seq_len, device) for backend in BACKEND_NAMES}
        with label("setup: warm-up steps"):
            time_decode_steps(states, warmup)
        samples = time_decode_steps(states, iterations, label)
    if profile_dir is not None:
        prof.export_chrome_trace(str(profile_dir / f"trace_b{batch_size}_s{seq_len}.json"))
    point = {"batch_size": batch_size, "seq_len": seq_len}
    for op in OPS:
        ms = {backend: [s * 1e3 for s in samples[backend][op]] for backend in BACKEND_NAMES}
        cpu_ms, gpu_ms = statistics.median(ms["cpu"]), statistics.median(ms["gpu"])
        point[op] = {"cpu_ms": cpu_ms, "gpu_ms": gpu_ms, "speedup": cpu_ms / gpu_ms,
                     "stats_ms": {backend: summarize(ms[backend]) for backend in BACKEND_NAMES},
                     "samples_ms": ms}
    return point


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
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
    parser = argparse.ArgumentParser(prog="disagmoe-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help=f"default {' '.join(map(str, BATCH_SIZES))}")
    parser.add_argument("--seq-lens", type=int, nargs="+", metavar="L",
                        help=f"default {' '.join(map(str, SEQ_LENS))}")
    parser.add_argument("--iterations", type=int, default=100, help="timed decode steps per grid point")
    parser.add_argument("--warmup", type=int, default=10, help="untimed decode steps first")
    parser.add_argument("--quick", action="store_true",
                        help=f"small grid: batch sizes {QUICK_BATCH_SIZES}, seq lens {QUICK_SEQ_LENS}")
    parser.add_argument("--device", help="torch device of both backends (default: CUDA if any, else cpu)")
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="write every number here")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="write a torch profiler trace per grid point here (timings then carry its overhead)")
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    args.seq_lens = args.seq_lens or list(QUICK_SEQ_LENS if args.quick else SEQ_LENS)
    for name in ("batch_sizes", "seq_lens"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: every value must be >= 1")
    if args.iterations < 1 or args.warmup < 0:
        parser.error(f"--iterations {args.iterations} must be >= 1 and --warmup {args.warmup} >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    limit_cpu_threads(device)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    grid = [(b, s) for b in args.batch_sizes for s in args.seq_lens]
    run = {"device": str(device), "device_name": device_name(device), "torch_version": torch.__version__,
           "triton_version": _triton_version(), "commit": _commit(),
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "host": platform.node(),
           "torch_threads": torch.get_num_threads(), "iterations": args.iterations,
           "warmup": args.warmup, "decode_steps_per_state": DECODE_STEPS, "check_block_size": CHECK_BLOCK_SIZE,
           "block_size": {b: BACKENDS[b].default_block_size for b in BACKEND_NAMES}, "results": []}
    print(f"Device: {run['device_name']}; torch {run['torch_version']}; triton {run['triton_version'] or 'none'}; "
          f"commit {run['commit'][:12]}; {args.iterations} decode steps per point, medians")
    print(HEADER, flush=True)
    started = time.perf_counter()
    for k, (batch_size, seq_len) in enumerate(grid, 1):
        print(f"[{k}/{len(grid)}] batch_size={batch_size} seq_len={seq_len} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        try:
            point = _run_point(batch_size, seq_len, device, args.iterations, args.warmup, args.profile)
        except BackendMismatch as err:
            print(f"disagmoe-bench: the backends disagree, nothing timed: {err}", file=sys.stderr)
            return 1
        run["results"].append(point)
        print(_row(point), flush=True)
    run["summary"] = {op: summarize([p[op]["speedup"] for p in run["results"]]) for op in OPS}
    print(f"\nSpeedup (CPU time / GPU time) over {len(grid)} grid points:")
    for op, s in run["summary"].items():
        print(f"  {op:<26} mean {s['mean']:.2f}x  median {s['median']:.2f}x  "
              f"min {s['min']:.2f}x  max {s['max']:.2f}x")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(run, indent=1) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

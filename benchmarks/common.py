"""What the asv suite shares: the grid, the timing knobs and the per-process state.

Importing this module does not import torch: the track_ benchmarks only read
numbers that one setup_cache process measured, so their many processes start
in a fraction of a second. The workloads themselves come from the installed
package (`disagmoe.workloads`), the same ones `python -m disagmoe.bench` times.
"""

from __future__ import annotations

import os


def _grid(variable: str, default: list[int]) -> list[int]:
    """The contract's grid, or the integers listed in `variable` (a smaller grid for
    smoke runs: `DISAGMOE_BENCH_BATCH_SIZES="16 256" DISAGMOE_BENCH_SEQ_LENS="128 1024"`)."""
    value = os.environ.get(variable, "").replace(",", " ").split()
    return [int(v) for v in value] if value else default


BACKENDS = ["cpu", "gpu"]
BATCH_SIZES = _grid("DISAGMOE_BENCH_BATCH_SIZES", [16, 32, 64, 128, 256])
SEQ_LENS = _grid("DISAGMOE_BENCH_SEQ_LENS", [128, 256, 512, 1024])


class StepTiming:
    """Parameters and timing knobs of the time_ classes.

    asv_runner re-runs `setup` before every timed call (with `number = 1`,
    older asv_runner versions do too: once per sample of one call), so each
    call starts from the state `setup` leaves. Every process measures one grid
    point of one backend; importing torch dominates its cost, so a few dozen
    one-call samples are enough and asv's time-based warm-up is off (`setup`
    warms up explicitly: Triton compiles, CUDA graphs are captured).
    """

    params = (BACKENDS, BATCH_SIZES, SEQ_LENS)
    param_names = ["backend", "batch_size", "seq_len"]
    processes = 1
    number = 1
    repeat = (10, 40, 0.25)  # at least 10 samples, at most 40, stop adding after 0.25 s
    warmup_time = 0.0
    timeout = 300  # a cold Triton cache compiles on the first call


def workloads():
    """The workloads module of the installed commit, never a copy found elsewhere (an
    editable install of another checkout would otherwise fill in for a commit
    that predates it)."""
    import disagmoe

    try:
        from disagmoe import workloads as bench
    except ImportError:  # commits before the split kept the workloads in disagmoe.bench
        from disagmoe import bench
    if os.path.dirname(bench.__file__) != os.path.dirname(disagmoe.__file__):
        raise ImportError(f"{bench.__name__} comes from {bench.__file__}, not from the installed "
                          f"disagmoe ({disagmoe.__file__}): this commit predates the benchmark workloads")
    return bench


_states: dict = {}


def decode_state(backend: str, batch_size: int, seq_len: int, owner: str = "decode"):
    """This process's warmed-up `disagmoe.workloads.DecodeState` for the grid point, built
    on first use on the default device (CUDA if any, else torch's CPU device).
    A benchmark that empties the manager passes its own `owner`."""
    key = (owner, backend, batch_size, seq_len)
    if key not in _states:
        bench = workloads()
        bench.limit_cpu_threads(bench.default_device())
        _states[key] = bench.decode_state(backend, batch_size, seq_len)
    return _states[key]


def measure_inverse_speedups(rounds: int = 9, iterations: int = 20, warmup: int = 5) -> dict:
    """GPU time over CPU time of each decode-step operation, for the whole grid in one process.

    Per grid point both backends take turns as in `python -m disagmoe.bench`;
    each of `rounds` rounds of `iterations` steps gives one ratio of medians,
    so asv gets samples (and confidence intervals) rather than one number.
    """
    import statistics

    bench = workloads()
    device = bench.default_device()
    bench.limit_cpu_threads(device)
    ratios = {}
    for batch_size in BATCH_SIZES:
        for seq_len in SEQ_LENS:
            states = {backend: bench.decode_state(backend, batch_size, seq_len) for backend in BACKENDS}
            bench.time_decode_steps(states, warmup)
            point = ratios[(batch_size, seq_len)] = {op: [] for op in bench.OPS}
            for _ in range(rounds):
                samples = bench.time_decode_steps(states, iterations)
                for op in bench.OPS:
                    ratio = statistics.median(samples["gpu"][op]) / statistics.median(samples["cpu"][op])
                    point[op].append(float(f"{ratio:.4g}"))
    return {"device": bench.device_name(device), "ratios": ratios}


def measure_footprints() -> dict:
    """`memory_footprint()` of each backend's manager for every grid point, once its
    decode state has run every benchmarked operation (buffers at their size)."""
    bench = workloads()

    device = bench.default_device()
    footprints = {}
    for backend in BACKENDS:
        for batch_size in BATCH_SIZES:
            for seq_len in SEQ_LENS:
                state = bench.decode_state(backend, batch_size, seq_len)
                footprint = state.manager.memory_footprint()  # plain ints: readers skip torch
                footprints[(backend, batch_size, seq_len)] = {"device_bytes": footprint.device_bytes,
                                                              "host_bytes": footprint.host_bytes}
                del state
    return {"device": bench.device_name(device), "on_cuda": device.type == "cuda", "footprints": footprints}

"""Decode steps where serving engines live: batch 16-1024 x context 1K-64K, each design.

B requests holding L tokens decode one token a step, their lengths growing every step
as in a real decode (`disagmoe.serving.workloads.DecodeWorkload`, lengths="grow", one
layer a step: update + pack). Variants: cpu-bs16, gpu-bs1 (token level), gpu-bs16 (paged, the
cpu backend's block size) and hybrid-bs16. Timing modes
(`disagmoe.serving.timing`): synced (each call until the device is done), pipelined
(windows of 32 steps back to back, one synchronise at the end: wall and host time per
step) and busy (each step followed by a 300 us stand-in forward: the device time the
bookkeeping adds, and host time; CUDA only). One process measures the whole grid
(`serving.measure_grid`); the windows are asv's samples.

For verdicts compare `RelativeStep` (a variant's pipelined step over a fixed reference
step's, timed in turn) and `InverseSpeedup`.
"""

from .serving import (
    BASELINE,
    BATCH_SIZES,
    COMPARED,
    CONTEXTS,
    VARIANTS,
    check_measured,
    measure_grid,
    ratios,
    samples,
    step_tail,
)


def setup_cache():
    measured = measure_grid("decode", [(b, c) for b in BATCH_SIZES for c in CONTEXTS])
    print(f"bench_pipelined: measured on {measured['device']}")
    return measured


setup_cache.timeout = 1800


class Step:
    params = (VARIANTS, BATCH_SIZES, CONTEXTS)
    param_names = ["variant", "batch_size", "context"]
    unit = "us per step"
    processes = 1

    def setup(self, cache, variant, batch_size, context):
        check_measured(cache, (batch_size, context), variant)

    def track_synced(self, cache, variant, batch_size, context):
        return samples(cache, (batch_size, context), "synced", variant, "wall_us")

    track_synced.pretty_name = "decode step, synced (each call until the device is done): us, lower is better"

    def track_pipelined(self, cache, variant, batch_size, context):
        return samples(cache, (batch_size, context), "pipelined", variant, "wall_us")

    track_pipelined.pretty_name = "decode step, pipelined (32 back to back): wall us per step, lower is better"

    def track_pipelined_host(self, cache, variant, batch_size, context):
        return samples(cache, (batch_size, context), "pipelined", variant, "host_us")

    track_pipelined_host.pretty_name = "decode step, pipelined: host us per step (until the calls return)"

    def track_pipelined_host_p99(self, cache, variant, batch_size, context):
        return step_tail(cache, (batch_size, context), "pipelined", variant, "p99")

    track_pipelined_host_p99.pretty_name = "decode step, pipelined: p99 of each step's host us (the tail)"

    def track_busy_added(self, cache, variant, batch_size, context):
        check_measured(cache, (batch_size, context), variant, "busy")
        return samples(cache, (batch_size, context), "busy", variant, "added_us")

    track_busy_added.pretty_name = "decode step behind a 300 us forward: device us added per step"

    def track_busy_host(self, cache, variant, batch_size, context):
        check_measured(cache, (batch_size, context), variant, "busy")
        return samples(cache, (batch_size, context), "busy", variant, "host_us")

    track_busy_host.pretty_name = "decode step behind a 300 us forward: host us per step"


class InverseSpeedup:
    params = (COMPARED, BATCH_SIZES, CONTEXTS)
    param_names = ["variant", "batch_size", "context"]
    unit = "variant time / cpu-bs16 time"
    processes = 1

    def setup(self, cache, variant, batch_size, context):
        check_measured(cache, (batch_size, context), variant)

    def track_pipelined(self, cache, variant, batch_size, context):
        return ratios(cache, (batch_size, context), "pipelined", variant, BASELINE)

    track_pipelined.pretty_name = ("decode step, pipelined: variant time / cpu-bs16 time = 1 / speedup, "
                                   "lower is better")

    def track_synced(self, cache, variant, batch_size, context):
        return ratios(cache, (batch_size, context), "synced", variant, BASELINE)

    track_synced.pretty_name = "decode step, synced: variant time / cpu-bs16 time = 1 / speedup, lower is better"


class RelativeStep:
    params = (VARIANTS, BATCH_SIZES, CONTEXTS)
    param_names = ["variant", "batch_size", "context"]
    unit = "step time / reference step time"
    processes = 1

    def setup(self, cache, variant, batch_size, context):
        check_measured(cache, (batch_size, context), variant)

    def track_pipelined(self, cache, variant, batch_size, context):
        return ratios(cache, (batch_size, context), "pipelined", variant, "reference")

    track_pipelined.pretty_name = "decode step, pipelined: wall time / reference step's, lower is better (verdicts)"

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

    track_pipelined.pretty_name = "decode step, pipelined: variant time / cpu-bs16 time = 1 / speedup, lower is better"

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


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03, so that moving shared code does not start a history
# over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
InverseSpeedup.track_pipelined.version = "ca5d5707af2ee651da1dd4156df5691a54bb42f2e7f812efa841f798d53ffdca"
InverseSpeedup.track_synced.version = "af7c735858b7abad5cda76fc35004e29117237eee6d56b6b1e25e0f6633062fb"
RelativeStep.track_pipelined.version = "90f9a7285e087b721ac4aa899e81ac9136b3e7a07445440f5f4d99d7ef18bae6"
Step.track_busy_added.version = "4c77475ffacfed851f553dc382179d536638abe529f14d70fe7b6066e4ea50f2"
Step.track_busy_host.version = "6b6dfb2255d9de87be12575314d7af8ed224f2bd9e61e96cb676966ac6592bd6"
Step.track_pipelined.version = "68328573c7acbcb49c8781090c67e04f1ea1208dc29729d758f96de4c534371a"
Step.track_pipelined_host.version = "95c49784ca60c8d35bb150124368f70b1d05d064e4e9635b5cab5c6c37c52dc7"
Step.track_pipelined_host_p99.version = "2b51ddfcc0837a773c276d22e1c42b56feb598d42d6956e32f6c80d3c14c7743"
Step.track_synced.version = "c15687482a8c5e74f66c1ffca8ce3c3ad939c3420f6a3ce63be2edd46f6a43fb"

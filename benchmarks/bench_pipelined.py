"""Decode steps where serving engines live: batch 16-1024 x context 1K-64K, each design.

B requests holding L tokens decode one token a step, their lengths growing every step
as in a real decode (`disagmoe_bench.workloads.DecodeWorkload`, lengths="grow", one
layer a step: update + pack). Variants: cpu-bs16, gpu-bs1 (token level), gpu-bs16 (paged, the
cpu design's block size) and hybrid-bs16. Timing modes
(`disagmoe_bench.timing`): synced (each call until the device is done), pipelined
(windows of 32 steps back to back, one synchronise at the end: wall and host time per
step) and busy (each step followed by a 300 us stand-in forward: the device time the
bookkeeping adds, and host time; CUDA only). One process measures the whole grid
(`serving.measure_grid`); the windows are asv's samples.

For verdicts compare `RelativeStep` (`track_pipelined`: a variant's pipelined step over a
fixed reference step's, timed in turn; `track_pipelined_host_p99`: the p99 of its step's
host time over the reference's, step_tail.py) and `InverseSpeedup` (verdict_set.py).
"""

from .serving import BATCH_SIZES, CONTEXTS, SERVING_FIGURES, measure_grid, speedup_class, step_classes


def setup_cache():
    measured = measure_grid("decode", [(b, c) for b in BATCH_SIZES for c in CONTEXTS])
    print(f"bench_pipelined: measured on {measured['device']}")
    return measured


setup_cache.timeout = 1800

Step, RelativeStep = step_classes("decode", (BATCH_SIZES, CONTEXTS), ["batch_size", "context"], SERVING_FIGURES)
InverseSpeedup = speedup_class("decode", (BATCH_SIZES, CONTEXTS), ["batch_size", "context"])


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03 (the tail verdict's on 2026-12-07), so that moving
# shared code does not start a history over. Change one only where what the benchmark
# measures changes (docs/benchmarking.md).
InverseSpeedup.track_pipelined.version = "ca5d5707af2ee651da1dd4156df5691a54bb42f2e7f812efa841f798d53ffdca"
InverseSpeedup.track_synced.version = "af7c735858b7abad5cda76fc35004e29117237eee6d56b6b1e25e0f6633062fb"
RelativeStep.track_pipelined.version = "90f9a7285e087b721ac4aa899e81ac9136b3e7a07445440f5f4d99d7ef18bae6"
RelativeStep.track_pipelined_host_p99.version = "63c280cefadef38cf1c67269d479a9926409a3cf43e7234930abf6be7ce5b42f"
Step.track_busy_added.version = "4c77475ffacfed851f553dc382179d536638abe529f14d70fe7b6066e4ea50f2"
Step.track_busy_host.version = "6b6dfb2255d9de87be12575314d7af8ed224f2bd9e61e96cb676966ac6592bd6"
Step.track_pipelined.version = "68328573c7acbcb49c8781090c67e04f1ea1208dc29729d758f96de4c534371a"
Step.track_pipelined_host.version = "95c49784ca60c8d35bb150124368f70b1d05d064e4e9635b5cab5c6c37c52dc7"
Step.track_pipelined_host_p99.version = "2b51ddfcc0837a773c276d22e1c42b56feb598d42d6956e32f6c80d3c14c7743"
Step.track_synced.version = "c15687482a8c5e74f66c1ffca8ce3c3ad939c3420f6a3ce63be2edd46f6a43fb"

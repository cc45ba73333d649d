"""Continuous-batching steps where serving engines live: 64-1024 running requests, prompts up to 2K-64K.

The seeded trace of `disagmoe.serving.workloads.TraceConfig` (R running requests,
long-tailed prompts up to P and outputs up to 2048, chunked prefill of 8192 tokens a
step, finished requests released and replaced; two layers a step: release + update +
pack, then update + pack), replayed by every variant: cpu-bs16, gpu-bs1, gpu-bs16 and hybrid-bs16.
Timing modes as in bench_pipelined (synced, pipelined windows of 32 steps, busy behind a
300 us forward, CUDA only). One process measures the whole grid; the windows are asv's
samples.

For verdicts compare `RelativeStep` (a variant's pipelined trace step over a fixed
reference step's, timed in turn) and `InverseSpeedup`.
"""

from .serving import (
    BASELINE,
    COMPARED,
    TRACE_PROMPTS,
    TRACE_RUNNING,
    VARIANTS,
    check_measured,
    measure_grid,
    ratios,
    samples,
    step_tail,
)


def setup_cache():
    measured = measure_grid("trace", [(r, p) for r in TRACE_RUNNING for p in TRACE_PROMPTS])
    print(f"bench_trace: measured on {measured['device']}")
    return measured


setup_cache.timeout = 1800


class Step:
    params = (VARIANTS, TRACE_RUNNING, TRACE_PROMPTS)
    param_names = ["variant", "running", "max_prompt"]
    unit = "us per step"
    processes = 1

    def setup(self, cache, variant, running, max_prompt):
        check_measured(cache, (running, max_prompt), variant)

    def track_synced(self, cache, variant, running, max_prompt):
        return samples(cache, (running, max_prompt), "synced", variant, "wall_us")

    track_synced.pretty_name = "trace step, synced (each call until the device is done): us, lower is better"

    def track_pipelined(self, cache, variant, running, max_prompt):
        return samples(cache, (running, max_prompt), "pipelined", variant, "wall_us")

    track_pipelined.pretty_name = "trace step, pipelined (32 back to back): wall us per step, lower is better"

    def track_pipelined_host(self, cache, variant, running, max_prompt):
        return samples(cache, (running, max_prompt), "pipelined", variant, "host_us")

    track_pipelined_host.pretty_name = "trace step, pipelined: host us per step (until the calls return)"

    def track_pipelined_host_p99(self, cache, variant, running, max_prompt):
        return step_tail(cache, (running, max_prompt), "pipelined", variant, "p99")

    track_pipelined_host_p99.pretty_name = "trace step, pipelined: p99 of each step's host us (the tail)"

    def track_busy_added(self, cache, variant, running, max_prompt):
        check_measured(cache, (running, max_prompt), variant, "busy")
        return samples(cache, (running, max_prompt), "busy", variant, "added_us")

    track_busy_added.pretty_name = "trace step behind a 300 us forward: device us added per step"

    def track_busy_host(self, cache, variant, running, max_prompt):
        check_measured(cache, (running, max_prompt), variant, "busy")
        return samples(cache, (running, max_prompt), "busy", variant, "host_us")

    track_busy_host.pretty_name = "trace step behind a 300 us forward: host us per step"


class InverseSpeedup:
    params = (COMPARED, TRACE_RUNNING, TRACE_PROMPTS)
    param_names = ["variant", "running", "max_prompt"]
    unit = "variant time / cpu-bs16 time"
    processes = 1

    def setup(self, cache, variant, running, max_prompt):
        check_measured(cache, (running, max_prompt), variant)

    def track_pipelined(self, cache, variant, running, max_prompt):
        return ratios(cache, (running, max_prompt), "pipelined", variant, BASELINE)

    track_pipelined.pretty_name = ("trace step, pipelined: variant time / cpu-bs16 time = 1 / speedup, "
                                   "lower is better")

    def track_synced(self, cache, variant, running, max_prompt):
        return ratios(cache, (running, max_prompt), "synced", variant, BASELINE)

    track_synced.pretty_name = "trace step, synced: variant time / cpu-bs16 time = 1 / speedup, lower is better"


class RelativeStep:
    params = (VARIANTS, TRACE_RUNNING, TRACE_PROMPTS)
    param_names = ["variant", "running", "max_prompt"]
    unit = "step time / reference step time"
    processes = 1

    def setup(self, cache, variant, running, max_prompt):
        check_measured(cache, (running, max_prompt), variant)

    def track_pipelined(self, cache, variant, running, max_prompt):
        return ratios(cache, (running, max_prompt), "pipelined", variant, "reference")

    track_pipelined.pretty_name = "trace step, pipelined: wall time / reference step's, lower is better (verdicts)"

"""Continuous-batching steps where serving engines live: 64-1024 running requests, prompts up to 2K-64K.

The seeded trace of `disagmoe_bench.workloads.TraceConfig` (R running requests,
long-tailed prompts up to P and outputs up to 2048, chunked prefill of 8192 tokens a
step, finished requests released and replaced; two layers a step: release + update +
pack, then update + pack), replayed by every variant: cpu-bs16, gpu-bs1, gpu-bs16 and hybrid-bs16.
Timing modes as in bench_pipelined (synced, pipelined windows of 32 steps, busy behind a
300 us forward, CUDA only). One process measures the whole grid; the windows are asv's
samples.

For verdicts compare `RelativeStep` (`track_pipelined`: a variant's pipelined trace step
over a fixed reference step's, timed in turn; `track_pipelined_host_p99`: the p99 of its
step's host time over the reference's, step_tail.py) and `InverseSpeedup` (verdict_set.py).
"""

from .serving import SERVING_FIGURES, TRACE_PROMPTS, TRACE_RUNNING, measure_grid, speedup_class, step_classes


def setup_cache():
    measured = measure_grid("trace", [(r, p) for r in TRACE_RUNNING for p in TRACE_PROMPTS])
    print(f"bench_trace: measured on {measured['device']}")
    return measured


setup_cache.timeout = 1800

Step, RelativeStep = step_classes("trace", (TRACE_RUNNING, TRACE_PROMPTS), ["running", "max_prompt"], SERVING_FIGURES)
InverseSpeedup = speedup_class("trace", (TRACE_RUNNING, TRACE_PROMPTS), ["running", "max_prompt"])


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03 (the tail verdict's on 2026-12-07), so that moving
# shared code does not start a history over. Change one only where what the benchmark
# measures changes (docs/benchmarking.md).
InverseSpeedup.track_pipelined.version = "d39045b9e93a202796f970d2b4a44f5b75e2f2dd8a55f4801902ab73d8eee9ea"
InverseSpeedup.track_synced.version = "5c070d63bf2a78ce58f76c7564bf41bb9b988d5aa12851a2e93e7be0c8b08d67"
RelativeStep.track_pipelined.version = "e5f2ff3b076072f4061ef41d2778af249a90225825c8971a0b294edfd049bd92"
RelativeStep.track_pipelined_host_p99.version = "d446d08d742f180abad2252350b91666dd3093c25c6ec0a026fcaf367752372f"
Step.track_busy_added.version = "9ca0982821abc2417185515d75545a3108c44014cdacb04207cf4a81f17718c2"
Step.track_busy_host.version = "fef4df2d416b68a685c6528e9ce71e9cdfde1acbe4bd0cee25e871d4f7f18a1a"
Step.track_pipelined.version = "af2a796274b119dfd90b050e0bfb71f7e7804ba114ced23538c1df2809ff566e"
Step.track_pipelined_host.version = "6871e0b79f3e8355aeb2fb6e73da5a582f8dd613608d6d4eb09bb8815e42b69f"
Step.track_pipelined_host_p99.version = "9ce01deeef00f73243a304fc10d9ee6d5790019ff27db0040cca0697f5b28c01"
Step.track_synced.version = "eef1c8bbf2d4c6c1a99d79570c3ac737e83f75c9d1c94acf7dd7725f8201e8f7"

"""Shared prefixes on production traces: what the managers' prefix cache serves, and what it costs a step.

The bundled traces with prefix hashes (`disagmoe_bench/data/traces`: Kimi's Mooncake
conversation trace, 512-token hash blocks; the head of ServeGen's offline batch trace A,
16-token ones, replayed as a burst and at Poisson arrivals) go through the continuous-
batching scheduler at its defaults (as bench_replay), each trace's busiest stretch of 304
steps (16 untimed, then 9 windows of 32), in three prefix-cache modes
(`disagmoe_bench.scheduler`, docs/prefix-caching.md): `off` (no hashes: bench_replay's
steps), `miss` (the cache's machinery on, every hash unique: what it costs at a 0% hit
rate; the same batches as `off`) and `on` (matched prompt tokens shorten the prefills).
The variants at the scheduler's block size replay them, each with the scheduler's pool
(its evictions are the model's, and every `match_prefix` must return the length the model
predicted): cpu-bs16, gpu-bs16 and hybrid-bs16.

`Cache` tracks the window's hit rate (prompt tokens served from the cache over the prompt
tokens its admissions prefill) beside its bound (the same from a cache that keeps every
block of every earlier admission), per trace and mode: the same for every design.
`PrefixStep` tracks each variant's p50 and p99 of every step's host time (pipelined windows)
and, on CUDA, the device time a step adds behind a 300 us forward: `miss` over `off` is the
machinery's cost, `on` over `miss` what sharing changes. One process measures everything
(`serving.measure_prefix`); a commit whose lab or managers have no prefix cache skips the
module (n/a). `DISAGMOE_PREFIX_TRACES` picks fewer traces.
"""

from .serving import PREFIX_MODES, PREFIX_TRACES, PREFIX_VARIANTS, check_measured, figure_class, measure_prefix


def setup_cache():
    measured = measure_prefix(PREFIX_TRACES, PREFIX_MODES)
    print(f"bench_prefix: measured on {measured['device']}")
    return measured


setup_cache.timeout = 1800


class Cache:
    """The window's hit rate and its bound, per trace and prefix-cache mode (the same for
    every design: the scheduler's model decides them, and every manager must agree)."""

    params = (PREFIX_TRACES, [m for m in PREFIX_MODES if m != "off"])
    param_names = ["trace", "prefix_cache"]
    unit = "prompt tokens served / prompt tokens prefilled"
    processes = 1

    def setup(self, cache, *key):
        check_measured(cache, key)

    def track_hit_rate(self, cache, *key):
        return cache["prefix"][key]["hit_rate"]

    def track_bound(self, cache, *key):
        return cache["prefix"][key]["bound"]


Cache.track_hit_rate.pretty_name = "prefix cache: prompt tokens served from the cache / prompt tokens prefilled"
Cache.track_bound.pretty_name = "prefix cache: the same from a cache that keeps every block (the bound)"

PrefixStep = figure_class(
    "PrefixStep",
    "prefix replay",
    (PREFIX_TRACES, PREFIX_MODES),
    ["trace", "prefix_cache"],
    ["pipelined_host_p50", "pipelined_host_p99", "busy_added"],
    PREFIX_VARIANTS,
)


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code when the module was added, so that moving shared code does not start
# a history over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
Cache.track_bound.version = "678b3c9ecf76f8411c5464d47ce3740ba905ff83a8a4c4a9c346ef94e2ebb20b"
Cache.track_hit_rate.version = "ab401cb5939b73c4ff6f17e4c71877f17b247fdc857892e0c0e0b313433f7274"
PrefixStep.track_busy_added.version = "f239ea0350c619c32ea90e0aad7d6075bde43a5bb8b881d0b41b917e27f52b26"
PrefixStep.track_pipelined_host_p50.version = "f239ea0350c619c32ea90e0aad7d6075bde43a5bb8b881d0b41b917e27f52b26"
PrefixStep.track_pipelined_host_p99.version = "f239ea0350c619c32ea90e0aad7d6075bde43a5bb8b881d0b41b917e27f52b26"

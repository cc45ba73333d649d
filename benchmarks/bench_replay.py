"""Production traffic: the bundled traces' busiest stretch, scheduled as an engine would, each design.

The two production request logs bundled with the package (`disagmoe_bench/data/traces`: Azure's
LLM inference trace, conversation service, and Kimi's Mooncake conversation trace) go
through the deterministic continuous-batching scheduler
(`disagmoe_bench.scheduler`: a token budget of 8192 a step, chunked prefill, at most
256 running requests, a pool of 32768 blocks of 16, preemption by recomputation, 20 ms a
step). The window replayed is the trace's busiest stretch of 304 steps (16 untimed,
then 9 windows of 32: the serving modules' timing), found by the scheduler's token count
(`busiest_window`); the requests holding KV when it opens are registered untimed. Two layers
a step (release + update + pack, then update + pack), replayed by every variant:
cpu-bs16, gpu-bs1, gpu-bs16 and hybrid-bs16. Timing modes as in bench_pipelined (synced,
pipelined windows of 32 steps, busy behind a 300 us forward, CUDA only). The tail of
each step's own host time (p50, p90, p99, max) is its own figure: on a real trace the
steps differ (a prefill chunk of thousands of tokens beside decodes), and a serving
engineer reads the p99 first. One process measures both traces (about a minute on a GPU
machine); the windows are asv's samples.

For verdicts compare `RelativeStep` (`track_pipelined`: a variant's pipelined replay step
over a fixed reference step's, timed in turn; `track_pipelined_host_p99`: the p99 of its
step's host time over the reference's, step_tail.py; verdict_set.py).
"""

from .serving import REPLAY_FIGURES, REPLAY_TRACES, measure_replays, step_classes


def setup_cache():
    measured = measure_replays(REPLAY_TRACES)
    print(f"bench_replay: measured on {measured['device']}")
    return measured


setup_cache.timeout = 1800

Step, RelativeStep = step_classes("replay", (REPLAY_TRACES,), ["trace"], REPLAY_FIGURES)


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03 (the tail verdict's on 2026-12-07), so that moving
# shared code does not start a history over. Change one only where what the benchmark
# measures changes (docs/benchmarking.md).
RelativeStep.track_pipelined.version = "699837c5690789ad6af18299064691cb31016f5ed39bbd076b2f2415beeda786"
RelativeStep.track_pipelined_host_p99.version = "1459cffafa6b3679a04b2f85414303ec1d30fdabe8798bbd2437e4916a3c9725"
Step.track_busy_added.version = "298f5b2117db49970c6f5bcc221a4fb254a7663e986a43e84b5b1cba9f594a33"
Step.track_pipelined.version = "da60dc2fbed630fc7f13a1efd96fc4128ee95292d7220d14826166c9b36cb537"
Step.track_pipelined_host.version = "7feb903d8c895b251bcdce3889545f671cd857ac32b9cc33aaeb448bf87d9d65"
Step.track_pipelined_host_max.version = "846aeee43e40c2d11c796d3112a58e363de1d38a52ccee86cd034994189be1cb"
Step.track_pipelined_host_p50.version = "4048a0a7f4dc2bae0001cb62eae99144bd947d06b2376c45ba7f404b13815311"
Step.track_pipelined_host_p90.version = "6bf604cb825c86746dd9b24f30cef9722fedcafcf9a19ee35dbbf9de1e95e9aa"
Step.track_pipelined_host_p99.version = "722600b03b8166019510e7ee0d6af90cc247130bbe63044e9a184fc37f0bb565"
Step.track_synced.version = "1750eb748840530ab6cbfde6bd72bf53daedb920a01508541499ca9284063a3a"

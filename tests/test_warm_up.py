"""warm_up(): after it, a serving loop compiles nothing and captures nothing.

The managers count the kernels they compile and the CUDA graphs they capture
(`num_compiles`, `num_captures`); a 1000-step continuous-batching trace after a warm-up
sized for its largest step leaves both where the warm-up left them, on every design.
Without the warm-up the same trace captures inside the loop (so the counters count)."""

from __future__ import annotations

import pytest

from disagmoe_bench.scheduler import SchedulerConfig, TraceReplay
from disagmoe_bench.traces import read_replay
from disagmoe_bench.workloads import TraceConfig, TraceWorkload

from configs import BY_ID, CPU_DEVICE_CONFIGS, HAS_CUDA

STEPS = 1000
TRACE = TraceConfig(running=24, max_prompt=600, chunk=256, max_output=120, seed=3)
CUDA_IDS = ["cpu-cuda", "gpu-triton-graphs", "gpu-triton", "hybrid-triton-graphs", "hybrid-triton"]


def trace_manager(config_id: str, **kwargs):
    workload = TraceWorkload(TRACE, STEPS)
    max_seq_len, max_reqs = workload.sizes(STEPS)
    manager = BY_ID[config_id].make(
        block_size=16,
        num_blocks=max_reqs * -(-max_seq_len // 16),
        max_running_reqs=max_reqs,
        max_seq_len=max_seq_len,
        layer_ids=(0, 1),
    )
    return workload, manager


def replay(workload: TraceWorkload, manager) -> None:
    workload.start(manager)
    for k in range(STEPS):
        workload.step_at(k).run(manager)
    manager.synchronize()
    manager.check_integrity()


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("config_id", CUDA_IDS)
def test_a_warm_trace_compiles_and_captures_nothing(config_id):
    workload, manager = trace_manager(config_id)
    workload.start(manager)
    manager.warm_up(workload.max_step_tokens)
    compiles, captures = manager.num_compiles, manager.num_captures
    replay(workload, manager)
    assert (manager.num_compiles, manager.num_captures) == (compiles, captures)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("config_id", ["gpu-triton-graphs", "hybrid-triton-graphs"])
def test_a_cold_trace_captures_in_the_loop(config_id):
    """The counters count: without warm_up the first launch of each kind is captured
    during the trace."""
    workload, manager = trace_manager(config_id)
    replay(workload, manager)
    assert manager.num_captures > 0


def prefix_replay(config_id: str) -> tuple[TraceReplay, object]:
    """A ServeGen window with the prefix cache on (matches, shared blocks, evictions: its
    pool of 96 blocks is small for 32 running requests), and a manager sized for it."""
    config = SchedulerConfig(token_budget=512, max_running=32, num_blocks=96)
    replay = TraceReplay(read_replay("servegen-offline")[:600], config, 150, 120, "servegen-offline", "on")
    max_seq_len, max_running = replay.sizes(replay.num_steps)
    manager = BY_ID[config_id].make(
        block_size=16,
        num_blocks=replay.pool_blocks,
        max_running_reqs=max_running,
        max_seq_len=max_seq_len,
        layer_ids=replay.layer_ids,
    )
    return replay, manager


@pytest.mark.parametrize(
    "config_id", [c.id for c in CPU_DEVICE_CONFIGS] + (CUDA_IDS if HAS_CUDA else []), ids=lambda c: c
)
def test_a_warm_prefix_replay_compiles_and_captures_nothing(config_id):
    """With sharing on, the steps add matches, shared blocks and evictions (on the gpu
    design, the moves kernel): after warm_up none of them compiles or captures, every
    match is the length the scheduler's model predicted (Match.run checks), the books
    stay sound, and the window evicted (so the eviction path ran)."""
    replay, manager = prefix_replay(config_id)
    replay.start(manager)
    manager.warm_up(replay.max_step_tokens)
    compiles, captures = manager.num_compiles, manager.num_captures
    for k in range(replay.num_steps):
        replay.step_at(k).run(manager)
    manager.synchronize()
    manager.check_integrity()
    assert (manager.num_compiles, manager.num_captures) == (compiles, captures)
    stats = manager.prefix_cache_stats()
    assert stats.hit_blocks > 0 and stats.evicted_blocks > 0


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_a_kernel_compiled_for_a_manager_is_counted():
    """A launch shape no other manager in this process uses: its warm-up compiles the pack
    kernel for it (Triton's cache holds one more kernel), and counts it."""
    from disagmoe.block_manager.kernels_triton import PackLaunch

    config = BY_ID["gpu-triton-graphs"]
    manager = config.cls(
        *_configs(),
        8,
        device="cuda",
        kernels="triton",
        pack_launch=PackLaunch(block_w=32, block_t=32, parts=3, num_warps=2),
    )
    manager.warm_up()
    assert manager.num_compiles >= 1
    before = manager.num_compiles
    manager.warm_up()  # again: nothing new
    assert manager.num_compiles == before


def _configs():
    from disagmoe import CacheConfig, ModelConfig

    return ModelConfig((0,), 256, 8), CacheConfig(16, 128)


@pytest.mark.parametrize("config", CPU_DEVICE_CONFIGS, ids=[b.id for b in CPU_DEVICE_CONFIGS])
def test_warm_up_on_the_cpu_device(config):
    """Torch's CPU device: nothing to compile or capture; the warm-up sizes the buffers for
    the steps it is told of, and the trace then runs as it would without it."""
    workload, manager = trace_manager(config.id)
    workload.start(manager)
    manager.warm_up(workload.max_step_tokens)
    replay(workload, manager)
    assert (manager.num_compiles, manager.num_captures) == (0, 0)


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-5, ValueError), (True, TypeError), (2.0, TypeError), ("8", TypeError), (2**31, ValueError)],
)
def test_warm_up_refuses_a_bad_token_count(make_manager, bad, error):
    manager = make_manager()
    with pytest.raises(error, match="max_num_tokens"):
        manager.warm_up(bad)

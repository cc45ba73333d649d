"""Prefix-cache replays: every step a replay makes (its warm start's and its window's) is
played on a manager that follows the contract, and every `match_prefix` returns the length
the scheduler's model predicted.

Until the managers have their prefix cache, that manager is `ContractDouble`: the contract's
cache as a `PrefixModel` of its own (not the scheduler's), in front of a real CPU manager
that makes the lengths and metadata (each request registered at its matched length with
blocks of its own, in a pool large enough for that). The tests marked `real_prefix` run the
same replays on every registered design, and skip until `BlockManager.match_prefix` exists."""

from __future__ import annotations

import pytest

import disagmoe
from disagmoe import BatchMetadata, CacheConfig, CPUBlockManager, ModelConfig
from disagmoe_bench.prefix_model import PrefixModel
from disagmoe_bench.scheduler import SchedulerConfig, TraceReplay, busiest_window
from disagmoe_bench.timing import Replay
from disagmoe_bench.traces import TraceRequest, read_replay
from disagmoe_bench.workloads import Match, PrefixMismatch, Step

real_prefix = pytest.mark.skipif(
    not hasattr(disagmoe.BlockManager, "match_prefix"), reason="the managers' prefix cache is not merged yet"
)


class ContractDouble:
    """A manager with the contract's prefix cache: a `PrefixModel` of `num_gpu_blocks`
    blocks decides matches, evictions and `num_free_slots()`; a CPU manager with a pool
    of every request at `max_seq_len` holds the lengths and makes the metadata."""

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig, max_running_reqs: int, device=None):
        self.layer_id = model_config.layer_ids[0]
        self.block_size = cache_config.block_size
        self.cache = PrefixModel(cache_config.num_gpu_blocks, cache_config.block_size)
        blocks = max_running_reqs * -(-model_config.max_seq_len // cache_config.block_size)
        self.num_blocks = blocks  # the block ids of the metadata (the CPU manager's pool)
        self.lengths = CPUBlockManager(
            model_config, CacheConfig(cache_config.block_size, blocks), max_running_reqs, device="cpu"
        )

    def match_prefix(self, req_id: int, block_hashes) -> int:
        cached = self.cache.match_prefix(req_id, block_hashes)
        if cached:
            self.lengths.update_block_table(BatchMetadata(self.layer_id, [req_id], 1, [cached]))
        return cached

    def update_block_table(self, batch: BatchMetadata) -> None:
        if batch.layer_id == self.layer_id:
            lens = list(batch.init_prefill_lens) + [1] * (len(batch.req_ids) - batch.num_prefill_seqs)
            self.cache.update(list(zip(batch.req_ids, lens)))
        self.lengths.update_block_table(batch)

    def pack_flash_attn_metadata(self, batch: BatchMetadata):
        return self.lengths.pack_flash_attn_metadata(batch)

    def release_seqs(self, req_ids) -> None:
        self.cache.release_seqs(list(req_ids))
        self.lengths.release_seqs(req_ids)

    def reset_state(self) -> None:
        self.cache.reset_state()
        self.lengths.reset_state()

    def num_free_slots(self) -> int:
        return self.cache.num_free_slots()

    def prefix_cache_stats(self):
        return self.cache.prefix_cache_stats()

    def check_integrity(self) -> None:
        self.cache.check_integrity()
        self.lengths.check_integrity()

    def warm_up(self, max_num_tokens: int | None = None) -> None:
        self.lengths.warm_up(max_num_tokens)

    def synchronize(self) -> None:
        self.lengths.synchronize()


def play(replay: TraceReplay, manager) -> list[list[int]]:
    """The window on `manager` from its warm start: every match checked, and after each step
    the manager's free slots are the scheduler's; returns each step's first-layer lengths."""
    replay.start(manager)
    lengths = []
    for k, scheduled in enumerate(replay.scheduled):
        step = replay.step_at(k)
        step.run(manager)
        lengths.append(list(step.layers[0].seq_lens))
        blocks = replay.config.num_blocks - scheduled.used_blocks
        assert manager.num_free_slots() == blocks * replay.config.block_size, f"step {k}"
    manager.check_integrity()
    return lengths


def double_for(replay: TraceReplay) -> ContractDouble:
    max_seq_len, max_running = replay.sizes(replay.num_steps)
    model = ModelConfig(layer_ids=replay.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_running)
    return ContractDouble(model, CacheConfig(replay.config.block_size, replay.pool_blocks), max_running)


SMALL = SchedulerConfig(token_budget=1024, max_running=24, num_blocks=1024, rate_scale=4.0)
WINDOWS = [  # (trace, its first requests, config, where the window opens)
    ("servegen-offline", 600, SMALL, "start"),
    ("servegen-offline", 600, SchedulerConfig(token_budget=512, max_running=32, num_blocks=96), "middle"),
    ("servegen-offline-poisson", 900, SchedulerConfig(token_budget=512, max_running=32, num_blocks=200), "middle"),
    ("mooncake", 400, SchedulerConfig(token_budget=2048, max_running=8, num_blocks=3000, rate_scale=8.0), "busiest"),
]


def window(name: str, count: int, config: SchedulerConfig, where: str, mode: str, steps: int = 120) -> TraceReplay:
    requests = read_replay(name)[:count]
    start = {"start": 0, "middle": 150, "busiest": busiest_window(requests, config, steps)}[where]
    return TraceReplay(requests, config, start, steps, name, mode)


@pytest.mark.parametrize("mode", ["miss", "on"])
@pytest.mark.parametrize("name, count, config, where", WINDOWS)
def test_every_match_is_what_the_model_predicted(name, count, config, where, mode):
    replay = window(name, count, config, where, mode)
    lengths = play(replay, double_for(replay))
    for k, scheduled in enumerate(replay.scheduled):
        for m in scheduled.matches:
            assert m.cached_tokens % config.block_size == 0
            assert (m.cached_tokens == 0) if mode == "miss" else m.cached_tokens >= 0
        entries = [i for i, _ in scheduled.prefills] + list(scheduled.decodes)
        assert len(lengths[k]) == len(entries)
    stats = replay.prefix_stats()
    assert 0 <= stats["hit_rate"] <= stats["bound"] <= 1
    if mode == "on":
        assert stats["hit_rate"] > 0.1
    else:
        assert stats["hit_rate"] == 0 and stats["cached_tokens"] == 0


def test_a_window_opened_mid_trace_rebuilds_the_cache():
    """The warm start registers the requests holding KV and the evictable blocks in LRU
    order (ghost requests of negative ids); the model after it is what a manager holds."""
    requests = read_replay("servegen-offline-poisson")[:900]
    replay = TraceReplay(requests, SchedulerConfig(token_budget=512, num_blocks=200), 400, 60, "servegen", "on")
    ghosts = [m.req_id for s in replay.setup for m in s.matches if m.req_id < 0]
    assert ghosts and replay.scheduler.ghost_tokens > 0
    assert {m.req_id for s in replay.setup for m in s.matches if m.req_id >= 0} == {i for i, _ in replay.initial}
    manager = double_for(replay)
    replay.start(manager)
    rebuilt = PrefixModel(replay.config.num_blocks, replay.config.block_size)
    for step in replay.setup:
        rebuilt.release_seqs(list(step.release))
        for m in step.matches:
            assert rebuilt.match_prefix(m.req_id, m.block_hashes) == m.cached_tokens
        for batch in step.layers:
            rebuilt.update(list(zip(batch.req_ids, batch.init_prefill_lens)))
    assert manager.cache.evictable_hashes() == rebuilt.evictable_hashes() != []
    assert [manager.lengths.seq_len(i) for i, _ in replay.initial] == [n for _, n in replay.initial]
    assert manager.num_free_slots() == rebuilt.num_free_slots()


def test_a_wrong_match_names_the_request_the_design_and_both_lengths():
    manager = CPUBlockManager(ModelConfig(layer_ids=(0,), max_seq_len=64, max_batch_size_attn=4), CacheConfig(16, 8), 4)
    manager.match_prefix = lambda req_id, hashes: 32  # type: ignore[attr-defined]
    step = Step((), (), (Match(7, (1, 2, 3), 16),))
    with pytest.raises(PrefixMismatch, match="request 7: the cpu design's match_prefix returned 32 cached tokens of 3"):
        step.run(manager)
    with pytest.raises(PrefixMismatch, match="predicted 16"):
        for call, argument in step.calls(manager):
            call(argument)


def test_timing_replays_a_prefix_window_with_its_warm_start():
    """The timing modes' runner starts the window (the warm start, untimed) and plays it."""
    replay = window(
        "servegen-offline", 600, SchedulerConfig(token_budget=512, max_running=32, num_blocks=96), "middle", "on", 24
    )
    runner = Replay(double_for(replay), replay)
    runner.start()
    for _ in range(24):
        runner.step()
    runner.start()
    assert sum(w for w, _ in (runner.step_synced() for _ in range(24))) > 0
    runner.manager.check_integrity()


@real_prefix
@pytest.mark.parametrize("mode", ["miss", "on"])
@pytest.mark.parametrize("name, count, config, where", WINDOWS)
@pytest.mark.parametrize("design", sorted(disagmoe.BACKENDS))
def test_every_design_matches_what_the_model_predicted(design, name, count, config, where, mode):
    """The real managers: every match as predicted (Match.run raises otherwise), free slots
    and lengths as the double's, the cache's counters as the model's, the books sound."""
    replay = window(name, count, config, where, mode)
    max_seq_len, max_running = replay.sizes(replay.num_steps)
    model = ModelConfig(layer_ids=replay.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_running)
    manager = disagmoe.BACKENDS[design](model, CacheConfig(16, replay.pool_blocks), max_running, device="cpu")
    double = double_for(replay)
    assert play(replay, manager) == play(replay, double)
    replay.start(manager)
    replay.start(double)
    for k in range(replay.num_steps):
        replay.step_at(k).run(manager)
        replay.step_at(k).run(double)
    want, got = double.prefix_cache_stats(), manager.prefix_cache_stats()
    for field in want._fields:
        assert getattr(got, field) == getattr(want, field), field
    manager.check_integrity()


def test_requests_of_a_trace_without_hashes_are_refused():
    requests = [TraceRequest(0.0, 40, 3)]
    with pytest.raises(ValueError, match="no prefix hashes"):
        TraceReplay(requests, SMALL, 0, 4, "azure", "on")

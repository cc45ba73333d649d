"""The continuous-batching scheduler against a reference model of lengths and blocks: valid
steps for a block manager, the token budget, first come first served, preemption only when
the pool is short (newest first, recomputed under a new id), the time model, windows, and
replays of the bundled traces through a CPU block manager; without a prefix cache, the very
steps it made before it had one; with one, matches that shorten prefills, readmissions that
match again, and a pool that counts evictable blocks as available."""

from __future__ import annotations

import hashlib
from collections import deque

import numpy as np
import pytest

from disagmoe import CacheConfig, CPUBlockManager, ModelConfig
from disagmoe_bench.prefix_hashes import BlockHashes
from disagmoe_bench.scheduler import Scheduler, SchedulerConfig, TraceReplay, busiest_window
from disagmoe_bench.traces import TraceRequest, bundled, read_replay, read_trace


def blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Model:
    """What the steps say, replayed on lengths alone: asserts every promise of the scheduler
    step by step. `admissions` maps each new id to its trace request (Scheduler.admissions)."""

    def __init__(self, requests: list[TraceRequest], config: SchedulerConfig, admissions: dict) -> None:
        self.requests, self.config, self.admissions = requests, config, admissions
        self.held: dict[int, int] = {}
        self.target: dict[int, int] = {}
        self.index: dict[int, int] = {}
        self.generated = [0] * len(requests)
        self.seen: set[int] = set()
        self.finished: set[int] = set()
        self.waiting: deque[int] = deque()
        self.arrivals = [config.arrival_step(r.arrival_s) for r in requests]
        capacity = config.num_blocks * config.block_size
        self.unfit = {i for i, r in enumerate(requests) if r.prompt_tokens + r.output_tokens - 1 > capacity}
        self.next = 0
        self.k = 0
        self.preemptions = 0

    def step(self, step) -> None:
        config, bs = self.config, self.config.block_size
        first = step.layers[0]
        assert [b.layer_id for b in step.layers] == list(range(config.num_layers))
        assert all(
            (b.req_ids, b.num_prefill_seqs, b.init_prefill_lens)
            == (first.req_ids, first.num_prefill_seqs, first.init_prefill_lens)
            for b in step.layers
        )
        release = list(step.release)
        assert len(set(release)) == len(release) and set(release) <= set(self.held)
        assert self.finished <= set(release), "a finished request was not released at the next step"
        for rid in self.finished:
            del self.held[rid]
        preempted = [rid for rid in release if rid not in self.finished]
        self.finished = set()
        while self.next < len(self.requests) and self.arrivals[self.next] <= self.k:
            if self.next not in self.unfit:
                self.waiting.append(self.next)
            self.next += 1
        assert preempted == sorted(self.held, reverse=True)[: len(preempted)], "not the newest first"
        for rid in preempted:
            need = sum(1 for r, n in self.held.items() if n >= self.target[r] and n % bs == 0)
            assert need > config.num_blocks - sum(blocks(n, bs) for n in self.held.values()), (
                "a preemption while the pool held the decodes"
            )
            del self.held[rid]
            self.waiting.appendleft(self.index[rid])
            self.preemptions += 1
        ids, num_prefills, lens = first.req_ids, first.num_prefill_seqs, first.init_prefill_lens
        assert len(set(ids)) == len(ids) and not set(ids) & set(release)
        assert len(lens) == num_prefills and all(n >= 1 for n in lens)
        assert sum(lens) + len(ids) - num_prefills <= config.token_budget
        decodes = ids[num_prefills:]
        assert list(decodes) == sorted(decodes), "decodes out of admission order"
        assert set(decodes) == {r for r, n in self.held.items() if n >= self.target[r]}, (
            "a decode missing or of a request whose prefill is not done"
        )
        completed = []
        for rid, n in zip(ids, lens):
            if rid not in self.held:
                assert not preempted, "an admission in a step that preempted"
                assert rid not in self.seen, "an id used again"
                admission = self.admissions[rid]
                assert admission.index == self.waiting.popleft(), "not first come first served"
                assert self.arrivals[admission.index] <= self.k
                self.index[rid], self.held[rid] = admission.index, 0
                self.target[rid] = self.requests[admission.index].prompt_tokens + self.generated[admission.index]
                assert admission.prefill_tokens == self.target[rid] and admission.step == self.k
                self.seen.add(rid)
            assert self.held[rid] < self.target[rid] and self.held[rid] + n <= self.target[rid]
            self.held[rid] += n
            if self.held[rid] == self.target[rid]:
                completed.append(rid)
        for rid in decodes:
            self.held[rid] += 1
        for rid in [*decodes, *completed]:
            index = self.index[rid]
            self.generated[index] += 1
            assert self.generated[index] <= self.requests[index].output_tokens
            if self.generated[index] == self.requests[index].output_tokens:
                self.finished.add(rid)
        assert sum(blocks(n, bs) for n in self.held.values()) <= config.num_blocks, "the pool over-committed"
        assert len(self.held) <= config.max_running
        for rid, n in self.held.items():
            req = self.requests[self.index[rid]]
            assert n <= req.prompt_tokens + req.output_tokens - 1
        self.k += 1


def replay_checked(requests, config, num_steps):
    replay = TraceReplay(requests, config, 0, num_steps)
    model = Model(requests, config, replay.scheduler.admissions)
    for k in range(num_steps):
        model.step(replay.step_at(k))
    return replay, model


def random_trace(seed: int, n: int = 60, rate: float = 20.0, prompt: int = 300, output: int = 40):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    return [
        TraceRequest(float(t - arrivals[0]), int(rng.integers(1, prompt)), int(rng.integers(1, output)))
        for t in arrivals
    ]


CONFIGS = [
    SchedulerConfig(token_budget=128, max_running=8, num_blocks=64, block_size=16, step_seconds=0.01),
    SchedulerConfig(token_budget=64, max_running=64, num_blocks=30, block_size=8, step_seconds=0.005),
    SchedulerConfig(token_budget=512, max_running=3, num_blocks=1000, block_size=1, rate_scale=3.0),
    SchedulerConfig(token_budget=40, max_running=40, num_blocks=12, block_size=32, num_layers=3, rate_scale=0.5),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", range(4))
def test_steps_keep_every_promise(config, seed):
    requests = random_trace(seed)
    replay, model = replay_checked(requests, config, 1500)
    unfit = model.unfit
    assert replay.scheduler.rejected == unfit
    assert [i for i, r in enumerate(requests) if model.generated[i] < r.output_tokens] == sorted(unfit)
    assert not model.held and not model.waiting
    stats = replay.stats()
    assert stats["preemptions"] == model.preemptions
    assert stats["finished"] == len(requests) - len(unfit) and stats["arrived"] == len(requests)


def test_a_small_pool_preempts_and_recomputes():
    config = SchedulerConfig(token_budget=16, max_running=4, num_blocks=8, block_size=4)
    requests = [TraceRequest(0.0, 6, 10) for _ in range(4)]
    replay, model = replay_checked(requests, config, 200)
    assert model.preemptions > 0 and model.generated == [10] * 4
    admissions = replay.scheduler.admissions
    assert len(admissions) == 4 + model.preemptions
    assert any(a.prefill_tokens > 6 for a in admissions.values())  # a recomputation: prompt and outputs


def test_deterministic():
    requests, config = random_trace(7), CONFIGS[1]

    def steps(replay):
        return [(s.release, [(b.req_ids, b.init_prefill_lens) for b in s.layers]) for s in replay.steps]

    assert steps(TraceReplay(requests, config, 0, 400)) == steps(TraceReplay(requests, config, 0, 400))


def layer0(replay, k):
    batch = replay.step_at(k).layers[0]
    return replay.step_at(k).release, list(batch.req_ids), list(batch.init_prefill_lens)


def test_time_model_and_first_token():
    config = SchedulerConfig(token_budget=8, max_running=4, num_blocks=100, block_size=4, step_seconds=0.02)
    assert [config.arrival_step(t) for t in (0.0, 0.01, 0.02, 0.05, 0.06, 0.1, 0.100001)] == [0, 1, 1, 3, 3, 5, 6]
    assert SchedulerConfig(rate_scale=2.0).arrival_step(0.1) == 3
    requests = [TraceRequest(0.0, 5, 1), TraceRequest(0.05, 20, 3)]
    replay = TraceReplay(requests, config, 0, 10)
    assert layer0(replay, 0) == ((), [0], [5])  # the first token comes from the prefill
    assert layer0(replay, 1) == ((0,), [], [])  # and it was the last: released, no decode
    assert layer0(replay, 3) == ((), [1], [8])  # arrives at 0.05: step 3; chunked prefill
    assert layer0(replay, 4) == ((), [1], [8])
    assert layer0(replay, 5) == ((), [1], [4])
    assert [layer0(replay, k) for k in (6, 7, 8)] == [((), [1], []), ((), [1], []), ((1,), [], [])]
    assert replay.sizes(10) == (23, 1) and replay.max_step_tokens == 8


def test_budget_is_shared_decodes_first():
    config = SchedulerConfig(token_budget=10, max_running=3, num_blocks=100, block_size=4)
    requests = [TraceRequest(0.0, 4, 50), TraceRequest(0.0, 4, 50), TraceRequest(0.0, 30, 50), TraceRequest(0.0, 1, 5)]
    replay = TraceReplay(requests, config, 0, 4)
    assert layer0(replay, 0) == ((), [0, 1, 2], [4, 4, 2])
    assert layer0(replay, 1) == ((), [2, 0, 1], [8])  # max_running: request 3 waits
    assert replay.stats()["waiting_peak"] == 1


def test_window_is_the_full_replay_sliced():
    requests, config = random_trace(3, n=80, rate=5.0), CONFIGS[0]
    full = TraceReplay(requests, config, 0, 900)
    model = Model(requests, config, full.scheduler.admissions)
    releasing = [k for k in range(900) if full.step_at(k).release]  # finished requests held until then
    for start in sorted({0, 37, 700, *releasing[:3]}):
        while model.k < start:
            model.step(full.step_at(model.k))
        window = TraceReplay(requests, config, start, 120)
        assert window.initial == sorted(model.held.items())
        assert [layer0(window, k) for k in range(120)] == [layer0(full, start + k) for k in range(120)]


def test_busiest_window():
    config = SchedulerConfig(step_seconds=0.5)
    rng = np.random.default_rng(1)
    requests = [
        TraceRequest(float(t), int(rng.integers(1, 900)), int(rng.integers(1, 90)))
        for t in np.sort(rng.uniform(0, 300, 400))
    ]
    tokens = np.zeros(601, dtype=np.int64)
    for r in requests:
        tokens[config.arrival_step(r.arrival_s)] += r.prompt_tokens + r.output_tokens
    for width in (1, 20, 77, 600, 5000):
        sums = [tokens[s : s + width].sum() for s in range(max(1, len(tokens) - width + 1))]
        assert busiest_window(requests, config, width) == int(np.argmax(sums))
    assert busiest_window([], config, 10) == 0


def test_config_and_requests_are_checked():
    for bad, error in (
        ({"token_budget": 0}, ValueError),
        ({"max_running": 2.0}, TypeError),
        ({"step_seconds": 0}, ValueError),
        ({"rate_scale": float("nan")}, ValueError),
        ({"num_layers": True}, TypeError),
        ({"max_running": 300, "token_budget": 200}, ValueError),
    ):
        with pytest.raises(error, match=next(iter(bad))):
            SchedulerConfig(**bad)
    with pytest.raises(ValueError, match="sort"):
        Scheduler([TraceRequest(1.0, 1, 1), TraceRequest(0.5, 1, 1)], SchedulerConfig())
    with pytest.raises(ValueError, match="request 0"):
        Scheduler([TraceRequest(0.0, 0, 1)], SchedulerConfig())
    with pytest.raises(IndexError):
        TraceReplay([TraceRequest(0.0, 1, 1)], SchedulerConfig(), 0, 5).step_at(5)


@pytest.mark.parametrize("source", ["azure", "mooncake"])
def test_bundled_trace_through_a_block_manager(source):
    """A few hundred steps of the trace's busiest stretch (its first 1,500 requests, at four
    times the rate, on a small pool) through the CPU block manager: the lengths it reports
    are the model's, and its books are sound at the end."""
    requests = read_trace(bundled(source))[:1500]
    config = SchedulerConfig(token_budget=2048, max_running=16, num_blocks=4096, rate_scale=4.0)
    start = busiest_window(requests, config, 300)
    replay = TraceReplay(requests, config, start, 300, source=source)
    full = Scheduler(requests, config)
    full.skip_to(start)
    max_seq_len, max_running = replay.sizes(300)
    manager = CPUBlockManager(
        ModelConfig(layer_ids=replay.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_running),
        CacheConfig(block_size=16, num_gpu_blocks=config.num_blocks),
        max_running,
        device="cpu",
    )
    replay.start(manager)
    lengths = dict(replay.initial)
    for k in range(300):
        step = replay.step_at(k)
        step.run(manager)
        for rid in step.release:
            del lengths[rid]
        batch = step.layers[-1]
        for i, rid in enumerate(batch.req_ids):
            lengths[rid] = lengths.get(rid, 0) + (batch.init_prefill_lens[i] if i < batch.num_prefill_seqs else 1)
        assert batch.seq_lens == [lengths[rid] for rid in batch.req_ids]
    manager.check_integrity()
    stats = replay.describe()["steps"]
    assert stats["running_peak"] <= 16 and stats["pool_peak"] <= 1.0 and stats["finished"] > 0
    assert stats["prefill_tokens_mean"] > 0 and stats["decode_tokens_mean"] > 0


# -- the prefix cache ---------------------------------------------------------------------

SMALL_POOL = SchedulerConfig(token_budget=2048, max_running=16, num_blocks=4096, rate_scale=4.0)
TODAY = {  # the windows' steps before the prefix cache (`steps_digest`), computed at commit e9f9951
    ("azure", SchedulerConfig()): "4e8d87b89ff0d2629ac02269be1b44fdeed60014933467bcab8e4583caee5971",
    ("azure", SMALL_POOL): "367cecbac979d44ff215b63826bdb83b0d64d13f1867ada767de4645233a9529",
    ("mooncake", SchedulerConfig()): "c2942b1ea9c2e5bb80bda966145b86d166abc9935e910eae208dfa3d44fac7c0",
    ("mooncake", SMALL_POOL): "e5bcfb6448d6e1be49d23b73c36cb72cfb17d7ab1814ed0ceb27814209d1da83",
}


BEFORE_START = {("mooncake", SMALL_POOL): 37535}
"""Windows that moved since: the busiest window no longer counts the requests the pool never
holds (257 of mooncake's at SMALL_POOL), so the digest's window is given as it was."""


def steps_digest(replay: TraceReplay) -> str:
    digest = hashlib.sha256(repr(replay.initial).encode())
    for step in replay.steps:
        batch = step.layers[0]
        entry = (step.release, list(batch.req_ids), batch.num_prefill_seqs, list(batch.init_prefill_lens))
        digest.update(repr(entry).encode())
    stats = replay.stats()
    del stats["admitted"]  # (counted since: the digests are of the statistics of before)
    digest.update(repr(stats).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("source, config", list(TODAY))
def test_off_gives_the_steps_of_before(source, config):
    """prefix_cache="off": the busiest 304 steps of each bundled trace without hashes in
    use are the very steps (releases, batches, statistics) of the scheduler before it had a
    prefix cache; no step matches anything."""
    requests = read_trace(bundled(source))
    start = BEFORE_START.get((source, config), busiest_window(requests, config, 304))
    replay = TraceReplay(requests, config, start, 304, source)
    assert steps_digest(replay) == TODAY[(source, config)]
    assert not any(step.matches for step in replay.steps) and replay.pool_blocks is None


def hashed(prompts: list[tuple[int, tuple[int, ...]]], output: int = 4, gap: float = 0.0) -> list[TraceRequest]:
    """Requests of (prompt tokens, 16-token hash ids), arriving `gap` seconds apart."""
    return [TraceRequest(k * gap, p, output, ids, 16) for k, (p, ids) in enumerate(prompts)]


def test_matched_tokens_shorten_the_prefill_as_in_an_engine():
    config = SchedulerConfig(token_budget=64, max_running=4, num_blocks=64, step_seconds=0.01)
    requests = hashed([(100, (1, 2, 3, 4, 5, 6, 7)), (100, (1, 2, 3, 4, 8, 9, 10))], gap=0.1)
    replay = TraceReplay(requests, config, 0, 30, "t", "on")
    assert layer0(replay, 0) == ((), [0], [64]) and layer0(replay, 1) == ((), [0], [36])
    assert [m.req_id for m in replay.step_at(0).matches] == [0]  # every admission matches, this one nothing
    second = next(k for k in range(30) if any(m.req_id == 1 for m in replay.step_at(k).matches))
    (match,) = replay.step_at(second).matches
    assert (match.req_id, match.cached_tokens, match.block_hashes) == (1, 64, BlockHashes(requests, 16)(1))
    assert layer0(replay, second)[1:] == ([1], [36])  # registered at 64: 36 tokens left, one chunk
    assert replay.scheduler.admissions[1].cached_tokens == 64
    stats = replay.prefix_stats()
    assert stats["hit_rate"] == pytest.approx(64 / 200) and stats["bound"] == pytest.approx(64 / 200)
    assert stats["largest_match_blocks"] == 4 and stats["trace_bound"] == pytest.approx(64 / 200)


def test_miss_makes_every_hash_unique_and_keeps_their_number():
    config = SchedulerConfig(token_budget=64, max_running=2, num_blocks=14, block_size=16)
    requests = hashed([(100, (1, 2, 3, 4, 5, 6, 7))] * 6, output=30)
    hashes = BlockHashes(requests, 16)
    replay = TraceReplay(requests, config, 0, 400, "t", "miss")
    matches = [m for s in replay.scheduled for m in s.matches]
    assert len(matches) == len(replay.scheduler.admissions) > 6  # readmissions match again, and miss
    assert all(m.cached_tokens == 0 for m in matches)
    admissions = replay.scheduler.admissions
    assert all(len(m.block_hashes) == hashes.count(admissions[m.req_id].index) == 6 for m in matches)
    every = [h for m in matches for h in m.block_hashes]
    assert len(set(every)) == len(every)
    assert replay.prefix_stats()["hit_rate"] == 0 and replay.prefix_stats()["bound"] > 0.5


def test_a_preempted_request_matches_its_own_blocks_when_readmitted():
    config = SchedulerConfig(token_budget=64, max_running=2, num_blocks=16, block_size=16)
    requests = hashed([(40, (1, 2, 3)), (40, (4, 5, 6))], output=200)
    replay = TraceReplay(requests, config, 0, 300, "t", "on")
    assert replay.stats()["preemptions"] > 0
    readmitted = [a for i, a in replay.scheduler.admissions.items() if i >= 2]
    assert readmitted and all(a.cached_tokens > 0 for a in readmitted)
    assert readmitted[0].cached_tokens == 32  # its (40 - 1) // 16 blocks, still cached


def test_the_pool_counts_evictable_blocks_as_available():
    """Request 0's 6 hashed blocks are evictable after it finishes; request 1 needs 10 blocks
    of a 10-block pool: admitted in one chunk (4 free + 6 evictable), evicting all 6."""
    config = SchedulerConfig(token_budget=512, max_running=2, num_blocks=10, block_size=16)
    requests = hashed([(100, (1, 2, 3, 4, 5, 6, 7)), (160, tuple(range(10, 20)))], output=1, gap=0.1)
    replay = TraceReplay(requests, config, 0, 8, "t", "on")
    admitted = next(k for k in range(8) if 1 in layer0(replay, k)[1])
    assert layer0(replay, admitted)[2] == [160]
    assert replay.scheduled[admitted].evicted_blocks == 6 and replay.scheduled[admitted].used_blocks == 10
    assert replay.scheduled[admitted - 1].evictable_blocks == 6


@pytest.mark.parametrize("mode", ["miss", "on"])
def test_prefix_modes_keep_the_schedulers_other_promises(mode):
    """Budget, first come first served, valid batches: the lengths model above, run with the
    prefix cache's matches applied (a match registers a request at its cached length)."""
    requests = [
        TraceRequest(r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_blocks, r.prefix_block_tokens)
        for r in read_replay("servegen-offline-poisson")[:200]
    ]
    config = SchedulerConfig(token_budget=256, max_running=16, num_blocks=120, rate_scale=2.0)
    replay = TraceReplay(requests, config, 0, 1500, "t", mode)
    admissions = replay.scheduler.admissions
    held: dict[int, int] = {}
    for k, scheduled in enumerate(replay.scheduled):
        for rid in scheduled.release:
            del held[rid]
        for m in scheduled.matches:
            assert m.req_id not in held and admissions[m.req_id].step == k
            held[m.req_id] = m.cached_tokens
        prefill = sum(n for _, n in scheduled.prefills)
        assert prefill + len(scheduled.decodes) <= config.token_budget
        for rid, n in scheduled.prefills:
            held[rid] += n
            assert held[rid] <= admissions[rid].prefill_tokens
        for rid in scheduled.decodes:
            assert held[rid] >= admissions[rid].prefill_tokens
            held[rid] += 1
        assert scheduled.used_blocks <= config.num_blocks
    assert replay.stats()["finished"] > 0 and replay.stats()["preemptions"] > 0


@pytest.mark.parametrize("start", [0, 300])
def test_miss_schedules_the_batches_of_off(start):
    """A cache that never hits changes no decision (evictable blocks count as free): the
    same releases and batches; only the matches differ."""
    requests = read_replay("servegen-offline-poisson")[:600]
    config = SchedulerConfig(token_budget=512, max_running=32, num_blocks=150)
    off, miss = (TraceReplay(requests, config, start, 200, "t", mode) for mode in ("off", "miss"))
    assert [layer0(off, k) for k in range(200)] == [layer0(miss, k) for k in range(200)]
    assert off.stats() == miss.stats() and off.stats()["preemptions"] > 0
    assert miss.prefix_stats()["evicted_blocks"] > 0


def test_a_scheduler_refuses_prefix_modes_it_cannot_serve():
    with pytest.raises(ValueError, match="prefix_cache='all'"):
        Scheduler([], SchedulerConfig(), "all")
    with pytest.raises(ValueError, match="no prefix hashes"):
        Scheduler([TraceRequest(0.0, 10, 1)], SchedulerConfig(), "miss")
    with pytest.raises(ValueError, match="warm_start"):
        Scheduler([TraceRequest(0.0, 10, 1)], SchedulerConfig()).warm_start()

"""The lab's model of the prefix-caching contract (docs/prefix-caching.md): which hashes are
findable and when, the order of the LRU (release visits blocks last to first, eviction takes
the oldest first, allocation takes free blocks first), reference counts across sharing,
release and preemption, matches capped by the hashes given, and the pool's accounting."""

from __future__ import annotations

import random

import pytest

from disagmoe import KVCacheExhausted
from disagmoe_bench.prefix_model import CachedPrefix, PrefixCacheStats, PrefixModel

BS = 4


def filled(model: PrefixModel, req_id: int, hashes: tuple[int, ...], tokens: int) -> int:
    """Matches `req_id` and prefills it to `tokens`; returns the matched length."""
    cached = model.match_prefix(req_id, hashes)
    if tokens > cached:
        model.update([(req_id, tokens - cached)])
    model.check_integrity()
    return cached


def test_a_released_prompt_is_evictable_tail_first():
    model = PrefixModel(8, BS)
    assert filled(model, 0, (10, 11, 12, 13), 17) == 0  # 5 blocks, 4 of them full and hashed
    assert model.prefix_cache_stats() == PrefixCacheStats(4, 0, 4, 0, 0)
    assert model.release_seqs([0]) == 5  # the unhashed last block is free, the others evictable
    assert model.evictable_hashes() == [13, 12, 11, 10]  # visited last to first: the tail is oldest
    assert model.num_available == 8 and model.num_free_slots() == 32
    model.update([(1, 5 * BS)])  # 4 free, 5 needed: one eviction, the oldest
    assert model.evictable_hashes() == [12, 11, 10] and model.prefix_cache_stats().evicted_blocks == 1
    assert not model.is_cached(13)
    model.update([(2, 2 * BS)])
    assert model.evictable_hashes() == [10] and model.prefix_cache_stats().evicted_blocks == 3
    assert model.match_prefix(3, (10, 11, 12)) == BS  # the head survived its tail
    model.check_integrity()


def test_references_across_sharing_release_and_preemption():
    model = PrefixModel(16, BS)
    filled(model, 0, (1, 2, 3), 13)
    assert filled(model, 1, (1, 2, 9), 14) == 2 * BS  # shares two blocks, fills its own
    assert model.prefix_cache_stats() == PrefixCacheStats(4, 0, 6, 2, 0)
    assert model.num_available == 16 - 4 - 2
    model.release_seqs([0])  # blocks 1 and 2 still held by request 1; request 0's own go
    assert model.evictable_hashes() == [3] and model.num_available == 16 - 4
    model.release_seqs([1])  # a preemption is a release: its hashed blocks stay findable
    assert model.evictable_hashes() == [3, 9, 2, 1]
    assert model.match_prefix(2, (1, 2, 9)) == 3 * BS  # readmitted: matches again
    assert model.evictable_hashes() == [3] and model.num_available == 16 - 3
    model.check_integrity()


def test_a_request_matched_while_another_still_fills_the_prefix():
    """The block a step fills is findable from that step on; two requests filling the same
    hash in one step: the first in batch order is indexed, the second keeps its copy."""
    model = PrefixModel(16, BS)
    assert model.match_prefix(0, (1, 2, 3)) == 0
    model.update([(0, 6)])  # block 0 full (indexed), block 1 half filled
    assert model.cached_prefix((1, 2, 3)) == CachedPrefix(1, 0)
    assert model.match_prefix(1, (1, 2, 3)) == BS  # only the full block: block 1 is not findable yet
    model.update([(0, 4), (1, 4)])  # both fill hash 2 in one step: request 0's block is indexed
    assert model.prefix_cache_stats().cached_blocks == 2
    assert model.match_prefix(2, (1, 2, 3)) == 2 * BS
    model.check_integrity()
    before = model.num_available
    model.release_seqs([1])  # its copy of block 1 was never indexed: free, not evictable
    assert model.num_available == before + 1 and model.evictable_hashes() == []
    model.release_seqs([0, 2])
    assert model.evictable_hashes() == [2, 1]  # request 2 released last: its blocks are newest
    model.check_integrity()


def test_matches_are_capped_by_the_hashes_given_and_leading_only():
    model = PrefixModel(16, BS)
    filled(model, 0, (1, 2, 3, 4), 17)
    assert model.match_prefix(1, (1, 2)) == 2 * BS  # fewer hashes than are cached
    assert model.match_prefix(2, ()) == 0  # empty: registered, nothing matched
    assert model.seq_len(2) == 0 and model.block_hashes(1) == (1, 2)
    assert model.match_prefix(3, (7, 2, 3)) == 0  # the run must start at the first block
    assert model.match_prefix(4, (1, 2, 8, 4)) == 2 * BS  # and stops at the first miss
    stats = model.prefix_cache_stats()
    assert (stats.queried_blocks, stats.hit_blocks) == (4 + 2 + 0 + 3 + 4, 4)
    model.check_integrity()


@pytest.mark.parametrize("extra", [0, 1])
def test_exactly_full_and_one_past(extra):
    """A step that needs every free and evictable block fits (evicting them all); one
    block more is KVCacheExhausted and changes nothing, not even an eviction."""
    model = PrefixModel(6, BS)
    filled(model, 0, (1, 2, 3), 12)
    filled(model, 1, (), 8)
    model.release_seqs([0])
    assert model.num_available == 4
    stats, evictable = model.prefix_cache_stats(), model.evictable_hashes()
    if extra:
        with pytest.raises(KVCacheExhausted):
            model.update([(1, 1), (2, 4 * BS)])
        assert model.prefix_cache_stats() == stats and model.evictable_hashes() == evictable
        assert model.seq_len(1) == 8 and model.num_available == 4
    else:
        model.update([(1, 1), (2, 3 * BS)])  # 1 + 3 blocks: the free one, then 3 evictions
        assert model.num_available == 0 and model.prefix_cache_stats().evicted_blocks == 3
    model.check_integrity()


def test_errors_name_the_request_and_change_nothing():
    model = PrefixModel(4, BS)
    filled(model, 0, (1,), 5)
    with pytest.raises(ValueError, match="req_id=0 is already known"):
        model.match_prefix(0, (1,))
    with pytest.raises(KeyError, match="unknown request 9"):
        model.release_seqs([0, 9])
    with pytest.raises(ValueError, match="appears twice"):
        model.update([(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="request 0 adds 0 tokens"):
        model.update([(0, 0)])
    assert model.seq_len(0) == 5 and model.prefix_cache_stats() == PrefixCacheStats(1, 0, 1, 0, 0)
    model.check_integrity()
    with pytest.raises(ValueError, match="num_blocks=0"):
        PrefixModel(0, BS)


def test_reset_state_empties_everything():
    model = PrefixModel(8, BS)
    filled(model, 0, (1, 2), 9)
    model.release_seqs([0])
    model.reset_state()
    assert model.prefix_cache_stats() == PrefixCacheStats(0, 0, 0, 0, 0) and model.num_available == 8
    assert model.match_prefix(0, (1, 2)) == 0
    model.check_integrity()


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_keep_the_books(seed):
    """Random matches, chunks and releases over a small pool of few distinct prefixes: the
    books stay sound, and the lengths are what the calls say."""
    rng = random.Random(seed)
    model = PrefixModel(24, BS)
    prompts = [tuple(rng.choice((1, 2)) * 100 + k for k in range(rng.randint(0, 5))) for _ in range(6)]
    live: dict[int, int] = {}
    next_id = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.3 or not live:
            hashes = rng.choice(prompts)
            cached = model.match_prefix(next_id, hashes)
            assert cached == model.seq_len(next_id) and cached % BS == 0 and cached <= len(hashes) * BS
            live[next_id] = cached
            next_id += 1
        elif op < 0.8:
            entries = [(r, rng.randint(1, 6)) for r in rng.sample(sorted(live), min(len(live), 3))]
            try:
                lengths = model.update(entries)
            except KVCacheExhausted:
                continue
            for (r, n), length in zip(entries, lengths):
                live[r] += n
                assert length == live[r]
        else:
            victim = rng.choice(sorted(live))
            model.release_seqs([victim])
            del live[victim]
        model.check_integrity()  # every block free, evictable or held, and the counts agree
        stats = model.prefix_cache_stats()
        assert stats.evictable_blocks <= stats.cached_blocks and stats.hit_blocks <= stats.queried_blocks
        assert model.num_available >= 24 - sum(-(-n // BS) for n in live.values())  # sharing saves blocks

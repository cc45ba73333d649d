"""The prefix cache of docs/prefix-caching.md on every configuration whose design has it:
hits, registration at the matched length, shared blocks' slots, attention over shared
blocks, eviction order, references, inspection, hostile input, and every observable equal
to `disagmoe_bench.prefix_model.PrefixModel` over thousands of random steps."""

from __future__ import annotations

import random

import pytest
import torch
from test_attention import DIM, HEADS, paged_attention

from disagmoe import BatchMetadata, KVCacheExhausted, PrefixCacheStats
from disagmoe_bench.prefix_model import PrefixModel

from harness import to_host

BS = 4
FIRST = 3  # configs.LAYER_IDS[0]


@pytest.fixture
def make(make_manager, config):
    """make_manager (every design has the prefix cache)."""
    return make_manager


def step(m, entries: list[tuple[int, int]], layer: int = FIRST):
    """A first-layer step of prefill entries (req_id, tokens), packed; its host metadata."""
    batch = BatchMetadata(layer, [r for r, _ in entries], len(entries), [n for _, n in entries])
    m.update_block_table(batch)
    return to_host(m.pack_flash_attn_metadata(batch), m.device)


def snapshot(m, req_ids) -> tuple:
    return (
        m.num_free_slots(),
        m.num_running_reqs(),
        m.prefix_cache_stats(),
        {r: (m.seq_len(r), m.token_slots(r)) for r in req_ids},
    )


def test_a_match_registers_at_the_cached_length_and_shares_the_blocks(make):
    m = make(block_size=BS, num_blocks=16)
    assert m.match_prefix(1, [10, 11, 12]) == 0
    assert m.seq_len(1) == 0 and m.num_running_reqs() == 1
    step(m, [(1, 13)])  # fills blocks 0..2: findable
    assert m.prefix_cache_stats() == PrefixCacheStats(3, 0, 3, 0, 0)
    assert m.match_prefix(2, [10, 11, 12]) == 12
    assert m.seq_len(2) == 12 and m.token_slots(2) == m.token_slots(1)[:12]
    md = step(m, [(2, 1)])  # the first prefill continues at position 12
    assert md.context_lens_tensor == [12] and md.seq_lens == [13]
    assert md.block_tables[0][:3] == step(m, [(1, 1)]).block_tables[0][:3]
    assert md.slot_mapping[0] not in m.token_slots(1)
    assert m.num_free_slots() == (16 - 5) * BS
    assert m.prefix_cache_stats() == PrefixCacheStats(3, 0, 6, 3, 0)
    m.check_integrity()
    assert m.match_prefix(3, [10, 99, 12]) == BS  # the run stops at the first miss
    assert m.match_prefix(4, [99, 11]) == 0  # and starts at the first block
    m.check_integrity()


def test_attention_over_shared_blocks_equals_dense_attention(make):
    m = make(block_size=BS, num_blocks=16)
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(2, m.capacity, HEADS, DIM, dtype=torch.float64, generator=gen)

    class Cache:
        k, v = kv[0], kv[1]

    m.match_prefix(1, [5, 6])
    md1 = step(m, [(1, 9)])
    assert m.match_prefix(2, [5, 6]) == 8
    md2 = step(m, [(2, 3)])
    q = torch.randn(3, HEADS, DIM, dtype=torch.float64, generator=gen)
    got = paged_attention(q, Cache, md2)  # type: ignore[arg-type]
    slots = torch.tensor(md1.slot_mapping[:8] + md2.slot_mapping)
    k, v = kv[0][slots], kv[1][slots]
    scores = torch.einsum("qhd,khd->hqk", q, k) / DIM**0.5
    mask = torch.arange(11)[None, None, :] > (8 + torch.arange(3))[None, :, None]
    want = torch.einsum("hqk,khd->qhd", scores.masked_fill(mask, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(got, want)


def test_eviction_takes_the_tail_of_the_least_recently_released_first(make):
    m = make(block_size=BS, num_blocks=6)
    m.match_prefix(1, [1, 2, 3])
    step(m, [(1, 13)])  # 4 blocks, 3 indexed
    m.match_prefix(2, [7])
    step(m, [(2, 5)])  # 2 blocks, 1 indexed: the pool is full
    assert m.num_free_slots() == 0
    m.release_seqs([1])  # 3 evictable (tail first), 1 free
    m.release_seqs([2])  # 1 evictable, 1 free
    assert m.num_free_slots() == 6 * BS
    assert m.prefix_cache_stats() == PrefixCacheStats(4, 4, 4, 0, 0)
    step(m, [(3, 12)])  # 3 blocks: 2 free, then hash 3 evicted
    assert m.prefix_cache_stats().evicted_blocks == 1
    assert m.match_prefix(4, [1, 2, 3]) == 2 * BS  # the head survived its tail
    assert m.match_prefix(5, [7]) == BS
    with pytest.raises(KVCacheExhausted):  # 1 evictable block is left
        step(m, [(6, 9)])
    m.check_integrity()


def test_a_held_block_is_never_evicted_and_references_follow_the_holders(make):
    m = make(block_size=BS, num_blocks=8)
    m.match_prefix(1, [1, 2])
    step(m, [(1, 9)])
    assert m.match_prefix(2, [1, 2]) == 8
    m.release_seqs([1])  # preempted: its blocks stay held by request 2
    assert m.prefix_cache_stats() == PrefixCacheStats(2, 0, 4, 2, 0)
    assert m.num_free_slots() == 7 * BS - BS  # request 1's own block is free again
    with pytest.raises(KVCacheExhausted):
        step(m, [(3, 6 * BS + 1)])
    m.check_integrity()
    m.release_seqs([2])
    assert m.prefix_cache_stats().evictable_blocks == 2 and m.num_free_slots() == 8 * BS
    m.check_integrity()


def test_the_second_filler_of_a_prefix_keeps_its_block(make):
    m = make(block_size=BS, num_blocks=16)
    m.match_prefix(1, [1, 2])
    m.match_prefix(2, [1, 2])  # matched while request 1 still fills the prefix
    step(m, [(1, 5), (2, 5)])  # both fill hash 1: request 1's block is indexed
    assert m.prefix_cache_stats().cached_blocks == 1
    assert m.match_prefix(3, [1, 2]) == BS and m.token_slots(3) == m.token_slots(1)[:BS]
    step(m, [(2, 4)])
    assert m.prefix_cache_stats().cached_blocks == 2
    assert m.match_prefix(4, [1, 2]) == 2 * BS
    assert m.token_slots(4)[BS:] == m.token_slots(2)[BS : 2 * BS]
    m.release_seqs([2])  # its unindexed blocks 0 and 2 are free, block 1 held by request 4
    m.check_integrity()
    assert m.num_free_slots() == (16 - 3) * BS


def test_reset_empties_the_cache(make):
    m = make(block_size=BS, num_blocks=8)
    m.match_prefix(1, [1, 2])
    step(m, [(1, 9)])
    m.release_seqs([1])
    m.reset_state()
    assert m.prefix_cache_stats() == PrefixCacheStats(0, 0, 0, 0, 0)
    assert m.num_free_slots() == 8 * BS and m.match_prefix(1, [1, 2]) == 0
    m.check_integrity()


@pytest.mark.parametrize(
    ("req_id", "hashes", "error", "shown"),
    [
        (9, [1, True], TypeError, "True"),
        (9, [1, 2.0], TypeError, "2.0"),
        (9, {1, 2}, TypeError, "block_hashes"),
        (9, None, TypeError, "None"),
        (9, [2**63], ValueError, str(2**63)),
        (9, [-(2**63) - 1], ValueError, str(-(2**63) - 1)),
        (9, list(range(16)), ValueError, "16"),  # (max_seq_len - 1) // block_size = 15
        (True, [1], TypeError, "True"),
        (2**63, [1], ValueError, str(2**63)),
        (1, [1], ValueError, "req_id=1"),  # already matched
        (2, [1], ValueError, "req_id=2"),  # already updated
    ],
)
def test_hostile_input_is_named_and_changes_nothing(make, req_id, hashes, error, shown):
    m = make(block_size=BS, num_blocks=16, max_running_reqs=4, max_seq_len=64)
    m.match_prefix(1, [1, 2])
    step(m, [(1, 9), (2, 3)])
    before = snapshot(m, [1, 2])
    with pytest.raises(error, match="match_prefix") as info:
        m.match_prefix(req_id, hashes)
    assert shown in str(info.value)
    assert snapshot(m, [1, 2]) == before
    m.check_integrity()


def test_no_free_row_is_kv_cache_exhausted_and_negative_ids_are_ids(make):
    m = make(block_size=BS, num_blocks=16, max_running_reqs=2)
    assert m.match_prefix(-(2**63), []) == 0
    assert m.match_prefix(-1, ()) == 0
    before = snapshot(m, [-1])
    with pytest.raises(KVCacheExhausted, match="match_prefix"):
        m.match_prefix(5, [1])
    assert snapshot(m, [-1]) == before
    step(m, [(-1, 5), (-(2**63), 2)])
    m.check_integrity()


class OldStack:
    """The free blocks of a manager without a prefix cache: a stack handing out block 0
    first, a release pushing a request's blocks first to last."""

    def __init__(self, num_blocks: int) -> None:
        self.free = list(range(num_blocks - 1, -1, -1))
        self.blocks: dict[int, list[int]] = {}

    def update(self, req_id: int, old: int, new: int) -> None:
        table = self.blocks.setdefault(req_id, [])
        for _ in range(-(-new // BS) - len(table)):
            table.append(self.free.pop())

    def release(self, req_id: int) -> None:
        self.free.extend(self.blocks.pop(req_id))


def test_a_manager_never_given_hashes_hands_out_the_blocks_it_always_did(make_manager):
    m, old = make_manager(block_size=BS, num_blocks=24, max_running_reqs=6), OldStack(24)
    rng, lens, next_id = random.Random(1), {}, 0
    for _ in range(300):
        if lens and (len(lens) == 6 or rng.random() < 0.3):
            r = rng.choice(sorted(lens))
            m.release_seqs([r])
            old.release(r)
            del lens[r]
            continue
        r = next_id if not lens or rng.random() < 0.5 else rng.choice(sorted(lens))
        n = min(rng.randint(1, 9), 64 - lens.get(r, 0))
        if n < 1 or len(old.free) < -(-(lens.get(r, 0) + n) // BS) - len(old.blocks.get(r, [])):
            continue
        step(m, [(r, n)])
        old.update(r, lens.get(r, 0), lens.get(r, 0) + n)
        lens[r] = lens.get(r, 0) + n
        next_id += r == next_id
        assert [s // BS for s in m.token_slots(r)[::BS]] == old.blocks[r]
    assert m.prefix_cache_stats() == PrefixCacheStats(0, 0, 0, 0, 0)


def _chain(rng: random.Random, n: int) -> list[int]:
    """Chained hashes of a prompt of n full blocks: few families and branches, so that
    prompts share prefixes and part ways."""
    family, branch, split = rng.randrange(3), rng.randrange(3), rng.randrange(4)
    return [hash((family, branch if k >= split else -1, k)) for k in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_every_observable_equals_the_model(make, seed):
    num_blocks, max_reqs, max_seq_len = 20, 6, 48
    m = make(block_size=BS, num_blocks=num_blocks, max_running_reqs=max_reqs, max_seq_len=max_seq_len)
    model, rng = PrefixModel(num_blocks, BS), random.Random(seed)
    prompts: dict[int, int] = {}  # live request -> prompt length
    next_id = -50  # negative ids too, as the lab's ghosts
    for _ in range(1500):
        roll = rng.random()
        if roll < 0.01:
            m.reset_state()
            model.reset_state()
            prompts.clear()
        elif roll < 0.3 and len(prompts) < max_reqs:
            prompt = rng.randint(1, max_seq_len - 8)
            hashes = _chain(rng, (prompt - 1) // BS)
            assert m.match_prefix(next_id, hashes) == model.match_prefix(next_id, hashes)
            prompts[next_id] = prompt
            next_id += 1
        elif roll < 0.45 and prompts:
            gone = rng.sample(sorted(prompts), rng.randint(1, min(2, len(prompts))))
            m.release_seqs(gone)
            model.release_seqs(gone)
            for r in gone:
                del prompts[r]
        elif prompts:
            chosen = rng.sample(sorted(prompts), rng.randint(1, len(prompts)))
            entries = []
            for r in chosen:
                length = model.seq_len(r)
                left = prompts[r] - length
                n = rng.randint(1, left) if left > 0 else 1
                if length + n <= max_seq_len:
                    entries.append((r, n))
            if not entries:
                continue
            try:
                model.update(entries)
            except KVCacheExhausted:
                before = snapshot(m, sorted(prompts))
                with pytest.raises(KVCacheExhausted):
                    step(m, entries)
                assert snapshot(m, sorted(prompts)) == before
            else:
                md = step(m, entries)
                assert md.seq_lens == [model.seq_len(r) for r, _ in entries]
        assert m.num_free_slots() == model.num_free_slots()
        assert m.prefix_cache_stats() == model.prefix_cache_stats()
        assert m.num_running_reqs() == len(prompts)
        m.check_integrity()
    model.check_integrity()


def test_hashes_that_change_the_list_or_call_back_are_read_once(make):
    """A hash's `__index__` that grows the list being read, or calls the manager again:
    the hashes are read once into owned memory (the grown tail is not read), and a call
    back into the manager is refused without changing anything."""
    m = make(block_size=BS, num_blocks=16, max_running_reqs=4, max_seq_len=64)
    m.match_prefix(1, [1, 2])
    step(m, [(1, 9)])
    hashes: list = []

    class Grows:
        def __index__(self) -> int:
            hashes.extend([99] * 1000)  # past what may be passed, were it read
            return 1

    hashes += [Grows(), 2]
    assert m.match_prefix(2, hashes) == 2 * BS
    m.check_integrity()

    class CallsBack:
        def __index__(self) -> int:
            m.match_prefix(7, [1])
            return 1

    before = snapshot(m, [1, 2])
    with pytest.raises(TypeError, match=r"match_prefix: block_hashes\[0\]="):  # its call back was refused
        m.match_prefix(3, [CallsBack(), 2])
    assert snapshot(m, [1, 2]) == before
    assert m.match_prefix(7, [1]) == BS  # the refused call back registered nothing
    m.check_integrity()

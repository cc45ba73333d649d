"""pack_flash_attn_metadata: every field against the reference model, the block-table /
slot-mapping invariant, dtypes and devices, and the cpu design against the other two."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import config_pairs
from harness import Harness, to_host
from strategies import BLOCK_SIZES, pool_size, run_random_steps

PAIRS = config_pairs()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@settings(max_examples=50)
@given(data=st.data())
def test_random_steps(make_manager, block_size, data):
    manager = make_manager(block_size=block_size, num_blocks=pool_size(block_size), max_running_reqs=5, max_seq_len=40)
    run_random_steps(data, [Harness(manager)], pack=True)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a.id}-vs-{b.id}" for a, b in PAIRS])
@settings(max_examples=40)
@given(data=st.data())
def test_backends_agree(pair, block_size, data):
    """The cpu design and each other design hand out blocks in the same order, so the
    same steps give the same metadata, block ids included."""
    harnesses = [
        b.make(block_size=block_size, num_blocks=pool_size(block_size), max_running_reqs=5, max_seq_len=40)
        for b in pair
    ]
    harnesses = [Harness(m) for m in harnesses]
    for cpu_step, gpu_step in run_random_steps(data, harnesses, pack=True):
        assert cpu_step == gpu_step
    cpu, gpu = (h.manager for h in harnesses)
    for req_id in harnesses[0].ref.seq_lens:
        assert cpu.token_slots(req_id) == gpu.token_slots(req_id)


def test_worked_example(make_manager):
    """Values written out by hand: block_size 4, a chunk, a new prefill and a decode."""
    h = Harness(make_manager(block_size=4, num_blocks=16))
    h.step(h.batch([10, 11], [6, 3]))
    md = h.step(h.batch([11, 12, 10], [2, 5]))
    assert md.ints == dict(
        num_prefills=2,
        num_prefill_tokens=7,
        num_decode_tokens=1,
        max_query_len=5,
        max_prefill_seq_len=5,
        max_decode_seq_len=7,
        max_decode_query_len=1,
    )
    assert md.seq_lens == md.seq_lens_tensor == [5, 5, 7]
    assert md.context_lens_tensor == [3, 0, 6]
    assert md.query_start_loc == [0, 2, 7, 8]
    assert md.seq_start_loc == [0, 5, 10, 17]
    assert md.width == 2
    assert [row.count(-1) for row in md.block_tables] == [0, 0, 0]
    slots = h.manager.token_slots
    assert md.slot_mapping == slots(11)[3:5] + slots(12) + slots(10)[6:]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_pack_repeats_and_later_layers_agree(make_manager, block_size):
    h = Harness(make_manager(block_size=block_size, num_blocks=pool_size(block_size)))
    h.step(h.batch([1, 2], [9, 2]))
    batch = h.batch([2, 3, 1], [4, 1])
    first = h.step(batch)
    assert h.pack(batch) == first
    for layer in h.ref.layer_ids[1:]:
        assert h.step(h.batch([2, 3, 1], [4, 1], layer=layer)) == first


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_pack_reads_lengths_without_an_update(make_manager, block_size):
    """pack describes the current lengths: a decode entry queries the last token."""
    h = Harness(make_manager(block_size=block_size, num_blocks=pool_size(block_size)))
    h.step(h.batch([1, 2], [5, 8]))
    md = h.pack(h.batch([2, 1], [3]))
    assert md.context_lens_tensor == [5, 4]
    assert md.slot_mapping == h.manager.token_slots(2)[5:] + h.manager.token_slots(1)[4:]


@pytest.mark.parametrize("block_size", [1, 5])
def test_large_then_small_then_large(make_manager, block_size):
    """Prefills far above the decode-sized metadata buffer, between small steps."""
    h = Harness(make_manager(block_size=block_size, num_blocks=1024 // block_size, max_running_reqs=4, max_seq_len=256))
    big = h.step(h.batch([1, 2, 3], [200, 150, 100]))
    assert len(big.slot_mapping) == 450
    h.step(h.batch([1, 2, 3]))
    h.step(h.batch([4], [1]))
    h.step(h.batch([4, 1, 2], [50]))
    h.release([1, 2])
    h.step(h.batch([5, 6, 3, 4], [255, 3]))


def test_packs_of_one_shape_each_read_right(make_manager):
    """Two packs of the same shape may share views: each is right until the next pack."""
    h = Harness(make_manager(block_size=4))
    h.step(h.batch([1, 2], [3, 3]))
    m = h.manager
    first = m.pack_flash_attn_metadata(h.batch([1, 2], [3, 3]))
    kept = first.slot_mapping.clone()
    second = to_host(m.pack_flash_attn_metadata(h.batch([2, 1], [3, 3])), m.device)
    assert second.slot_mapping == m.token_slots(2) + m.token_slots(1)
    assert kept.tolist() == m.token_slots(1) + m.token_slots(2)

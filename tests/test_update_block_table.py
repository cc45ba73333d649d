"""update_block_table: lengths, slot reservation and the lifecycle around it, against the
reference model (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disagmoe import CPUBlockManager, GPUBlockManager, HybridBlockManager, MemoryFootprint

from harness import Harness
from strategies import BLOCK_SIZES, pool_size, run_random_steps


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@settings(max_examples=50)
@given(data=st.data())
def test_random_steps(make_manager, block_size, data):
    manager = make_manager(block_size=block_size, num_blocks=pool_size(block_size), max_running_reqs=5, max_seq_len=40)
    run_random_steps(data, [Harness(manager)], pack=False)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_chunked_prefill_extends_positions(make_manager, block_size):
    h = Harness(make_manager(block_size=block_size, num_blocks=pool_size(block_size)))
    assert h.update(h.batch([7], [5])) == [5]
    assert h.update(h.batch([7, 8], [6, 2])) == [11, 2]
    assert h.update(h.batch([8, 7], [1])) == [3, 12]  # 8 chunks one token, 7 decodes
    assert [len(h.manager.token_slots(r)) for r in (7, 8)] == [12, 3]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_later_layer_reserves_nothing(make_manager, block_size):
    h = Harness(make_manager(block_size=block_size, num_blocks=pool_size(block_size)))
    h.update(h.batch([1, 2], [4, 9]))
    free = h.manager.num_free_slots()
    for layer in h.ref.layer_ids[1:]:
        # The lengths are the ones the first layer set, even for a batch that the first
        # layer could not hold (9 more tokens than the pool has).
        assert h.update(h.batch([2, 1], [4], layer=layer)) == [9, 4]
        assert h.update(h.batch([1], layer=layer)) == [4]
    assert h.manager.num_free_slots() == free


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_release_returns_every_slot_and_row(make_manager, block_size):
    h = Harness(make_manager(block_size=block_size, num_blocks=pool_size(block_size), max_running_reqs=3))
    h.update(h.batch([1, 2, 3], [5, 17, 1]))
    h.release([2, 1])
    assert h.manager.num_free_slots() == h.manager.capacity - block_size
    assert h.update(h.batch([2, 4], [3, 2])) == [3, 2]  # a released id starts again at 0
    h.release([3, 4, 2])
    assert h.manager.num_free_slots() == h.manager.capacity
    h.release([])
    assert h.manager.num_running_reqs() == 0


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_freed_blocks_are_reused(make_manager, block_size):
    """Cycling requests through a pool that holds two at a time never double-books a slot."""
    h = Harness(make_manager(block_size=block_size, num_blocks=4, max_running_reqs=2, max_seq_len=4 * block_size))
    for req_id in range(10):
        assert h.update(h.batch([req_id], [2 * block_size])) == [2 * block_size]
        if req_id:
            h.release([req_id - 1])


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_reset_state_is_like_new(make_manager, block_size):
    fresh = make_manager(block_size=block_size, num_blocks=pool_size(block_size))
    h = Harness(make_manager(block_size=block_size, num_blocks=pool_size(block_size)))
    h.update(h.batch([1, 2], [7, 3]))
    h.update(h.batch([2, 1]))
    h.reset()
    assert h.manager.num_free_slots() == h.manager.capacity
    batch = h.batch([1, 5], [4, 20])
    h.update(batch)
    fresh.update_block_table(h.batch([1, 5], [4, 20]))
    assert [h.manager.token_slots(r) for r in (1, 5)] == [fresh.token_slots(r) for r in (1, 5)]


def test_default_block_size(config):
    manager = config.make(block_size=None, num_blocks=8)
    expected = config.cls.default_block_size  # a registered design's own (test_registry.py)
    if config.cls in (CPUBlockManager, GPUBlockManager, HybridBlockManager):
        assert expected == 16  # the contract: every design of the package defaults to 16
    assert manager.block_size == expected
    assert manager.capacity == manager.num_free_slots() == 8 * expected
    h = Harness(manager)
    assert h.update(h.batch([1], [expected + 1])) == [expected + 1]


@pytest.mark.parametrize(
    "as_array",
    [tuple, lambda v: np.asarray(v, dtype=np.int64), lambda v: np.asarray(v, dtype=np.int32)],
    ids=["tuple", "int64-array", "int32-array"],
)
def test_integer_sequences_are_accepted(make_manager, as_array):
    h = Harness(make_manager())
    h.update(h.batch([1], [3]))
    manager = h.manager
    batch = h.batch([2, 1], [2])
    expected = h.ref.update(batch)
    batch.req_ids, batch.init_prefill_lens = as_array(batch.req_ids), as_array(batch.init_prefill_lens)
    manager.update_block_table(batch)
    assert batch.seq_lens == expected
    h.check_state()


def test_memory_footprint(make_manager):
    small, large = make_manager(num_blocks=8), make_manager(num_blocks=8, max_running_reqs=64)
    for manager in (small, large):
        footprint = manager.memory_footprint()
        assert isinstance(footprint, MemoryFootprint)
        assert footprint.device_bytes >= 0 and footprint.host_bytes >= 0
    total = [m.memory_footprint().device_bytes + m.memory_footprint().host_bytes for m in (small, large)]
    assert total[1] > total[0]  # more request rows take more memory

"""The edges of a step, on every design and block size: empty batch, one entry, a pool
exactly full, a block boundary crossed by one token, prefill-only and decode-only
batches, max_seq_len reached exactly, every request row in use."""

from __future__ import annotations

import pytest

from disagmoe import KVCacheExhausted

from harness import Harness
from strategies import BLOCK_SIZES

pytestmark = pytest.mark.parametrize("block_size", BLOCK_SIZES)


def harness(
    make_manager, block_size: int, num_blocks: int = 16, max_running_reqs: int = 4, max_seq_len: int | None = None
) -> Harness:
    max_seq_len = max_seq_len or num_blocks * block_size
    return Harness(
        make_manager(
            block_size=block_size, num_blocks=num_blocks, max_running_reqs=max_running_reqs, max_seq_len=max_seq_len
        )
    )


@pytest.mark.parametrize("running", [False, True], ids=["idle", "running"])
def test_empty_batch(make_manager, block_size, running):
    h = harness(make_manager, block_size)
    if running:
        h.step(h.batch([1], [5]))
    free = h.manager.num_free_slots()
    for layer in h.ref.layer_ids:
        md = h.step(h.batch([], layer=layer))
        assert md.seq_lens == md.context_lens_tensor == md.slot_mapping == []
        assert md.query_start_loc == md.seq_start_loc == [0]
        assert md.block_tables == [] and md.width == 0
        assert set(md.ints.values()) == {0}
    assert h.manager.num_free_slots() == free


@pytest.mark.parametrize("kind", ["new", "chunk", "decode"])
def test_batch_of_one(make_manager, block_size, kind):
    h = harness(make_manager, block_size)
    h.step(h.batch([1], [1]))
    batch = {"new": h.batch([2], [1]), "chunk": h.batch([1], [2]), "decode": h.batch([1])}[kind]
    md = h.step(batch)
    assert len(md.block_tables) == 1
    assert len(md.slot_mapping) == md.ints["max_query_len"]


@pytest.mark.parametrize("num_reqs", [1, 3])
@pytest.mark.parametrize("extra", ["decode", "new", "chunk"])
def test_pool_exactly_full(make_manager, block_size, num_reqs, extra):
    h = harness(make_manager, block_size, num_blocks=6, max_seq_len=6 * block_size)
    blocks = [6 - 2 * (num_reqs - 1)] + [2] * (num_reqs - 1)
    h.step(h.batch(list(range(num_reqs)), [b * block_size for b in blocks]))
    assert h.manager.num_free_slots() == 0
    one_more = {"decode": h.batch([0]), "new": h.batch([9], [1]), "chunk": h.batch([0], [1])}[extra]
    assert h.try_update(one_more) is None
    assert isinstance(h.last_error, KVCacheExhausted)
    h.release([0])
    h.step(one_more if extra == "new" else h.batch([9], [1]))


def test_block_boundary_crossed_by_one_token(make_manager, block_size):
    h = harness(make_manager, block_size)
    h.step(h.batch([1, 2], [block_size, max(1, block_size - 1)]))
    free = h.manager.num_free_slots()
    md = h.step(h.batch([1, 2]))
    assert md.width == 2
    assert md.block_tables[0][1] != md.block_tables[0][0]
    # Request 1 takes a new block; request 2 stays in its block unless it was full.
    new_blocks = 1 + (block_size == 1)
    assert h.manager.num_free_slots() == free - new_blocks * block_size


def test_prefill_only_batch(make_manager, block_size):
    h = harness(make_manager, block_size)
    h.step(h.batch([1], [3]))
    md = h.step(h.batch([2, 1], [4, 2]))
    assert md.ints["num_decode_tokens"] == 0
    assert md.ints["max_decode_seq_len"] == md.ints["max_decode_query_len"] == 0
    assert md.ints["max_prefill_seq_len"] == 5 and md.ints["num_prefill_tokens"] == 6


def test_decode_only_batch(make_manager, block_size):
    h = harness(make_manager, block_size)
    h.step(h.batch([1, 2, 3], [3, 1, 7]))
    md = h.step(h.batch([3, 1, 2]))
    assert md.ints["num_prefills"] == md.ints["num_prefill_tokens"] == 0
    assert md.ints["max_prefill_seq_len"] == 0
    assert md.ints["max_query_len"] == md.ints["max_decode_query_len"] == 1
    assert md.ints["max_decode_seq_len"] == 8
    assert md.context_lens_tensor == [7, 3, 1]


@pytest.mark.parametrize("last_step", ["prefill", "chunk", "decode"])
def test_max_seq_len_reached_exactly(make_manager, block_size, last_step):
    max_seq_len = 2 * block_size + 1
    h = harness(make_manager, block_size, num_blocks=16, max_seq_len=max_seq_len)
    if last_step == "prefill":
        h.step(h.batch([1], [max_seq_len]))
    elif last_step == "chunk":
        h.step(h.batch([1], [1]))
        h.step(h.batch([1], [max_seq_len - 1]))
    else:
        h.step(h.batch([1], [max_seq_len - 1]))
        h.step(h.batch([1]))
    assert h.manager.seq_len(1) == max_seq_len
    for over in (h.batch([1]), h.batch([1], [1]), h.batch([2], [max_seq_len + 1])):
        assert h.try_update(over) is None
        assert isinstance(h.last_error, KVCacheExhausted)
    h.step(h.batch([2], [max_seq_len]))


def test_every_request_row_used(make_manager, block_size):
    h = harness(make_manager, block_size, num_blocks=16, max_running_reqs=3)
    h.step(h.batch([1, 2], [1, 2]))
    h.step(h.batch([3, 1, 2], [1]))
    assert h.manager.num_running_reqs() == 3
    h.step(h.batch([1, 2, 3]))
    assert h.try_update(h.batch([4, 1], [1])) is None
    assert isinstance(h.last_error, KVCacheExhausted)
    h.release([2])
    h.step(h.batch([4, 1, 3], [1]))

"""The C++ core's bindings (disagmoe._C): BlockManager and RequestTable called directly,
with numpy output buffers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disagmoe import KVCacheExhausted, _C

PAD = _C.PAD_BLOCK_ID


def core(block_size: int = 4, num_blocks: int = 8, max_seq_len: int = 32, max_reqs: int = 3):
    return _C.BlockManager(block_size, num_blocks, max_seq_len, max_reqs)


def slots_of(bm, req_id: int) -> list[int]:
    blocks, bs = bm.block_ids(req_id), bm.block_size
    return [blocks[p // bs] * bs + p % bs for p in range(bm.seq_len(req_id))]


def test_metadata_layout():
    for batch_size, width, num_tokens in [(0, 0, 0), (1, 1, 1), (3, 5, 7), (4, 2, 130)]:
        b, w, t, slots, seq, ctx, qsl, ssl, tables, nbytes = _C.metadata_layout(
            batch_size, width, num_tokens)
        assert (b, w, t, slots) == (batch_size, width, num_tokens, 0)
        ends = [seq, ctx, qsl, ssl, tables]
        sizes = [8 * t, 4 * b, 4 * b, 4 * (b + 1), 4 * (b + 1)]
        assert ends == list(np.cumsum(sizes))  # packed back to back, in this order
        assert nbytes % 8 == 0 and tables + 4 * b * w <= nbytes < tables + 4 * b * w + 8


def test_construction():
    bm = core(block_size=4, num_blocks=8, max_seq_len=30, max_reqs=3)
    assert (bm.block_size, bm.num_blocks, bm.max_blocks_per_seq) == (4, 8, 8)
    assert (bm.num_free_blocks(), bm.num_reqs, bm.req_ids(), bm.check_integrity()) == (8, 0, [], "")
    for args, named in [((0, 8, 30, 3), "page_size=0"), ((4, 0, 30, 3), "num_blocks=0"),
                        ((4, 8, 0, 3), "max_seq_len=0"), ((4, 8, 30, 0), "max_reqs=0"),
                        ((4, 2**30, 30, 3), f"num_blocks={2**30}")]:
        with pytest.raises(ValueError, match=named):
            _C.BlockManager(*args)


def test_allocate_append_release():
    bm = core()
    assert bm.can_allocate(5)
    bm.allocate(1, 5)
    assert (bm.seq_len(1), len(bm.block_ids(1)), bm.num_free_blocks()) == (5, 2, 6)
    bm.append_tokens(1, 3)  # fills block 2 exactly
    assert (bm.seq_len(1), bm.num_free_blocks()) == (8, 6)
    bm.append_tokens(1, 1)
    assert (bm.seq_len(1), bm.num_free_blocks()) == (9, 5)
    bm.allocate(2, 1)
    assert set(bm.block_ids(1)).isdisjoint(bm.block_ids(2))
    bm.release(1)
    assert (bm.num_free_blocks(), bm.req_ids()) == (7, [2])
    bm.batch_release(np.array([2], dtype=np.int32))
    assert (bm.num_free_blocks(), bm.num_reqs, bm.check_integrity()) == (8, 0, "")


def test_can_allocate():
    bm = core(block_size=4, num_blocks=4, max_seq_len=12, max_reqs=2)
    assert [bm.can_allocate(n) for n in (0, 1, 12, 13)] == [False, True, True, False]
    bm.allocate(1, 12)
    assert bm.can_allocate(4) and not bm.can_allocate(5)  # one block left
    bm.allocate(2, 1)
    assert not bm.can_allocate(1)  # no request row left


def test_allocate_and_append_errors_change_nothing():
    bm = core(block_size=4, num_blocks=4, max_seq_len=12, max_reqs=2)
    bm.allocate(1, 6)
    before = (bm.num_free_blocks(), bm.req_ids(), slots_of(bm, 1))
    for call, error, named in [
        (lambda: bm.allocate(1, 2), ValueError, "1 is already running"),
        (lambda: bm.allocate(2, 0), ValueError, "=0"),
        (lambda: bm.allocate(2, 13), KVCacheExhausted, "13"),
        (lambda: bm.allocate(2, 9), KVCacheExhausted, "free"),
        (lambda: bm.append_tokens(9, 1), KeyError, "9"),
        (lambda: bm.append_tokens(1, 7), KVCacheExhausted, "13"),
        (lambda: bm.release(9), KeyError, "9"),
        (lambda: bm.block_ids(9), KeyError, "9"),
        (lambda: bm.seq_len(9), KeyError, "9"),
    ]:
        with pytest.raises(error, match=named):
            call()
        assert (bm.num_free_blocks(), bm.req_ids(), slots_of(bm, 1)) == before
        assert bm.check_integrity() == ""


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.int64, np.uint32])
def test_numpy_req_ids_accepted(dtype):
    bm = core()
    ids, lens = np.array([3, 1], dtype=dtype), np.array([2, 5], dtype=dtype)
    assert bm.update_block_table(ids, 2, lens, True) == [2, 5]
    assert bm.update_block_table(ids[::-1], 0, lens[:0], True) == [6, 3]  # a strided view
    assert bm.update_block_table(ids, 0, [], False) == [3, 6]
    bm.batch_release(ids)
    assert bm.num_reqs == 0


@pytest.mark.parametrize("ids, named", [
    (np.array([1.0]), "1-D integer array"), (np.array([[1]]), "1-D integer array"),
    (np.array([True]), "1-D integer array"), ("12", "list of ints"), ([1, "x"], "'x'"),
])
def test_bad_req_ids(ids, named):
    with pytest.raises(TypeError, match=named):
        core().update_block_table(ids, 0, [], True)


@pytest.mark.parametrize("ids", [np.array([1, 2], dtype=">i8"), np.array([2**64 - 1], dtype=np.uint64)],
                         ids=["big-endian", "uint64-over-int64"])
def test_numpy_values_read_exactly(ids):
    """An array's values are its ids (as for a list), or the call raises: never other ids."""
    bm = core()
    try:
        bm.update_block_table(ids, len(ids), [1] * len(ids), True)
    except (ValueError, TypeError):
        return
    assert sorted(bm.req_ids()) == sorted(int(v) for v in ids)


def prepared(bm, req_ids, num_prefill, lens, width, num_tokens):
    tables = np.full((len(req_ids), width), 77, dtype=np.int32)
    slots = np.zeros(num_tokens, dtype=np.int64)
    stats = bm.prepare_block_table(req_ids, num_prefill, lens, width, tables, slots)
    return stats, tables, slots


def test_prepare_block_table():
    bm = core()
    bm.update_block_table([1, 2], 2, [6, 1], True)
    bm.update_block_table([2, 1], 1, [4], True)  # 2 -> 5 tokens, 1 -> 7
    stats, tables, slots = prepared(bm, [2, 1], 1, [4], 3, 5)
    assert stats == (5, 4, 7, 5, 7, 1)
    for row, req_id in zip(tables.tolist(), [2, 1]):
        assert row == bm.block_ids(req_id) + [PAD] * (3 - len(bm.block_ids(req_id)))
    assert slots.tolist() == slots_of(bm, 2)[1:] + slots_of(bm, 1)[6:]


def test_prepare_block_table_errors():
    bm = core()
    bm.update_block_table([1], 1, [9], True)
    for width, tables, slots, named in [
        (2, np.zeros((1, 2), np.int32), np.zeros(9, np.int64), "width=2"),
        (3, np.zeros((1, 2), np.int32), np.zeros(9, np.int64), "block_tables of 3"),
        (3, np.zeros((1, 3), np.int32), np.zeros(8, np.int64), "slot_mapping of 9"),
        (3, np.zeros((1, 3), np.int64), np.zeros(9, np.int64), "4-byte items"),
        (3, np.zeros((1, 3), np.int32), np.zeros(9, np.int32), "8-byte items"),
        (3, np.zeros((1, 6), np.int32)[:, ::2], np.zeros(9, np.int64), "C-contiguous"),
    ]:
        with pytest.raises(ValueError, match=named):
            bm.prepare_block_table([1], 1, [9], width, tables, slots)
    read_only = np.zeros((1, 3), np.int32)
    read_only.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        bm.prepare_block_table([1], 1, [9], 3, read_only, np.zeros(9, np.int64))


def test_prepare_batch_infos():
    bm = core()
    bm.update_block_table([1, 2, 3], 3, [6, 1, 3], True)
    bm.update_block_table([2, 3, 1], 1, [2], True)
    out = [np.zeros(n, np.int32) for n in (3, 3, 4, 4)]
    stats = bm.prepare_batch_infos([2, 3, 1], 1, [2], *out)
    assert stats == (4, 2, 7, 3, 7, 1)
    assert [a.tolist() for a in out] == [[3, 4, 7], [1, 3, 6], [0, 2, 3, 4], [0, 3, 7, 14]]
    short = [np.zeros(n, np.int32) for n in (3, 3, 3, 4)]
    with pytest.raises(ValueError, match="hold 3 entries, the batch needs 4"):
        bm.prepare_batch_infos([2, 3, 1], 1, [2], *short)


def test_pack_flash_attn_metadata_into_a_buffer():
    bm = core()
    bm.update_block_table([1, 2], 2, [5, 2], True)
    layout = _C.metadata_layout(2, 2, 7)
    small = np.full(layout[-1] - 8, 9, dtype=np.uint8)
    written, got_layout, stats, seq_lens = bm.pack_flash_attn_metadata([1, 2], 2, [5, 2], small)
    assert (written, got_layout, seq_lens) == (False, layout, None)
    assert (small == 9).all()
    out = np.zeros(layout[-1], dtype=np.uint8)
    written, _, stats, seq_lens = bm.pack_flash_attn_metadata([1, 2], 2, [5, 2], out)
    assert written and seq_lens == [5, 2] and stats == (7, 5, 5, 5, 0, 0)
    assert out[:56].view(np.int64).tolist() == slots_of(bm, 1) + slots_of(bm, 2)
    tables = out[layout[8]:layout[8] + 16].view(np.int32).tolist()
    assert tables == bm.block_ids(1) + bm.block_ids(2) + [PAD]


def test_request_table():
    table, stride = _C.RequestTable(3, 10, 4), 4
    plan = np.zeros(4 * stride, np.int32)
    pages, lens = table.update_block_table([5, 6], 2, [3, 5], 8, plan, stride)
    assert (pages, lens) == (3, [3, 5])
    assert plan.reshape(4, stride)[:, :3].tolist() == [[0, 1, 0], [0, 0, 0], [3, 5, 0], [0, 1, 3]]
    pages, lens = table.update_block_table([6, 5], 1, [4], 8, plan, stride)
    assert (pages, lens) == (1, [9, 4])  # 6 grows to 3 pages; 5 stays in its page
    out = np.zeros(5 * stride, np.int32)  # rows, lengths, query lengths, and their starts
    stats, lens = table.lookup([5, 6], 0, [], out, stride)
    assert stats == (2, 1, 9, 0, 9, 1) and lens == [4, 9]
    assert out.reshape(5, stride)[:, :2].tolist() == [[0, 1], [4, 9], [1, 1], [0, 1], [0, 4]]
    stats, lens = table.lookup([6, 5], 1, [3], out, stride)
    assert stats == (4, 3, 9, 9, 4, 1) and lens == [9, 4]
    assert out.reshape(5, stride)[:, :2].tolist() == [[1, 0], [9, 4], [3, 1], [0, 3], [0, 9]]
    with pytest.raises(KVCacheExhausted, match="needs 2 free blocks"):
        table.update_block_table([7], 1, [5], 1, plan, stride)
    with pytest.raises(ValueError, match="stride 2 cannot hold a batch of 2"):
        table.lookup([5, 6], 0, [], out, 2)
    with pytest.raises(ValueError, match="cannot hold a batch of 2"):
        table.update_block_table([7, 8], 2, [1, 1], 8, np.zeros(8, np.int32), stride)
    assert table.release([6]) == ([1], [9])
    assert (table.num_reqs, table.num_free_rows, table.req_ids()) == (1, 2, [5])
    table.reset()
    assert (table.num_reqs, table.row_of(5)) == (0, -1)
    with pytest.raises(KeyError, match="5"):
        table.seq_len(5)


IDS = st.one_of(st.integers(0, 20), st.integers(-2**63, 2**63 - 1),
                st.sampled_from([-1, 0, 2**63 - 1, -2**63]))


@settings(max_examples=60)
@given(ops=st.lists(st.tuples(st.booleans(), IDS), max_size=60))
def test_request_table_ids_against_a_dict(ops):
    """Admits and releases ids (colliding ones included) against a dict of rows."""
    table, model, stride = _C.RequestTable(8, 100, 1), {}, 9
    plan = np.zeros(4 * stride, np.int32)
    for admit, req_id in ops:
        if admit and req_id not in model and len(model) < 8:
            table.update_block_table([req_id], 1, [1], 100, plan, stride)
            model[req_id] = int(plan[0])
        elif not admit and req_id in model:
            assert table.release([req_id]) == ([model.pop(req_id)], [1])
        for known, row in model.items():
            assert table.row_of(known) == row
        assert table.row_of(req_id) == model.get(req_id, -1)
        assert sorted(table.req_ids()) == sorted(model) and table.num_reqs == len(model)
        assert sorted(model.values()) == sorted(set(model.values()))

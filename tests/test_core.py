"""The C++ core's bindings (disagmoe._C): BlockBooks and RequestTable called directly,
with numpy output buffers, and the named results they return."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disagmoe import _C, KVCacheExhausted

PAD = _C.PAD_BLOCK_ID
INT32_MAX = 2**31 - 1
LAYOUT_FIELDS = (
    "batch_size",
    "width",
    "num_tokens",
    "slot_mapping",
    "seq_lens",
    "context_lens",
    "query_start_loc",
    "seq_start_loc",
    "block_tables",
    "nbytes",
)


def core(block_size: int = 4, num_blocks: int = 8, max_seq_len: int = 32, max_reqs: int = 3):
    return _C.BlockBooks(block_size, num_blocks, max_seq_len, max_reqs)


def slots_of(bm, req_id: int) -> list[int]:
    blocks, bs = bm.block_ids(req_id), bm.block_size
    return [blocks[p // bs] * bs + p % bs for p in range(bm.seq_len(req_id))]


def stats_dict(stats: _C.BatchStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in _C.BatchStats.__match_args__}


def test_metadata_layout():
    for batch_size, width, num_tokens in [(0, 0, 0), (1, 1, 1), (3, 5, 7), (4, 2, 130)]:
        layout = _C.metadata_layout(batch_size, width, num_tokens)
        assert (layout.batch_size, layout.width, layout.num_tokens) == (batch_size, width, num_tokens)
        b, t = batch_size, num_tokens
        # The lengths first, back to back, at places the batch size alone decides; then
        # slot_mapping (8-byte aligned); then the table (16-byte aligned).
        offsets = [
            layout.seq_lens,
            layout.context_lens,
            layout.query_start_loc,
            layout.seq_start_loc,
            layout.slot_mapping,
        ]
        sizes = [4 * b, 4 * b, 4 * (b + 1), 4 * (b + 1)]
        assert offsets == list(np.cumsum([0, *sizes]))
        assert layout.slot_mapping % 8 == 0
        end = layout.slot_mapping + 8 * t
        assert layout.block_tables % 16 == 0 and end <= layout.block_tables < end + 16
        end = layout.block_tables + 4 * b * width
        assert layout.nbytes % 8 == 0 and end <= layout.nbytes < end + 8


def test_metadata_layout_is_a_value():
    a, b = _C.metadata_layout(3, 5, 7), _C.metadata_layout(3, 5, 7)
    assert a == b and hash(a) == hash(b) and a != _C.metadata_layout(3, 5, 8)
    assert {a: 1}[b] == 1
    assert "batch_size=3" in repr(a) and "nbytes=" in repr(a)
    with pytest.raises(AttributeError):
        a.nbytes = 0


@pytest.mark.parametrize(
    "args, named",
    [
        ((-1, 1, 1), "batch_size=-1"),
        ((1, -1, 1), "width=-1"),
        ((1, 1, -1), "num_tokens=-1"),
        ((2**31, 1, 1), f"batch_size={2**31}"),
        ((1, 1, 2**62), f"num_tokens={2**62}"),
        ((INT32_MAX, INT32_MAX, 1), "does not fit in int64"),
    ],
)
def test_metadata_layout_rejects(args, named):
    with pytest.raises(ValueError, match=named):
        _C.metadata_layout(*args)


def test_construction():
    bm = core(block_size=4, num_blocks=8, max_seq_len=30, max_reqs=3)
    assert (bm.block_size, bm.num_blocks, bm.max_blocks_per_seq) == (4, 8, 8)
    assert (bm.num_free_blocks(), bm.num_reqs, bm.req_ids(), bm.check_integrity()) == (8, 0, [], "")


@pytest.mark.parametrize(
    "args, named",
    [
        ((0, 8, 30, 3), "block_size=0"),
        ((4, 0, 30, 3), "num_blocks=0"),
        ((4, 8, 0, 3), "max_seq_len=0"),
        ((4, 8, 30, 0), "max_reqs=0"),
        ((2**31, 4, 30, 3), f"block_size={2**31}"),
        ((4, 2**30, 30, 3), f"num_blocks={2**30} x block_size=4"),
        ((1, 2**31, 30, 3), f"num_blocks={2**31}"),
        ((4, 8, 2**62, 3), f"max_seq_len={2**62}"),
        ((4, 8, 30, 2**62 + 1), f"max_reqs={2**62 + 1}"),
        ((1, 8, INT32_MAX, INT32_MAX), "does not fit in int64"),
        ((1, 8, INT32_MAX, 2**20), "bytes of memory"),
        ((1, 8, 2**25, 2**10), "bytes of memory"),
    ],
)
def test_construction_rejects(args, named):
    with pytest.raises(ValueError, match=named):
        _C.BlockBooks(*args)


@pytest.mark.parametrize(
    "args, named",
    [
        ((0, 8, 4), "max_reqs=0"),
        ((2**62 + 1, 8, 4), f"max_reqs={2**62 + 1}"),
        ((3, 2**31, 4), f"max_seq_len={2**31}"),
        ((3, 8, 0), "block_size=0"),
    ],
)
def test_request_table_construction_rejects(args, named):
    with pytest.raises(ValueError, match=named):
        _C.RequestTable(*args)


def test_books_past_the_limit_are_refused_by_arithmetic():
    """The books of 2**31 - 1 rows need about 111 GB, past the 64 GiB one manager's books may
    take: a ValueError before allocating, on any machine (not by what this one has)."""
    assert _C.MAX_HOST_BYTES == 2**36
    with pytest.raises(ValueError, match="bytes of memory"):
        _C.RequestTable(INT32_MAX, 8, 4)


def test_update_and_release():
    bm = core()
    assert bm.update_block_table([1], 1, [5], True) == [5]
    assert (bm.seq_len(1), len(bm.block_ids(1)), bm.num_free_blocks()) == (5, 2, 6)
    assert bm.update_block_table([1], 1, [3], True) == [8]  # fills block 2 exactly
    assert bm.num_free_blocks() == 6
    assert bm.update_block_table([2, 1], 1, [1], True) == [1, 9]
    assert bm.num_free_blocks() == 4
    assert set(bm.block_ids(1)).isdisjoint(bm.block_ids(2))
    bm.release_seqs([1])
    assert (bm.num_free_blocks(), bm.req_ids()) == (7, [2])
    bm.release_seqs(np.array([2], dtype=np.int32))
    assert (bm.num_free_blocks(), bm.num_reqs, bm.check_integrity()) == (8, 0, "")


def test_errors_change_nothing():
    bm = core(block_size=4, num_blocks=4, max_seq_len=12, max_reqs=2)
    bm.update_block_table([1], 1, [6], True)
    before = (bm.num_free_blocks(), bm.req_ids(), slots_of(bm, 1))
    for call, error, named in [
        (lambda: bm.update_block_table([2], 1, [0], True), ValueError, "=0"),
        (lambda: bm.update_block_table([2], 1, [13], True), KVCacheExhausted, "13"),
        (lambda: bm.update_block_table([2], 1, [9], True), KVCacheExhausted, "free"),
        (lambda: bm.update_block_table([9], 0, [], True), KeyError, "9"),
        (lambda: bm.update_block_table([1], 1, [7], True), KVCacheExhausted, "13"),
        (lambda: bm.update_block_table([1], 1, [2**63 - 1], True), KVCacheExhausted, "6 \\+ 9223"),
        (lambda: bm.release_seqs([9]), KeyError, "9"),
        (lambda: bm.release_seqs([1, 9]), KeyError, "9"),
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
    bm.release_seqs(ids)
    assert bm.num_reqs == 0


@pytest.mark.parametrize(
    "ids, named",
    [
        (np.array([1.0]), "1-D integer array"),
        (np.array([[1]]), "1-D integer array"),
        (np.array([True]), "1-D integer array"),
        ("12", "list of ints"),
        ([1, "x"], "'x'"),
        ([True], "bool"),
        ((1, 2.5), "2.5"),
    ],
)
def test_bad_req_ids(ids, named):
    with pytest.raises(TypeError, match=named):
        core().update_block_table(ids, 0, [], True)


@pytest.mark.parametrize(
    "ids",
    [np.array([1, 2], dtype=">i8"), np.array([2**64 - 1], dtype=np.uint64)],
    ids=["big-endian", "uint64-over-int64"],
)
def test_numpy_values_read_exactly(ids):
    """An array's values are its ids (as for a list), or the call raises: never other ids."""
    bm = core()
    try:
        bm.update_block_table(ids, len(ids), [1] * len(ids), True)
    except (ValueError, TypeError):
        return
    assert sorted(bm.req_ids()) == sorted(int(v) for v in ids)


@pytest.mark.parametrize(
    "call, error, named",
    [
        (lambda bm: bm.update_block_table([1], 1.5, [1], True), TypeError, "num_prefill_seqs=1.5"),
        (lambda bm: bm.update_block_table([1], None, [1], True), TypeError, "num_prefill_seqs=None"),
        (lambda bm: bm.update_block_table([1], 2**64, [1], True), ValueError, f"num_prefill_seqs={2**64}"),
        (lambda bm: bm.update_block_table([1], 1, [1], 1), TypeError, "first_layer=1"),
        (lambda bm: bm.seq_len("1"), TypeError, "req_id='1'"),
        (lambda bm: bm.block_ids(None), TypeError, "req_id=None"),
        (lambda bm: bm.pack_flash_attn_metadata([1], 1, [1], [0] * 64), TypeError, "out"),
        (lambda bm: _C.BlockBooks(4.0, 8, 32, 3), TypeError, "block_size=4.0"),
        (lambda bm: _C.RequestTable(3, None, 4), TypeError, "max_seq_len=None"),
    ],
    ids=["float", "none", "huge", "first-layer-int", "str-id", "none-id", "list-out", "ctor-float", "table-ctor-none"],
)
def test_arguments_are_named_never_a_signature(call, error, named):
    """No argument is converted by pybind11: a bad one gets a sentence, not a signature dump."""
    with pytest.raises(error, match=named) as info:
        call(core())
    assert "Invoked with" not in str(info.value) and "incompatible" not in str(info.value)


def pack(bm, req_ids, num_prefill, lens, nbytes=None):
    out = np.full(nbytes or 4096, 9, dtype=np.uint8)
    stats, seq_lens = bm.pack_flash_attn_metadata(req_ids, num_prefill, lens, out)
    return stats, seq_lens, out


def test_pack_flash_attn_metadata_into_a_buffer():
    bm = core()
    bm.update_block_table([1, 2], 2, [5, 2], True)
    layout = _C.metadata_layout(2, 2, 7)
    stats, seq_lens, small = pack(bm, [1, 2], 2, [5, 2], layout.nbytes - 8)
    assert seq_lens is None and (small == 9).all()  # too small: nothing written
    assert (stats.batch_size, stats.width, stats.num_tokens) == (2, 2, 7)
    stats, seq_lens, out = pack(bm, [1, 2], 2, [5, 2], layout.nbytes)
    assert seq_lens == [5, 2]
    assert stats_dict(stats) == dict(
        batch_size=2,
        num_prefills=2,
        num_tokens=7,
        num_prefill_tokens=7,
        num_decode_tokens=0,
        max_query_len=5,
        max_seq_len=5,
        max_prefill_seq_len=5,
        max_decode_seq_len=0,
        max_decode_query_len=0,
        width=2,
    )
    slots = layout.slot_mapping
    assert out[slots : slots + 56].view(np.int64).tolist() == slots_of(bm, 1) + slots_of(bm, 2)
    tables = out[layout.block_tables : layout.block_tables + 16].view(np.int32).tolist()
    assert tables == bm.block_ids(1) + bm.block_ids(2) + [PAD]


def test_pack_of_a_mixed_batch():
    bm = core()
    bm.update_block_table([1, 2, 3], 3, [6, 1, 3], True)
    bm.update_block_table([2, 3, 1], 1, [2], True)  # 2 -> 3 tokens, 3 -> 4, 1 -> 7
    stats, seq_lens, out = pack(bm, [2, 3, 1], 1, [2])
    assert seq_lens == [3, 4, 7]
    assert stats_dict(stats) == dict(
        batch_size=3,
        num_prefills=1,
        num_tokens=4,
        num_prefill_tokens=2,
        num_decode_tokens=2,
        max_query_len=2,
        max_seq_len=7,
        max_prefill_seq_len=3,
        max_decode_seq_len=7,
        max_decode_query_len=1,
        width=2,
    )
    layout = _C.metadata_layout(3, 2, 4)
    i32 = out.view(np.int32)

    def ints(offset, n):
        return i32[offset // 4 : offset // 4 + n].tolist()

    assert ints(layout.seq_lens, 3) == [3, 4, 7]
    assert ints(layout.context_lens, 3) == [1, 3, 6]
    assert ints(layout.query_start_loc, 4) == [0, 2, 3, 4]
    assert ints(layout.seq_start_loc, 4) == [0, 3, 7, 14]
    slots = layout.slot_mapping
    assert out[slots : slots + 32].view(np.int64).tolist() == (
        slots_of(bm, 2)[1:] + slots_of(bm, 3)[3:] + slots_of(bm, 1)[6:]
    )


def test_pack_grows_its_buffer_through_grow():
    bm = core()
    bm.update_block_table([1, 2], 2, [5, 2], True)
    asked = []

    def grow(nbytes):
        asked.append(nbytes)
        return np.zeros(nbytes, np.uint8)

    stats, seq_lens = bm.pack_flash_attn_metadata([1, 2], 2, [5, 2], np.zeros(8, np.uint8), grow)
    assert seq_lens == [5, 2] and asked == [_C.metadata_layout(2, 2, 7).nbytes]
    for bad, error, named in [
        (lambda n: np.zeros(n - 8, np.uint8), ValueError, "returned a buffer of"),
        (lambda n: [0] * n, TypeError, "grow"),
        (lambda n: bm.reset_state(), RuntimeError, "another call"),
        (lambda n: 1 / 0, ZeroDivisionError, "division"),
    ]:
        with pytest.raises(error, match=named):
            bm.pack_flash_attn_metadata([1, 2], 2, [5, 2], np.zeros(8, np.uint8), bad)
        assert bm.req_ids() == [1, 2] and bm.check_integrity() == ""


@pytest.mark.parametrize(
    "out, named",
    [
        (np.zeros(64, np.int32), "1-byte items"),
        (np.zeros((8, 16), np.uint8)[:, ::2], "C-contiguous"),
    ],
)
def test_pack_buffer_errors(out, named):
    bm = core()
    bm.update_block_table([1], 1, [9], True)
    with pytest.raises(ValueError, match=named):
        bm.pack_flash_attn_metadata([1], 1, [9], out)


def test_pack_into_a_read_only_buffer():
    bm = core()
    bm.update_block_table([1], 1, [9], True)
    out = np.zeros(256, np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="(?s)out=array.*cannot be written"):
        bm.pack_flash_attn_metadata([1], 1, [9], out)
    assert (out == 0).all()
    dates = np.array(["2024-01-01"], dtype="datetime64[D]")
    with pytest.raises(ValueError, match="(?s)req_ids=array.*cannot be read"):
        bm.update_block_table(dates, 1, [2], True)


def test_batch_stats_has_names_only():
    """Read-only fields by name, no positions; only the core makes one."""
    bm = core()
    bm.update_block_table([1], 1, [3], True)
    stats, _, _ = pack(bm, [1], 0, [])
    assert isinstance(stats, _C.BatchStats) and not isinstance(stats, tuple)
    assert stats.num_decode_tokens == 1 and stats.max_seq_len == 3
    assert "max_seq_len=3" in repr(stats)
    with pytest.raises(AttributeError):
        stats.num_tokens = 0
    with pytest.raises(TypeError):
        stats[0]
    with pytest.raises(TypeError):
        _C.BatchStats()


def test_request_table():
    table, stride = _C.RequestTable(3, 10, 4), 4
    assert (table.max_reqs, table.max_seq_len, table.block_size) == (3, 10, 4)
    plan = np.zeros(4 * stride, np.int32)
    blocks, lens = table.advance([5, 6], 2, [3, 5], 8, plan, stride)
    assert (blocks, lens) == (3, [3, 5])
    assert plan.reshape(4, stride)[:, :3].tolist() == [[0, 1, 0], [0, 0, 0], [3, 5, 0], [0, 1, 3]]
    blocks, lens = table.advance([6, 5], 1, [4], 8, plan, stride)
    assert (blocks, lens) == (1, [9, 4])  # 6 grows to 3 blocks; 5 stays in its block
    out = np.zeros(5 * stride, np.int32)  # rows, lengths, query lengths, and their starts
    stats, lens = table.lookup([5, 6], 0, [], out, stride)
    assert (stats.num_tokens, stats.max_query_len, stats.max_seq_len, stats.max_decode_seq_len, stats.width, lens) == (
        2,
        1,
        9,
        9,
        3,
        [4, 9],
    )
    assert out.reshape(5, stride)[:, :2].tolist() == [[0, 1], [4, 9], [1, 1], [0, 1], [0, 4]]
    stats, lens = table.lookup([6, 5], 1, [3], out, stride)
    assert (stats.num_tokens, stats.max_query_len, stats.max_prefill_seq_len, stats.max_decode_seq_len, lens) == (
        4,
        3,
        9,
        4,
        [9, 4],
    )
    assert out.reshape(5, stride)[:, :2].tolist() == [[1, 0], [9, 4], [3, 1], [0, 3], [0, 9]]
    with pytest.raises(KVCacheExhausted, match="needs 2 free blocks"):
        table.advance([7], 1, [5], 1, plan, stride)
    assert table.release_seqs([6]) == ([1], [9])
    assert (table.num_reqs, table.num_free_rows, table.req_ids()) == (1, 2, [5])
    table.reset_state()
    assert (table.num_reqs, table.row_of(5)) == (0, -1)
    with pytest.raises(KeyError, match="5"):
        table.seq_len(5)


@pytest.mark.parametrize(
    "size, stride, named",
    [
        (8, 2, "stride=2 cannot hold"),  # the batch needs 3 entries a region
        (8, 4, "8 entries with stride=4"),  # 4 regions of 4 need 16
        (16, 2**62, "stride=4611686018427387904"),  # 4 * stride overflows int64
        (16, -4, "stride=-4"),
    ],
)
def test_request_table_plan_checks(size, stride, named):
    """The plan's size check cannot overflow: rows * stride past int64 is refused."""
    table = _C.RequestTable(4, 10, 1)
    plan = np.zeros(size, np.int32)
    with pytest.raises(ValueError, match=named):
        table.advance([7, 8], 2, [1, 1], 10, plan, stride)
    assert table.num_reqs == 0 and (plan == 0).all()
    out = np.zeros(size, np.int32)
    with pytest.raises(ValueError, match="stride"):
        table.lookup([], 0, [], out, stride)


@pytest.mark.parametrize("num_free_blocks", [-1, 2**31, 2**62])
def test_request_table_free_count_checked(num_free_blocks):
    table, plan = _C.RequestTable(2, 10, 1), np.zeros(16, np.int32)
    with pytest.raises(ValueError, match=f"num_free_blocks={num_free_blocks}"):
        table.advance([1], 1, [1], num_free_blocks, plan, 4)
    assert table.num_reqs == 0


def test_request_table_lengths_past_int32():
    """Lengths whose sum passes int32 (only a table told of more blocks than a pool holds
    gets there): the int32 prefix sums would wrap, so lookup refuses."""
    table, plan = _C.RequestTable(2, INT32_MAX, 1), np.zeros(12, np.int32)
    table.advance([1], 1, [2**30], INT32_MAX, plan, 3)
    table.advance([2], 1, [2**30], INT32_MAX, plan, 3)  # a second, whole pool
    with pytest.raises(ValueError, match="2147483648"):
        table.lookup([1, 2], 0, [], np.zeros(15, np.int32), 3)


def test_plan_update_into_overlapping_buffers():
    """update_block_table_plan's block_ids overlapping its plan's rows: the block ids
    written there never become rows the core indexes its tables with (they did: rows
    past max_reqs, written out of bounds)."""
    bm, stride = _C.BlockBooks(1, 64, 32, 4), 5
    plan = np.zeros(40, np.int32)  # the plan's 4 regions of 5, and room for 36 block ids
    blocks, seq_lens = bm.update_block_table_plan([1, 2, 3, 4], 4, [9, 9, 9, 9], plan, stride, plan[:36])
    assert (blocks, seq_lens) == (36, [9, 9, 9, 9])
    assert bm.check_integrity() == "" and [bm.seq_len(r) for r in (1, 2, 3, 4)] == [9] * 4
    assert sorted(b for r in (1, 2, 3, 4) for b in bm.block_ids(r)) == list(range(36))
    table = _C.RequestTable(4, 32, 1)
    table.advance([5, 6], 2, [3, 4], 64, plan, stride)
    assert [table.seq_len(5), table.seq_len(6)] == [3, 4]


IDS = st.one_of(st.integers(0, 20), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 0, 2**63 - 1, -(2**63)]))


@settings(max_examples=60)
@given(ops=st.lists(st.tuples(st.booleans(), IDS), max_size=60))
def test_request_table_ids_against_a_dict(ops):
    """Admits and releases ids (colliding ones included) against a dict of rows."""
    table, model, stride = _C.RequestTable(8, 100, 1), {}, 9
    plan = np.zeros(4 * stride, np.int32)
    for admit, req_id in ops:
        if admit and req_id not in model and len(model) < 8:
            table.advance([req_id], 1, [1], 100, plan, stride)
            model[req_id] = int(plan[0])
        elif not admit and req_id in model:
            assert table.release_seqs([req_id]) == ([model.pop(req_id)], [1])
        for known, row in model.items():
            assert table.row_of(known) == row
        assert table.row_of(req_id) == model.get(req_id, -1)
        assert sorted(table.req_ids()) == sorted(model) and table.num_reqs == len(model)
        assert sorted(model.values()) == sorted(set(model.values()))


def test_pack_into_named_buffers_writes_what_a_whole_pack_writes():
    """Packs that name a buffer of a ring write only the blocks a row gained since that
    buffer's last pack; over joins, leaves, reorders, width changes and a reset, every
    buffer then holds exactly what a pack from scratch writes."""
    rng = np.random.default_rng(7)
    bm = core(block_size=4, num_blocks=400, max_seq_len=200, max_reqs=12)
    ring = [np.full(8192, 9, np.uint8) for _ in range(3)]
    running: list[int] = []
    next_id = 0
    for step in range(120):
        if step == 60:
            bm.reset_state()
            running = []
        if running and rng.random() < 0.2:
            gone = running.pop(int(rng.integers(len(running))))
            bm.release_seqs([gone])
        new = []
        if len(running) < 12 and rng.random() < 0.4:
            new = [next_id]
            next_id += 1
        if rng.random() < 0.3:
            rng.shuffle(running)
        ids = new + running
        lens = [int(rng.integers(1, 9)) for _ in new]
        if any(bm.seq_len(r) >= 190 for r in running):
            continue
        bm.update_block_table(ids, len(new), lens, True)
        running = running + new
        k = step % 3
        stats, seq_lens = bm.pack_flash_attn_metadata(ids, len(new), lens, ring[k], None, k)
        whole = np.full(8192, 9, np.uint8)
        bm.pack_flash_attn_metadata(ids, len(new), lens, whole)
        layout = _C.metadata_layout(stats.batch_size, stats.width, stats.num_tokens)
        table = 4 * stats.batch_size * stats.width
        slots = layout.slot_mapping + 8 * stats.num_tokens  # the padding after is no array
        for start, end in ((0, slots), (layout.block_tables, layout.block_tables + table)):
            assert (ring[k][start:end] == whole[start:end]).all(), step


def test_pack_buffer_index_is_checked():
    bm = core()
    bm.update_block_table([1], 1, [3], True)
    for bad in (-2, 16, 2**40):
        with pytest.raises(ValueError, match=f"buffer={bad}"):
            bm.pack_flash_attn_metadata([1], 0, [], np.zeros(4096, np.uint8), None, bad)


def test_packed_offsets_are_metadata_layout():
    """The cpu backend computes the layout's offsets in Python (a call and nine attribute
    reads a pack saved): the same numbers as the C++ core's."""
    from disagmoe.metadata import packed_offsets

    for b in (0, 1, 2, 3, 7, 64, 1023):
        for w in (0, 1, 3, 65, 4097):
            for t in (0, 1, 5, 9000):
                layout = _C.metadata_layout(b, w, t)
                offsets = packed_offsets(b, w, t)
                assert {name: getattr(layout, name) for name in offsets._fields} == offsets._asdict(), (b, w, t)


def test_metadata_views_are_named_fields_of_the_buffer():
    """Each named view lies where `packed_offsets` puts its field, with its field's shape."""
    import torch

    from disagmoe.metadata import metadata_views, packed_offsets

    b, w, t = 5, 7, 11
    offsets = packed_offsets(b, w, t)
    buffer = torch.zeros(offsets.nbytes, dtype=torch.uint8)
    views = metadata_views(buffer.view(torch.int32), buffer[: offsets.nbytes // 8 * 8].view(torch.int64), b, w, t)
    shapes = {
        "seq_lens": (b,),
        "context_lens": (b,),
        "query_start_loc": (b + 1,),
        "seq_start_loc": (b + 1,),
        "block_tables": (b, w),
        "slot_mapping": (t,),
    }
    for name, shape in shapes.items():
        view = getattr(views, name)
        assert tuple(view.shape) == shape, name
        assert view.storage_offset() * view.element_size() == getattr(offsets, name), name

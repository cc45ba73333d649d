"""The cpu design's native step (`_C.HostStep` over `_C.BlockBooks`, csrc/host_step.h) on
torch's CPU device: updates, releases and packs against the books' own blocks, the memo
of the last pack, growing its buffers, and errors that change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from steps import HostRig, expected_metadata

from disagmoe import _C, PAD_BLOCK_ID, KVCacheExhausted


def stats_dict(stats: _C.BatchStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in _C.BatchStats.__match_args__}


def test_update_and_release():
    r = HostRig()
    books = r.books
    assert r.update([1], 1, [5]) == [5]
    assert (books.seq_len(1), len(books.block_ids(1)), books.num_free_blocks()) == (5, 2, 6)
    assert r.update([1], 1, [3]) == [8]  # fills block 2 exactly
    assert books.num_free_blocks() == 6
    assert r.update([2, 1], 1, [1]) == [1, 9]
    assert books.num_free_blocks() == 4
    assert set(books.block_ids(1)).isdisjoint(books.block_ids(2))
    assert r.step.lengths([1, 2], 0, []) == [9, 1]  # a later layer reads the lengths
    r.step.release([1])
    assert (books.num_free_blocks(), books.req_ids()) == (7, [2])
    r.step.release(np.array([2], dtype=np.int32))
    assert (books.num_free_blocks(), books.num_reqs, books.check_integrity()) == (8, 0, "")


def test_plan_changes_nothing_until_commit():
    r = HostRig()
    assert r.step.plan([1, 2], 2, [5, 3]) == [5, 3]
    assert (r.books.num_reqs, r.books.num_free_blocks()) == (0, 8)
    r.step.commit(0)
    assert (r.books.num_reqs, r.books.num_free_blocks(), r.books.row_of(2)) == (2, 5, 1)


def test_a_commit_needs_its_plan_unchanged():
    r = HostRig()
    r.update([1], 1, [3])
    with pytest.raises(RuntimeError, match="changed between planning"):
        r.step.commit(0)  # nothing planned
    r.step.plan([2], 1, [4])
    r.step.release([1])  # the books change between the plan and its commit
    with pytest.raises(RuntimeError, match="changed between planning"):
        r.step.commit(0)
    assert (r.books.req_ids(), r.books.num_free_blocks(), r.books.check_integrity()) == ([], 8, "")


def test_errors_change_nothing():
    r = HostRig(block_size=4, num_blocks=4, max_seq_len=12, max_reqs=2)
    r.update([1], 1, [6])
    books, step = r.books, r.step
    before = (books.num_free_blocks(), books.req_ids(), r.slots(1))
    for call, error, named in [
        (lambda: step.plan([2], 1, [0]), ValueError, "=0"),
        (lambda: step.plan([2], 1, [13]), KVCacheExhausted, "13"),
        (lambda: step.plan([2], 1, [9]), KVCacheExhausted, "free"),
        (lambda: step.plan([9], 0, []), KeyError, "9"),
        (lambda: step.plan([1], 1, [7]), KVCacheExhausted, "13"),
        (lambda: step.plan([1], 1, [2**63 - 1]), KVCacheExhausted, "6 \\+ 9223"),
        (lambda: step.plan([1, 1], 0, []), ValueError, "1"),
        (lambda: step.lengths([9], 0, []), KeyError, "9"),
        (lambda: r.pack([1, 9], 0, []), KeyError, "9"),
        (lambda: step.release([9]), KeyError, "9"),
        (lambda: step.release([1, 9]), KeyError, "9"),
        (lambda: step.release([1, 1]), ValueError, "1"),
        (lambda: books.block_ids(9), KeyError, "9"),
        (lambda: books.seq_len(9), KeyError, "9"),
    ]:
        with pytest.raises(error, match=named):
            call()
        assert (books.num_free_blocks(), books.req_ids(), r.slots(1)) == before
        assert books.check_integrity() == ""


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.int64, np.uint32])
def test_numpy_req_ids_accepted(dtype):
    r = HostRig()
    ids, lens = np.array([3, 1], dtype=dtype), np.array([2, 5], dtype=dtype)
    assert r.update(ids, 2, lens) == [2, 5]
    assert r.update(ids[::-1], 0, lens[:0]) == [6, 3]  # a strided view
    assert r.step.lengths(ids, 0, []) == [3, 6]
    r.step.release(ids)
    assert r.books.num_reqs == 0


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
        HostRig().step.plan(ids, 0, [])


@pytest.mark.parametrize(
    "ids",
    [np.array([1, 2], dtype=">i8"), np.array([2**64 - 1], dtype=np.uint64)],
    ids=["big-endian", "uint64-over-int64"],
)
def test_numpy_values_read_exactly(ids):
    """An array's values are its ids (as for a list), or the call raises: never other ids."""
    r = HostRig()
    try:
        r.update(ids, len(ids), [1] * len(ids))
    except (ValueError, TypeError):
        return
    assert sorted(r.books.req_ids()) == sorted(int(v) for v in ids)


def test_an_array_that_cannot_be_read():
    dates = np.array(["2024-01-01"], dtype="datetime64[D]")
    with pytest.raises(TypeError, match="(?s)req_ids=array.*cannot be read"):
        HostRig().step.plan(dates, 1, [2])


@pytest.mark.parametrize(
    "call, error, named",
    [
        (lambda r: r.step.plan([1], 1.5, [1]), TypeError, "num_prefill_seqs=1.5"),
        (lambda r: r.step.plan([1], None, [1]), TypeError, "num_prefill_seqs=None"),
        (lambda r: r.step.plan([1], 2**64, [1]), ValueError, f"num_prefill_seqs={2**64}"),
        (lambda r: r.step.pack([1], 0, [], 1.5, 0), TypeError, "layer=1.5"),
        (lambda r: r.step.pack([1], 0, [], 0, None), TypeError, "stream=None"),
        (lambda r: r.step.pack([1], 0, [], 0, 0, "7"), TypeError, "known='7'"),
        (lambda r: r.books.seq_len("1"), TypeError, "req_id='1'"),
        (lambda r: r.books.block_ids(None), TypeError, "req_id=None"),
        (lambda r: _C.BlockBooks(4.0, 8, 32, 3), TypeError, "block_size=4.0"),
        (lambda r: _C.RequestTable(3, None, 4), TypeError, "max_seq_len=None"),
        (lambda r: _C.HostStep(_C.RequestTable(3, 8, 4), 1, -1), TypeError, "core"),
        (lambda r: _C.HostStep(r.books, 1.5, -1), TypeError, "depth=1.5"),
    ],
    ids=[
        "float",
        "none",
        "huge",
        "layer",
        "stream",
        "known",
        "str-id",
        "none-id",
        "ctor",
        "table-ctor",
        "core",
        "depth",
    ],
)
def test_arguments_are_named_never_a_signature(call, error, named):
    """No argument is converted by pybind11: a bad one gets a sentence, not a signature dump."""
    r = HostRig()
    r.update([1], 1, [3])
    with pytest.raises(error, match=named) as info:
        call(r)
    assert "Invoked with" not in str(info.value) and "incompatible" not in str(info.value)


def test_pack_writes_the_metadata_of_the_books():
    r = HostRig()
    r.update([1, 2], 2, [5, 2])
    pack_id, stats, seq_lens = r.pack([1, 2], 2, [5, 2])
    assert (pack_id, seq_lens) == (1, [5, 2])
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
    md = r.metadata(stats)
    assert md.slot_mapping.tolist() == r.slots(1) + r.slots(2)
    assert md.block_tables.ravel().tolist() == r.books.block_ids(1) + r.books.block_ids(2) + [PAD_BLOCK_ID]


def test_pack_of_a_mixed_batch():
    r = HostRig()
    r.update([1, 2, 3], 3, [6, 1, 3])
    r.update([2, 3, 1], 1, [2])  # 2 -> 3 tokens, 3 -> 4, 1 -> 7
    _, stats, seq_lens = r.pack([2, 3, 1], 1, [2])
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
    md = r.metadata(stats)
    assert md.seq_lens.tolist() == [3, 4, 7]
    assert md.context_lens.tolist() == [1, 3, 6]
    assert md.query_start_loc.tolist() == [0, 2, 3, 4]
    assert md.seq_start_loc.tolist() == [0, 3, 7, 14]
    assert md.slot_mapping.tolist() == r.slots(2)[1:] + r.slots(3)[3:] + r.slots(1)[6:]


def test_the_same_batch_at_another_layer_is_remembered():
    r = HostRig()
    r.update([1, 2], 2, [3, 5])
    pack_id, _, _ = r.pack([1, 2], 2, [3, 5], layer=0)
    assert r.pack([1, 2], 2, [3, 5], layer=1, known=pack_id) == (pack_id, [3, 5])
    assert len(r.pack([1, 2], 2, [3, 5], layer=1, known=pack_id)) == 3  # the same layer again: packed
    assert len(r.pack([1, 2], 2, [3, 5], layer=2, known=pack_id)) == 3  # not the caller's last pack
    last, _, _ = r.pack([2], 0, [], layer=0)
    r.step.release([1])  # a change in between
    assert len(r.pack([2], 0, [], layer=1, known=last)) == 3


def test_pack_grows_its_buffers_through_grow():
    r = HostRig()
    r.update([1, 2], 2, [5, 2])
    r.pack([1, 2], 2, [5, 2])
    layout = _C.metadata_layout(2, 2, 7)
    assert r.grown == [("host", layout.block_tables), ("device", layout.nbytes)]


@pytest.mark.parametrize(
    "grow, error, named",
    [
        (lambda r: None, RuntimeError, "left a buffer too small"),
        (lambda r: 1 / 0, ZeroDivisionError, "division"),
        (lambda r: r.step.reset(), RuntimeError, "another call"),
        (lambda r: r.step.plan([3], 1, [1]), RuntimeError, "another call"),
        (None, RuntimeError, "no grow\\(\\) was set"),
    ],
    ids=["nothing", "raises", "reset", "plan", "none-set"],
)
def test_a_grow_that_fails_changes_nothing(grow, error, named):
    r = HostRig()
    r.update([1, 2], 2, [5, 2])
    if grow is None:
        r.step = _C.HostStep(r.books, 1, -1)  # no grow set
        r.set_head(64)
        r.set_out(64)
    else:
        r.step.set_grow(lambda which, nbytes: grow(r))
    with pytest.raises(error, match=named):
        r.pack([1, 2], 2, [5, 2])
    assert (r.books.req_ids(), r.books.num_free_blocks(), r.books.check_integrity()) == ([1, 2], 5, "")


def test_batch_stats_has_names_only():
    """Read-only fields by name, no positions; only the core makes one."""
    r = HostRig()
    r.update([1], 1, [3])
    _, stats, _ = r.pack([1], 0, [])
    assert isinstance(stats, _C.BatchStats) and not isinstance(stats, tuple)
    assert stats.num_decode_tokens == 1 and stats.max_seq_len == 3
    assert "max_seq_len=3" in repr(stats)
    with pytest.raises(AttributeError):
        stats.num_tokens = 0
    with pytest.raises(TypeError):
        stats[0]
    with pytest.raises(TypeError):
        _C.BatchStats()


def test_packed_rows_are_the_books_rows():
    """A pack writes into its ring buffer only the blocks a row gained since that buffer's
    last pack; over joins, leaves, reorders, width changes and a reset, the metadata is
    every time exactly the books' (block tables, slots, lengths)."""
    rng = np.random.default_rng(7)
    r = HostRig(block_size=4, num_blocks=400, max_seq_len=200, max_reqs=12)
    running: list[int] = []
    next_id = 0
    for step in range(120):
        if step == 60:
            r.step.reset()
            running = []
        if running and rng.random() < 0.2:
            r.step.release([running.pop(int(rng.integers(len(running))))])
        new = []
        if len(running) < 12 and rng.random() < 0.4:
            new, next_id = [next_id], next_id + 1
        if rng.random() < 0.3:
            rng.shuffle(running)
        if any(r.books.seq_len(q) >= 190 for q in running):
            continue
        ids, lens = new + running, [int(rng.integers(1, 9)) for _ in new]
        r.update(ids, len(new), lens)
        running = ids
        _, stats, _ = r.pack(ids, len(new), lens)
        want = expected_metadata(r.books, 4, ids, lens + [1] * (len(ids) - len(new)), stats.width)
        got = r.metadata(stats)
        for name in ("seq_lens", "context_lens", "query_start_loc", "seq_start_loc", "block_tables", "slot_mapping"):
            assert (getattr(got, name) == getattr(want, name)).all(), (step, name)


@pytest.mark.parametrize(
    "call, error, named",
    [
        (lambda r: r.step.set_buffer(0, [0] * 24, r.head), TypeError, "table=\\[0, 0"),
        (lambda r: r.step.set_buffer(0, torch.zeros(48, dtype=torch.int32)[::2], r.head), ValueError, "contiguous"),
        (lambda r: r.step.set_buffer(0, torch.zeros(5, dtype=torch.int32), r.head), ValueError, "cannot hold 3 rows"),
        (lambda r: r.step.set_buffer(1, r.table, r.head), ValueError, "k=1"),
        (
            lambda r: r.step.set_buffer(0, r.table, torch.zeros(64, dtype=torch.uint8, device="meta")),
            ValueError,
            "meta",
        ),
        (lambda r: r.step.set_out(np.zeros(64, np.uint8)), TypeError, "out=array"),
        (lambda r: _C.HostStep(r.books, 0, -1), ValueError, "depth=0"),
        (lambda r: _C.HostStep(r.books, 1, 2**32), ValueError, f"device={2**32}"),
    ],
    ids=["list", "strided", "small", "k", "meta", "numpy", "depth", "device"],
)
def test_the_step_keeps_only_tensors_that_fit(call, error, named):
    r = HostRig()
    r.update([1, 2], 2, [5, 2])
    with pytest.raises(error, match=named):
        call(r)
    _, stats, _ = r.pack([1, 2], 2, [5, 2])  # the buffers it had
    assert r.metadata(stats).slot_mapping.tolist() == r.slots(1) + r.slots(2)

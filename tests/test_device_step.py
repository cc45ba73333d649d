"""The gpu and hybrid designs' native step (`_C.DeviceStep`, csrc/device_step.h) on torch's
CPU device: what it stages for each launch (the words `layout.py` names), where an
update's blocks come from (`block_source`), growing its staging buffers, and errors that
change nothing. Launches are recorded, not run (the managers' tests run the kernels)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from steps import DeviceRig

from disagmoe import _C, KVCacheExhausted
from disagmoe.block_manager import layout as L
from disagmoe.block_manager.buffers import StagingBuffers

FUSED = L.UPDATE | L.PACK | L.FUSED
SOURCES = [L.DEVICE_STACK, L.HOST_BOOKS]


def test_the_books_say_where_the_blocks_come_from():
    stack, books = DeviceRig(L.DEVICE_STACK), DeviceRig(L.HOST_BOOKS)
    assert (stack.step.block_source, books.step.block_source) == (L.DEVICE_STACK, L.HOST_BOOKS)
    plain = {*range(1, 8), FUSED, L.RELEASE | FUSED}
    assert set(stack.step.flag_sets) == plain | {f | L.PREFIX for f in plain} | {L.PREFIX}  # PREFIX: the cache's moves
    assert set(books.step.flag_sets) == {L.UPDATE, L.PACK, L.UPDATE | L.PACK, FUSED}  # a release stages nothing
    assert _C.LAUNCH_FLAGS == {
        "RELEASE": L.RELEASE,
        "UPDATE": L.UPDATE,
        "PACK": L.PACK,
        "FUSED": L.FUSED,
        "PREFIX": L.PREFIX,
    }


@pytest.mark.parametrize("source", SOURCES)
def test_a_first_layer_step_is_one_fused_launch(source):
    r = DeviceRig(source)
    assert r.step.plan([1, 2], 2, [5, 3]) == [5, 3]
    assert (r.books.num_reqs, r.step.num_free_blocks) == (0, 16)  # planned: nothing changed
    r.step.commit(0)
    assert (r.books.num_reqs, r.step.num_free_blocks, r.launches) == (2, 13, [])  # deferred
    pack_id, stats, seq_lens = r.pack([1, 2], 2, [5, 3])
    assert (pack_id, seq_lens, stats.width, stats.num_tokens) == (1, [5, 3], 2, 8)
    (launch,) = r.launches
    assert (launch.flags, launch.grid) == (FUSED, 2)
    assert launch.plan() == [[0, 1], [0, 0], [5, 3], [0, 2, 3]]
    assert launch.lookup() == [[0, 1], [5, 3], [5, 3], [0, 5], [0, 5]]
    header = launch.words
    assert (header[L.PACK_SIZE], header[L.WIDTH], header[L.NUM_TOKENS]) == (2, 2, 8)
    layout = _C.metadata_layout(2, 2, 8)
    assert (header[L.SLOTS_AT] * 8, header[L.SEQ_LENS_AT] * 4, header[L.TABLE_AT] * 4) == (
        layout.slot_mapping,
        layout.seq_lens,
        layout.block_tables,
    )
    if source == L.DEVICE_STACK:
        assert header[L.HEIGHT] == 16  # the kernel pops from here
    else:
        assert launch.new_ids(3) == r.books.block_ids(1) + r.books.block_ids(2)


@pytest.mark.parametrize("source", SOURCES)
def test_a_later_layer_reads_the_lengths_and_remembers_the_pack(source):
    r = DeviceRig(source)
    r.update([1, 2], 2, [5, 3])
    pack_id, _, _ = r.pack([1, 2], 2, [5, 3])
    assert r.step.lengths([2, 1], 0, []) == [3, 5]
    assert r.pack([1, 2], 2, [5, 3], layer=1, known=pack_id) == (pack_id, [5, 3])
    assert len(r.launches) == 1
    _, stats, _ = r.pack([2, 1], 0, [], layer=1)  # another batch: packed, no update
    assert (r.launches[-1].flags, stats.num_tokens) == (L.PACK, 2)
    assert r.launches[-1].lookup() == [[1, 0], [3, 5], [1, 1], [0, 1], [0, 3]]


def test_a_release_from_the_device_stack_is_staged_before_the_next_update():
    r = DeviceRig(L.DEVICE_STACK)
    r.update([1, 2], 2, [5, 4])
    r.pack([1, 2], 2, [5, 4])
    r.step.release([1], 0)
    assert (r.books.req_ids(), r.step.num_free_blocks, len(r.launches)) == ([2], 15, 1)
    r.update([3, 2], 1, [4])  # request 2 grows into a second block
    r.pack([3, 2], 1, [4])
    launch = r.launches[-1]
    assert launch.flags == L.RELEASE | FUSED  # the release first, in the same launch
    assert launch.release() == [[0], [5], [0]] and launch.words[L.RELEASE_HEIGHT] == 13
    assert launch.plan() == [[0, 1], [0, 4], [4, 5], [0, 1, 2]] and launch.words[L.HEIGHT] == 15
    r.step.release([3], 0)
    r.step.flush(0)
    assert (r.launches[-1].flags, r.launches[-1].release()) == (L.RELEASE, [[0], [4], [0]])
    r.step.flush(0)  # nothing staged: no launch
    assert len(r.launches) == 3


def test_a_release_from_the_host_books_is_host_work():
    r = DeviceRig(L.HOST_BOOKS)
    r.update([1, 2], 2, [5, 3])
    r.pack([1, 2], 2, [5, 3])
    r.step.release([1], 0)
    r.step.flush(0)
    assert (r.books.req_ids(), r.step.num_free_blocks, len(r.launches)) == ([2], 15, 1)
    assert r.books.check_integrity() == ""


def test_a_commit_of_more_new_ids_than_the_staging_holds_grows_it():
    r = DeviceRig(L.HOST_BOOKS, block_size=1, num_blocks=64, max_seq_len=64, ids=4)
    small = r.step.staged_capacity
    r.update([1, 2], 2, [20, 30])
    needed = _C.staged_words(3, 50)
    assert r.grown == [("staging", 4 * needed)] and r.step.staged_capacity == needed > small
    r.pack([1, 2], 2, [20, 30])
    assert r.launches[-1].new_ids(50) == r.books.block_ids(1) + r.books.block_ids(2)


@pytest.mark.parametrize(
    "grow, error, named",
    [
        (lambda r, n: None, RuntimeError, "left the staging buffers too small"),
        (lambda r, n: 1 / 0, ZeroDivisionError, "division"),
        (lambda r, n: r.step.release([1], 0), RuntimeError, "another call"),
    ],
    ids=["nothing", "raises", "release"],
)
def test_a_staging_grow_that_fails_changes_nothing(grow, error, named):
    r = DeviceRig(L.HOST_BOOKS, block_size=1, num_blocks=64, max_seq_len=64, ids=4)
    r.update([1], 1, [2])
    r.step.set_grow(lambda which, nbytes: grow(r, nbytes))
    r.step.plan([2], 1, [30])
    with pytest.raises(error, match=named):
        r.step.commit(0)
    assert (r.books.req_ids(), r.step.num_free_blocks, r.books.check_integrity()) == ([1], 62, "")


@pytest.mark.parametrize("source", SOURCES)
def test_errors_change_nothing(source):
    r = DeviceRig(source, num_blocks=4, max_seq_len=12, max_reqs=2)
    r.update([1], 1, [6])
    before = (r.books.req_ids(), r.books.seq_len(1), r.step.num_free_blocks)
    for call, error, named in [
        (lambda: r.step.plan([2], 1, [9]), KVCacheExhausted, "free"),
        (lambda: r.step.plan([2], 1, [13]), KVCacheExhausted, "13"),
        (lambda: r.step.plan([9], 0, []), KeyError, "9"),
        (lambda: r.step.plan([1], 1, [0]), ValueError, "=0"),
        (lambda: r.step.commit(0), RuntimeError, "changed between planning"),
        (lambda: r.step.lengths([1, 9], 0, []), KeyError, "9"),
        (lambda: r.pack([9], 0, []), KeyError, "9"),
        (lambda: r.step.release([1, 9], 0), KeyError, "9"),
        (lambda: r.step.release([1, 1], 0), ValueError, "1"),
        (lambda: r.step.commit(None), TypeError, "stream=None"),
        (lambda: r.step.flush("0"), TypeError, "stream='0'"),
    ]:
        with pytest.raises(error, match=named):
            call()
        assert (r.books.req_ids(), r.books.seq_len(1), r.step.num_free_blocks) == before


def test_a_launch_that_raises_leaves_the_update_staged():
    r = DeviceRig(L.DEVICE_STACK)
    r.update([1], 1, [5])
    r.on_launch = lambda: 1 / 0
    with pytest.raises(ZeroDivisionError):
        r.pack([1], 1, [5])
    r.on_launch = None
    r.step.flush(0)  # the deferred update still runs
    assert (r.launches[-1].flags, r.launches[-1].plan()) == (L.UPDATE, [[0], [0], [5], [0, 2]])
    assert (r.books.seq_len(1), r.step.num_free_blocks) == (5, 14)


def test_a_flush_inside_a_launch_is_refused():
    r = DeviceRig(L.DEVICE_STACK)
    r.update([1], 1, [5])
    r.on_launch = lambda: r.step.flush(0)
    with pytest.raises(RuntimeError, match="another call"):
        r.pack([1], 1, [5])


def test_reset_restores_the_free_stack():
    r = DeviceRig(L.DEVICE_STACK)
    r.update([1, 2], 2, [5, 3])
    r.stack[10:].fill_(-1)  # what the update kernel would have popped
    r.step.reset(0)
    assert torch.equal(r.stack, r.initial)
    assert (r.books.num_reqs, r.books.num_free_rows, r.step.num_free_blocks) == (0, 3, 16)
    r.step.flush(0)  # the staged update was dropped
    assert r.launches == []


@pytest.mark.parametrize(
    "args, error, named",
    [
        ((None, 4, 1, -1), TypeError, "books must be"),
        (("table", 0, 1, -1), ValueError, "num_blocks=0"),
        (("table", 2**31, 1, -1), ValueError, f"num_blocks={2**31}"),
        (("table", 4, 1.5, -1), TypeError, "depth=1.5"),
    ],
)
def test_construction_rejects(args, error, named):
    table = _C.RequestTable(3, 8, 4)
    with pytest.raises(error, match=named):
        _C.DeviceStep(table if args[0] == "table" else args[0], *args[1:])


IDS = st.one_of(st.integers(0, 20), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 0, 2**63 - 1, -(2**63)]))


@settings(max_examples=60)
@given(ops=st.lists(st.tuples(st.booleans(), IDS), max_size=60))
def test_request_rows_against_a_dict(ops):
    """Admits and releases ids (colliding ones included) against a dict of rows."""
    r, rows = DeviceRig(L.DEVICE_STACK, block_size=1, num_blocks=100, max_seq_len=100, max_reqs=8), {}
    for admit, req_id in ops:
        if admit and req_id not in rows and len(rows) < 8:
            r.update([req_id], 1, [1])
            rows[req_id] = r.books.row_of(req_id)
        elif not admit and req_id in rows:
            r.step.release([req_id], 0)
            del rows[req_id]
        for known, row in rows.items():
            assert r.books.row_of(known) == row
        assert r.books.row_of(req_id) == rows.get(req_id, -1)
        assert sorted(r.books.req_ids()) == sorted(rows) and r.books.num_reqs == len(rows)
        assert sorted(rows.values()) == sorted(set(rows.values()))
        assert 0 <= min(rows.values(), default=0) and max(rows.values(), default=0) < 8


def test_lengths_past_int32_are_refused():
    """Lengths whose sum passes int32 (only a step told of more slots than a pool holds gets
    there): the int32 prefix sums would wrap, so the lookup refuses."""
    table = _C.RequestTable(2, 2**31 - 1, 2)
    step = _C.DeviceStep(table, 2**30, 1, -1)
    words = torch.zeros(_C.staged_words(2, 0), dtype=torch.int32)
    step.set_staging(StagingBuffers([words], [words.numpy()], None))
    step.set_launcher(lambda buffer, flags, grid: None)
    for req_id in (1, 2):
        step.plan([req_id], 1, [2**30])
        step.commit(0)
    with pytest.raises(ValueError, match="2147483648"):
        step.lengths([1, 2], 0, [])


def _staging(words, twin=None) -> StagingBuffers:
    """A ring of one buffer (the rigs' depth) and `twin`, for set_staging."""
    return StagingBuffers([words], [], twin)


@pytest.mark.parametrize(
    "call, error, named",
    [
        (
            lambda r: r.step.set_staging(_staging(torch.zeros(8, dtype=torch.int32))),
            ValueError,
            "cannot hold the staged",
        ),
        (lambda r: r.step.set_staging(_staging([0] * 256)), TypeError, "words=\\[0"),
        (
            lambda r: r.step.set_staging(_staging(r.words, torch.zeros(512, dtype=torch.int32)[::2])),
            ValueError,
            "contiguous",
        ),
        (
            lambda r: r.step.set_staging(StagingBuffers([r.words] * 2, [], None)),
            ValueError,
            "2 buffers for a ring of 1",
        ),
        (lambda r: r.step.set_free_stack(r.stack[:8], r.initial[:8]), ValueError, "cannot hold 16 block ids"),
        (lambda r: r.step.set_free_stack(r.stack, "x"), TypeError, "initial='x'"),
        (lambda r: r.step.set_graph(1, 1, 0, None), TypeError, "graph=None"),
        (lambda r: _C.DeviceStep(r.books, 16, 17, -1), ValueError, "depth=17"),
    ],
    ids=["small", "list", "strided-twin", "ring", "short-stack", "str-stack", "graph", "depth"],
)
def test_the_step_keeps_only_tensors_that_fit(call, error, named):
    r = DeviceRig(L.DEVICE_STACK)
    r.update([1], 1, [5])
    with pytest.raises(error, match=named):
        call(r)
    r.pack([1], 1, [5])  # the buffers it had
    assert r.launches[-1].plan() == [[0], [0], [5], [0, 2]]
    r.step.reset(0)
    assert torch.equal(r.stack, r.initial)


def test_a_step_from_the_host_books_has_no_free_stack():
    r = DeviceRig(L.HOST_BOOKS)
    stack = torch.zeros(16, dtype=torch.int32)
    with pytest.raises(ValueError, match="host books"):
        r.step.set_free_stack(stack, stack.clone())

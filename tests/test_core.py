"""The C++ core's books and layout (disagmoe._C): BlockBooks and RequestTable as the managers
read them, and metadata_layout. The steps that change the books have their own tests
(test_host_step.py, test_device_step.py)."""

from __future__ import annotations

import numpy as np
import pytest

from disagmoe import _C

INT32_MAX = 2**31 - 1


def core(block_size: int = 4, num_blocks: int = 8, max_seq_len: int = 32, max_reqs: int = 3):
    return _C.BlockBooks(block_size, num_blocks, max_seq_len, max_reqs)


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


def test_metadata_layout_is_read_only():
    layout = _C.metadata_layout(3, 5, 7)
    assert "batch_size=3" in repr(layout) and "nbytes=" in repr(layout)
    with pytest.raises(AttributeError):
        layout.nbytes = 0


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
    assert (bm.max_blocks_per_seq, bm.num_free_blocks(), bm.num_reqs, bm.req_ids(), bm.check_integrity()) == (
        8,
        8,
        0,
        [],
        "",
    )
    assert bm.row_of(1) == -1
    table = _C.RequestTable(3, 10, 4)
    assert (table.max_reqs, table.num_reqs, table.num_free_rows, table.req_ids(), table.row_of(5)) == (3, 0, 3, [], -1)
    for books in (bm, table):
        with pytest.raises(KeyError, match="5"):
            books.seq_len(5)


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


def test_packed_offsets_are_metadata_layout():
    """The cpu design computes the layout's offsets in Python (a call and nine attribute
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

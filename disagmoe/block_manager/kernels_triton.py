"""The `gpu` backend's step kernels in Triton: one launch per operation.

One program per batch entry (the pack may give an entry several, see
PackLaunch); the staged inputs may sit in pinned host memory
(each program reads a few words of it). Every per-step scalar (batch size, stack height,
output offsets) is read from the staged header on the device, never passed as
an argument, so a launch can be captured in a CUDA graph and replayed for any
batch up to its grid size, and no batch size or length compiles a new kernel.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from disagmoe.block_manager.staging import HEADER
from disagmoe.metadata import PAD_BLOCK_ID, MetadataBuffer


@triton.jit
def _update_block_table_kernel(staged_ptr, free_pages_ptr, req_to_token_ptr, r2t_row_stride,
                               stride, HEADER_WORDS: tl.constexpr, PAGE_SIZE: tl.constexpr,
                               BLOCK: tl.constexpr):
    i = tl.program_id(0)
    batch_size = tl.load(staged_ptr)
    height = tl.load(staged_ptr + 1)
    valid = i < batch_size
    args = staged_ptr + HEADER_WORDS
    row = tl.load(args + i, mask=valid, other=0)
    old = tl.load(args + stride + i, mask=valid, other=0)
    new = tl.load(args + 2 * stride + i, mask=valid, other=0)
    offset = tl.load(args + 3 * stride + i, mask=valid, other=0)
    first_new = (old + PAGE_SIZE - 1) // PAGE_SIZE
    row_ptr = req_to_token_ptr + row.to(tl.int64) * r2t_row_stride
    for start in range(old, new, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        mask = pos < new
        page_idx = pos // PAGE_SIZE
        is_new = page_idx >= first_new
        rank = offset + page_idx - first_new  # among the pages this step takes
        new_page = tl.load(free_pages_ptr + (height - 1 - rank), mask=mask & is_new, other=0)
        old_first = tl.load(row_ptr + page_idx * PAGE_SIZE, mask=mask & (page_idx < first_new),
                            other=0)
        page = tl.where(is_new, new_page, old_first // PAGE_SIZE)
        tl.store(row_ptr + pos, page * PAGE_SIZE + pos % PAGE_SIZE, mask=mask)


@triton.jit
def _pack_flash_attn_metadata_kernel(staged_ptr, req_to_token_ptr, r2t_row_stride, out32_ptr,
                                     out64_ptr, stride, HEADER_WORDS: tl.constexpr,
                                     PAGE_SIZE: tl.constexpr, PAD: tl.constexpr,
                                     BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr):
    # Programs (i, j): entry i; its block-table columns and slots are shared out
    # among the j = 0 .. num_programs(1) - 1 programs of the entry, chunk by chunk.
    i = tl.program_id(0)
    j = tl.program_id(1)
    parts = tl.num_programs(1)
    batch_size = tl.load(staged_ptr)
    width = tl.load(staged_ptr + 1)
    slot_off = tl.load(staged_ptr + 2)  # int64 words
    seq_off = tl.load(staged_ptr + 3)  # int32 words from here on
    ctx_off = tl.load(staged_ptr + 4)
    qsl_off = tl.load(staged_ptr + 5)
    ssl_off = tl.load(staged_ptr + 6)
    bt_off = tl.load(staged_ptr + 7)
    valid = i < batch_size
    args = staged_ptr + HEADER_WORDS

    row = tl.load(args + i, mask=valid, other=0)
    seq = tl.load(args + stride + i, mask=valid, other=0)
    query = tl.load(args + 2 * stride + i, mask=valid, other=0)
    q_start = tl.load(args + 3 * stride + i, mask=valid, other=0)
    s_start = tl.load(args + 4 * stride + i, mask=valid, other=0)
    context = seq - query
    first = valid & (j == 0)
    tl.store(out32_ptr + seq_off + i, seq, mask=first)
    tl.store(out32_ptr + ctx_off + i, context, mask=first)
    tl.store(out32_ptr + qsl_off + i, q_start, mask=first)
    tl.store(out32_ptr + ssl_off + i, s_start, mask=first)
    last = first & (i == batch_size - 1)
    tl.store(out32_ptr + qsl_off + batch_size, q_start + query, mask=last)
    tl.store(out32_ptr + ssl_off + batch_size, s_start + seq, mask=last)

    row_ptr = req_to_token_ptr + row.to(tl.int64) * r2t_row_stride
    num_pages = (seq + PAGE_SIZE - 1) // PAGE_SIZE
    table_row = out32_ptr + bt_off + i * width
    for c in range(j * BLOCK_W, tl.where(valid, width, 0), parts * BLOCK_W):
        cols = c + tl.arange(0, BLOCK_W)
        owned = cols < num_pages
        page_first = tl.load(row_ptr + cols * PAGE_SIZE, mask=owned, other=0)
        tl.store(table_row + cols, tl.where(owned, page_first // PAGE_SIZE, PAD), mask=cols < width)
    for t in range(j * BLOCK_T, query, parts * BLOCK_T):
        ts = t + tl.arange(0, BLOCK_T)
        mask = ts < query
        slots = tl.load(row_ptr + context + ts, mask=mask, other=0)
        tl.store(out64_ptr + slot_off + q_start + ts, slots.to(tl.int64), mask=mask)


@dataclasses.dataclass(frozen=True)
class PackLaunch:
    """How the pack kernel is launched: `parts` programs per batch entry, each
    taking every parts-th chunk of `block_w` block-table columns (and of
    `block_t` slots), with `num_warps` warps a program.

    The default was chosen with scripts/pack_sweep.py on an H100 (docs/performance.md):
    four programs an entry cut one replay of the pack's graph from about 11 to 9 us
    (grid mean) against one program looping over 128-column chunks; wider chunks or
    more warps did as well, within the machine's noise."""

    block_w: int = 128
    block_t: int = 128
    parts: int = 4
    num_warps: int = 4


def update_block_table(staged: torch.Tensor, stride: int, grid: int, free_pages: torch.Tensor,
                       req_to_token: torch.Tensor, page_size: int) -> None:
    """As kernels_torch.update_block_table, for up to `grid` entries (the header says how many)."""
    _update_block_table_kernel[(grid,)](
        staged, free_pages, req_to_token, req_to_token.stride(0), stride,
        HEADER_WORDS=HEADER, PAGE_SIZE=page_size, BLOCK=256)


def pack_flash_attn_metadata(staged: torch.Tensor, stride: int, buffer: MetadataBuffer,
                             req_to_token: torch.Tensor, page_size: int, grid: int,
                             launch: PackLaunch = PackLaunch()) -> None:
    """As kernels_torch.pack_flash_attn_metadata, for up to `grid` entries, reading
    shapes and offsets from the header."""
    _pack_flash_attn_metadata_kernel[(grid, launch.parts)](
        staged, req_to_token, req_to_token.stride(0), buffer.int32, buffer.int64, stride,
        HEADER_WORDS=HEADER, PAGE_SIZE=page_size, PAD=PAD_BLOCK_ID, BLOCK_W=launch.block_w,
        BLOCK_T=launch.block_t, num_warps=launch.num_warps)

"""The device-table designs' step kernels as plain torch operations.

They compute what `kernels_triton.py` computes, on any device (torch's CPU device
included), and never read the device back: every size and offset comes from `host`, the
staged words on the host (the same words as `staged`, which the operations read).
"""

from __future__ import annotations

import numpy as np
import torch

from disagmoe import _C
from disagmoe.block_manager import layout as L
from disagmoe.metadata import PAD_BLOCK_ID


def _columns(
    staged: torch.Tensor, host: np.ndarray, at_word: int, stride_word: int, count: int, n: int
) -> list[torch.Tensor]:
    at, stride = int(host[at_word]), int(host[stride_word])
    return [staged[at + k * stride : at + k * stride + count].long() for k in range(n)]


def _host_columns(host: np.ndarray, at_word: int, stride_word: int, count: int, n: int) -> list[np.ndarray]:
    at, stride = int(host[at_word]), int(host[stride_word])
    return [host[at + k * stride : at + k * stride + count].astype(np.int64) for k in range(n)]


def _repeat(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry of each of `total` items, its rank within the entry) for per-entry counts."""
    device = counts.device
    entry = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts, output_size=total)
    firsts = torch.cumsum(counts, 0) - counts
    return entry, torch.arange(total, device=device) - firsts[entry]


def release(
    staged: torch.Tensor, host: np.ndarray, req_to_block: torch.Tensor, free_blocks: torch.Tensor, block_size: int
) -> None:
    """Pushes every released request's blocks, in order, at the staged height."""
    count = int(host[L.RELEASE_SIZE])
    (lens,) = _host_columns(host, L.RELEASE_AT, L.RELEASE_STRIDE, count, 2)[1:]
    total = int(((lens + block_size - 1) // block_size).sum())
    if total == 0:
        return
    rows, lengths = _columns(staged, host, L.RELEASE_AT, L.RELEASE_STRIDE, count, 2)
    entry, k = _repeat((lengths + block_size - 1) // block_size, total)
    height = int(host[L.RELEASE_HEIGHT])
    free_blocks[height : height + total] = req_to_block[rows[entry], k]


def update(
    staged: torch.Tensor,
    host: np.ndarray,
    req_to_block: torch.Tensor,
    free_blocks: torch.Tensor | None,
    block_source: _C.BlockSource,
    block_size: int,
) -> None:
    """Writes each planned entry's new blocks into its row: the m-th block the step adds is
    free_blocks[height - 1 - m] (DEVICE_STACK) or the m-th staged block id (HOST_BOOKS)."""
    count = int(host[L.UPDATE_SIZE])
    _, old_h, new_h, _ = _host_columns(host, L.PLAN_AT, L.PLAN_STRIDE, count, 4)
    total = int(((new_h + block_size - 1) // block_size - (old_h + block_size - 1) // block_size).sum())
    if total == 0:
        return
    rows, old, new, offsets = _columns(staged, host, L.PLAN_AT, L.PLAN_STRIDE, count, 4)
    first_new = (old + block_size - 1) // block_size
    added = (new + block_size - 1) // block_size - first_new
    entry, k = _repeat(added, total)
    rank = offsets[entry] + k
    if block_source == L.DEVICE_STACK:
        assert free_blocks is not None
        blocks = free_blocks[int(host[L.HEIGHT]) - 1 - rank]
    else:
        blocks = staged[int(host[L.IDS_AT]) :][rank]
    req_to_block[rows[entry], first_new[entry] + k] = blocks


def moves(
    host: np.ndarray,
    size_word: int,
    at_word: int,
    req_to_block: torch.Tensor,
    free_blocks: torch.Tensor,
    entry_block: torch.Tensor,
) -> None:
    """The prefix cache's moves of one region (layout.MOVE_*), from the host's copy of the
    words (the same as the device's; no op of a region reads what another writes)."""
    count = int(host[size_word])
    if count == 0:
        return
    at = int(host[at_word])
    words = host[at : at + L.MOVE_WORDS * count].reshape(count, L.MOVE_WORDS).astype(np.int64)
    device = req_to_block.device

    def column(op: int, k: int) -> torch.Tensor:
        return torch.from_numpy(words[words[:, 0] == op, k].copy()).to(device)

    if (words[:, 0] == L.MOVE_PUSH_ROW).any():
        free_blocks[column(L.MOVE_PUSH_ROW, 1)] = req_to_block[column(L.MOVE_PUSH_ROW, 2), column(L.MOVE_PUSH_ROW, 3)]
    if (words[:, 0] == L.MOVE_MATCH).any():
        req_to_block[column(L.MOVE_MATCH, 1), column(L.MOVE_MATCH, 2)] = entry_block[column(L.MOVE_MATCH, 3)]
    if (words[:, 0] == L.MOVE_PUSH_ENTRY).any():
        free_blocks[column(L.MOVE_PUSH_ENTRY, 1)] = entry_block[column(L.MOVE_PUSH_ENTRY, 3)]
    if (words[:, 0] == L.MOVE_INDEX).any():
        entry_block[column(L.MOVE_INDEX, 3)] = req_to_block[column(L.MOVE_INDEX, 1), column(L.MOVE_INDEX, 2)]


def pack(staged: torch.Tensor, host: np.ndarray, req_to_block: torch.Tensor, block_size: int, views: tuple) -> None:
    """Fills the metadata views (seq_lens, context_lens, query_start_loc, seq_start_loc,
    block_tables, slot_mapping) from the staged lookup."""
    seq_lens, context_lens, query_start_loc, seq_start_loc, block_tables, slots = views
    query_start_loc[:1].zero_()
    seq_start_loc[:1].zero_()
    count, width, num_tokens = (int(host[w]) for w in (L.PACK_SIZE, L.WIDTH, L.NUM_TOKENS))
    if count == 0:
        return
    rows, seq, query, starts, seq_starts = _columns(staged, host, L.LOOKUP_AT, L.LOOKUP_STRIDE, count, 5)
    context = seq - query
    seq_lens.copy_(seq)
    context_lens.copy_(context)
    query_start_loc[:-1].copy_(starts)
    query_start_loc[-1:].copy_(starts[-1:] + query[-1:])
    seq_start_loc[:-1].copy_(seq_starts)
    seq_start_loc[-1:].copy_(seq_starts[-1:] + seq[-1:])
    cols = torch.arange(width, device=req_to_block.device)
    num_blocks = (seq + block_size - 1) // block_size
    blocks = req_to_block[rows[:, None], cols.clamp(max=req_to_block.shape[1] - 1)[None, :]]
    block_tables.copy_(torch.where(cols[None, :] < num_blocks[:, None], blocks, PAD_BLOCK_ID))
    entry, k = _repeat(query, num_tokens)
    pos = context[entry] + k
    slots.copy_(req_to_block[rows[entry], pos // block_size].long() * block_size + pos % block_size)


def launch(
    staged: torch.Tensor,
    host: np.ndarray,
    flags: int,
    req_to_block: torch.Tensor,
    free_blocks: torch.Tensor | None,
    block_source: _C.BlockSource,
    block_size: int,
    views: tuple | None,
    entry_block: torch.Tensor | None = None,
) -> None:
    """The operations of `flags` (layout.RELEASE | UPDATE | PACK | PREFIX), in order:
    release, the moves before the update (PREFIX), update, pack, the moves after it."""
    if flags & L.RELEASE:
        assert free_blocks is not None  # only a step from the device stack stages releases
        release(staged, host, req_to_block, free_blocks, block_size)
    if flags & L.PREFIX:
        assert free_blocks is not None and entry_block is not None  # the gpu design's alone
        moves(host, L.PRE_SIZE, L.PRE_AT, req_to_block, free_blocks, entry_block)
    if flags & L.UPDATE:
        update(staged, host, req_to_block, free_blocks, block_source, block_size)
    if flags & L.PACK:
        assert views is not None
        pack(staged, host, req_to_block, block_size, views)
    if flags & L.PREFIX:
        moves(host, L.POST_SIZE, L.POST_AT, req_to_block, free_blocks, entry_block)  # type: ignore[arg-type]

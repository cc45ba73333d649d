"""The device-table backends' step kernels as plain torch operations.

They compute what `kernels_triton.py` computes, on any device (torch's CPU device
included), and never read the device back: every shape comes from `host`, the staged
buffer's host copy (the same words as `staged`, which the operations read).
"""

from __future__ import annotations

import numpy as np
import torch

from disagmoe.block_manager import layout as L
from disagmoe.metadata import PAD_BLOCK_ID


def _column(staged: torch.Tensor, start: int, k: int, stride: int, count: int) -> torch.Tensor:
    first = start + k * stride
    return staged[first:first + count].long()


def _host_column(host: np.ndarray, start: int, k: int, stride: int, count: int) -> np.ndarray:
    first = start + k * stride
    return host[first:first + count].astype(np.int64)


def _repeat(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry of each of `total` items, its rank within the entry) for per-entry counts."""
    device = counts.device
    entry = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts, output_size=total)
    firsts = torch.cumsum(counts, 0) - counts
    return entry, torch.arange(total, device=device) - firsts[entry]


def release(staged: torch.Tensor, host: np.ndarray, stride: int, req_to_page: torch.Tensor,
            free_pages: torch.Tensor, page_size: int) -> None:
    """Pushes every released request's pages, in order, at the staged height."""
    count = int(host[L.RELEASE_SIZE])
    start = L.release_start(stride)
    lens = _host_column(host, start, L.RELEASE_LENS, stride, count)
    total = int(((lens + page_size - 1) // page_size).sum())
    if total == 0:
        return
    rows = _column(staged, start, L.RELEASE_ROWS, stride, count)
    pages = (_column(staged, start, L.RELEASE_LENS, stride, count) + page_size - 1) // page_size
    entry, k = _repeat(pages, total)
    height = int(host[L.RELEASE_HEIGHT])
    free_pages[height:height + total] = req_to_page[rows[entry], k]


def update(staged: torch.Tensor, host: np.ndarray, stride: int, req_to_page: torch.Tensor,
           free_pages: torch.Tensor | None, page_size: int, page_ids: torch.Tensor | None = None) -> None:
    """Writes each planned entry's new pages into its row: the m-th page the step adds is
    free_pages[height - 1 - m] (gpu) or page_ids[m] (hybrid; default: the staged ids)."""
    count = int(host[L.UPDATE_SIZE])
    old_h = _host_column(host, L.plan_start(stride), L.PLAN_OLD_LENS, stride, count)
    new_h = _host_column(host, L.plan_start(stride), L.PLAN_NEW_LENS, stride, count)
    total = int(((new_h + page_size - 1) // page_size - (old_h + page_size - 1) // page_size).sum())
    if total == 0:
        return
    rows, old, new, offsets = (_column(staged, L.plan_start(stride), k, stride, count) for k in
                               (L.PLAN_ROWS, L.PLAN_OLD_LENS, L.PLAN_NEW_LENS, L.PLAN_PAGE_OFFSETS))
    first_new = (old + page_size - 1) // page_size
    added = (new + page_size - 1) // page_size - first_new
    entry, k = _repeat(added, total)
    rank = offsets[entry] + k
    if free_pages is not None:
        pages = free_pages[int(host[L.HEIGHT]) - 1 - rank]
    else:
        pages = (staged[L.page_ids_start(stride):] if page_ids is None else page_ids)[rank]
    req_to_page[rows[entry], first_new[entry] + k] = pages


def pack(staged: torch.Tensor, host: np.ndarray, stride: int, req_to_page: torch.Tensor, page_size: int,
         views: tuple) -> None:
    """Fills the metadata views (seq_lens, context_lens, query_start_loc, seq_start_loc,
    block_tables, slot_mapping) from the staged lookup."""
    seq_lens, context_lens, query_start_loc, seq_start_loc, block_tables, slots = views
    query_start_loc[:1].zero_()
    seq_start_loc[:1].zero_()
    count, width, num_tokens = (int(host[w]) for w in (L.PACK_SIZE, L.WIDTH, L.NUM_TOKENS))
    if count == 0:
        return
    start = L.LOOKUP
    rows, seq, query, starts, seq_starts = (_column(staged, start, k, stride, count) for k in
                                            (L.LOOKUP_ROWS, L.LOOKUP_SEQ_LENS, L.LOOKUP_QUERY_LENS,
                                             L.LOOKUP_QUERY_STARTS, L.LOOKUP_SEQ_STARTS))
    context = seq - query
    seq_lens.copy_(seq)
    context_lens.copy_(context)
    query_start_loc[:-1].copy_(starts)
    query_start_loc[-1:].copy_(starts[-1:] + query[-1:])
    seq_start_loc[:-1].copy_(seq_starts)
    seq_start_loc[-1:].copy_(seq_starts[-1:] + seq[-1:])
    cols = torch.arange(width, device=req_to_page.device)
    num_pages = (seq + page_size - 1) // page_size
    pages = req_to_page[rows[:, None], cols.clamp(max=req_to_page.shape[1] - 1)[None, :]]
    block_tables.copy_(torch.where(cols[None, :] < num_pages[:, None], pages, PAD_BLOCK_ID))
    entry, k = _repeat(query, num_tokens)
    pos = context[entry] + k
    slots.copy_(req_to_page[rows[entry], pos // page_size].long() * page_size + pos % page_size)

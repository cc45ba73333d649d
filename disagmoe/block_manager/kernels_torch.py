"""The `gpu` backend's step kernels as plain torch operations.

They run on any device (torch's CPU device included) and never read the
device back: every shape comes from host integers. The Triton kernels in
`kernels_triton.py` compute the same thing in one launch each.
"""

from __future__ import annotations

import numpy as np
import torch

from disagmoe.block_manager.staging import HEADER
from disagmoe.metadata import PAD_BLOCK_ID


def _column(staged: torch.Tensor, stride: int, k: int, batch_size: int) -> torch.Tensor:
    start = HEADER + k * stride
    return staged[start:start + batch_size].long()


def update_block_table(staged: torch.Tensor, host: np.ndarray, stride: int, batch_size: int,
                       free_pages: torch.Tensor, req_to_token: torch.Tensor, page_size: int) -> None:
    """Writes req_to_token[row, old:new] for every entry of the staged plan.

    Plan columns: rows, old lengths, new lengths, page offsets; header: [B, stack height].
    """
    args = host[HEADER:]
    num_tokens = int(args[2 * stride:2 * stride + batch_size].sum(dtype=np.int64)
                     - args[stride:stride + batch_size].sum(dtype=np.int64))
    if num_tokens == 0:
        return
    device = req_to_token.device
    rows, old, new, offsets = (_column(staged, stride, k, batch_size) for k in range(4))
    added = new - old
    entry = torch.repeat_interleave(torch.arange(batch_size, device=device), added,
                                    output_size=num_tokens)
    firsts = torch.cumsum(added, 0) - added
    pos = old[entry] + torch.arange(num_tokens, device=device) - firsts[entry]
    page_idx = pos // page_size
    first_new = ((old + page_size - 1) // page_size)[entry]
    rank = offsets[entry] + page_idx - first_new  # among the pages this step takes
    stack = (int(host[1]) - 1 - rank).clamp(0, free_pages.numel() - 1)
    row_of_token = rows[entry]
    old_page = req_to_token[row_of_token, page_idx * page_size].long() // page_size
    page = torch.where(page_idx >= first_new, free_pages[stack].long(), old_page)
    req_to_token[row_of_token, pos] = (page * page_size + pos % page_size).int()


def pack_flash_attn_metadata(staged: torch.Tensor, stride: int, batch_size: int, width: int,
                             num_tokens: int, req_to_token: torch.Tensor, page_size: int,
                             views: tuple) -> None:
    """Fills the metadata views from the staged lookup (rows, lengths, query
    lengths, and the exclusive prefix sums of both)."""
    _, slots, seq_lens, context_lens, query_start_loc, seq_start_loc, block_tables, _ = views
    query_start_loc[:1].zero_()
    seq_start_loc[:1].zero_()
    if batch_size == 0:
        return
    device = req_to_token.device
    rows, seq, query, starts, seq_starts = (_column(staged, stride, k, batch_size) for k in range(5))
    context = seq - query
    seq_lens.copy_(seq)
    context_lens.copy_(context)
    query_start_loc[:-1].copy_(starts)
    query_start_loc[-1:].copy_(starts[-1:] + query[-1:])
    seq_start_loc[:-1].copy_(seq_starts)
    seq_start_loc[-1:].copy_(seq_starts[-1:] + seq[-1:])
    cols = torch.arange(width, device=device)
    first_slots = (cols * page_size).clamp(max=req_to_token.shape[1] - 1)
    pages = req_to_token[rows[:, None], first_slots[None, :]] // page_size
    num_pages = (seq + page_size - 1) // page_size
    block_tables.copy_(torch.where(cols[None, :] < num_pages[:, None], pages, PAD_BLOCK_ID))
    entry = torch.repeat_interleave(torch.arange(batch_size, device=device), query,
                                    output_size=num_tokens)
    pos = context[entry] + torch.arange(num_tokens, device=device) - starts[entry]
    slots.copy_(req_to_token[rows[entry], pos])

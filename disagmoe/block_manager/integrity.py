"""Invariant checks of the `gpu` backend's device state against its host books."""

from __future__ import annotations

import numpy as np


def check_paged_state(manager) -> None:
    """Raises AssertionError unless every page is free or owned exactly once,
    each request's slots are page-aligned and consistent, and the host books
    (rows, lengths, free count) agree with the device tables."""
    books = manager._books
    allocator = manager.allocator
    page_size = manager.block_size
    name = type(manager).__name__
    if books.num_reqs + books.num_free_rows != books.max_reqs:
        raise AssertionError(f"{name}: {books.num_reqs} live + {books.num_free_rows} free request "
                             f"rows != {books.max_reqs}")
    free = allocator.free_pages[:allocator.num_free_pages].cpu().numpy().astype(np.int64)
    table = manager.req_to_token_pool.req_to_token.cpu().numpy()
    owned = []
    for req_id in books.req_ids():
        row, seq_len = books.row_of(req_id), books.seq_len(req_id)
        slots = table[row, :seq_len].astype(np.int64)
        pos = np.arange(seq_len)
        pages = slots // page_size
        if (slots < 0).any() or (slots >= allocator.num_pages * page_size).any():
            raise AssertionError(f"{name}: request {req_id} holds a slot outside the pool: {slots.tolist()}")
        if (slots % page_size != pos % page_size).any() or (pages != pages[pos - pos % page_size]).any():
            raise AssertionError(f"{name}: request {req_id}'s slots do not follow its pages: {slots.tolist()}")
        owned.append(pages[::page_size])
    everything = np.concatenate([free, *owned]) if owned else free
    if (everything < 0).any() or (everything >= allocator.num_pages).any():
        raise AssertionError(f"{name}: a page id is outside [0, {allocator.num_pages})")
    counts = np.bincount(everything, minlength=allocator.num_pages)
    if (counts > 1).any():
        raise AssertionError(f"{name}: pages {np.flatnonzero(counts > 1).tolist()} are held twice")
    if everything.size != allocator.num_pages:
        raise AssertionError(f"{name}: {everything.size - free.size} owned + {free.size} free pages "
                             f"!= {allocator.num_pages}")

"""Invariant checks of a device-table backend's device state against its host books."""

from __future__ import annotations

import numpy as np


def check_pages(name: str, owned: dict[int, np.ndarray], free: np.ndarray, num_pages: int) -> None:
    """Raises AssertionError unless every page of [0, num_pages) is free or owned (by the
    request ids of `owned`, their pages in position order) exactly once."""
    everything = np.concatenate([free.astype(np.int64), *owned.values()]) if owned else free.astype(np.int64)
    if (everything < 0).any() or (everything >= num_pages).any():
        bad = {r: p.tolist() for r, p in owned.items() if (p < 0).any() or (p >= num_pages).any()}
        raise AssertionError(f"{name}: a page id is outside [0, {num_pages}): requests {bad}")
    counts = np.bincount(everything, minlength=num_pages)
    if (counts > 1).any():
        raise AssertionError(f"{name}: pages {np.flatnonzero(counts > 1).tolist()} are held twice")
    if everything.size != num_pages:
        raise AssertionError(f"{name}: {everything.size - free.size} owned + {free.size} free pages "
                             f"!= {num_pages}")


def check_paged_state(manager) -> None:
    """The gpu backend: every page free (on the device stack) or owned exactly once (in the
    page table rows of the host books' requests), and the request rows add up."""
    books = manager.req_to_token_pool.books
    allocator = manager.allocator
    name = type(manager).__name__
    if books.num_reqs + books.num_free_rows != books.max_reqs:
        raise AssertionError(f"{name}: {books.num_reqs} live + {books.num_free_rows} free request "
                             f"rows != {books.max_reqs}")
    free = allocator.free_pages[:allocator.num_free_pages].cpu().numpy()
    table = manager.req_to_page.cpu().numpy()
    owned = {req_id: table[books.row_of(req_id), :-(-books.seq_len(req_id) // allocator.page_size)]
             .astype(np.int64) for req_id in books.req_ids()}
    check_pages(name, owned, free, allocator.num_pages)

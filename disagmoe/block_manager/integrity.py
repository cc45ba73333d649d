"""The invariant of a pool of pages: each one free or owned, exactly once."""

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
        raise AssertionError(f"{name}: {everything.size - free.size} owned + {free.size} free pages != {num_pages}")

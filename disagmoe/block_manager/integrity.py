"""The invariant of a pool of blocks: each one free or owned, exactly once."""

from __future__ import annotations

import numpy as np


def check_blocks(name: str, owned: dict[int, np.ndarray], free: np.ndarray, num_blocks: int) -> None:
    """Raises AssertionError unless every block of [0, num_blocks) is free or owned (by the
    request ids of `owned`, their blocks in position order) exactly once."""
    everything = np.concatenate([free.astype(np.int64), *owned.values()]) if owned else free.astype(np.int64)
    if (everything < 0).any() or (everything >= num_blocks).any():
        bad = {r: p.tolist() for r, p in owned.items() if (p < 0).any() or (p >= num_blocks).any()}
        raise AssertionError(f"{name}: a block id is outside [0, {num_blocks}): requests {bad}")
    counts = np.bincount(everything, minlength=num_blocks)
    if (counts > 1).any():
        raise AssertionError(f"{name}: blocks {np.flatnonzero(counts > 1).tolist()} are held twice")
    if everything.size != num_blocks:
        raise AssertionError(f"{name}: {everything.size - free.size} owned + {free.size} free blocks != {num_blocks}")

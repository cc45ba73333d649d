"""The `gpu` design: block tables and free blocks resident on the device, SGLang style.

The C++ request books (`_C.RequestTable`) check each batch and mirror every length on
the host, so shapes never need a device read; the free blocks are a stack on the device,
whose height the native step mirrors. A first-layer update takes its blocks from the top
of that stack, a release pushes the blocks back, both in kernels that the next pack
launches with its own (`device_tables`: the step path it shares with `hybrid`).

The prefix cache's index lives on the host (SGLang's split: csrc/device_step.h, a
`PrefixCache` over entry ids), each entry's block on the device (`entry_block`). A match,
an eviction, a release of a row holding cached blocks and a block that fills under a hash
stage moves (layout.MOVE_*) that a kernel runs before the update (matches, pushes) and
after the pack (indexing): the host never learns a block id.
"""

from __future__ import annotations

import numpy as np
import torch

from disagmoe import _C
from disagmoe.block_manager.base import PrefixCacheStats
from disagmoe.block_manager.device_tables import KERNELS, DeviceTableManager
from disagmoe.block_manager.integrity import check_blocks

__all__ = ["GPUBlockManager", "KERNELS"]


class GPUBlockManager(DeviceTableManager):
    """`kernels`, `cuda_graphs`, `pack_launch` and `req_to_block`: see `DeviceTableManager`.
    `free_blocks` is the device's stack of free blocks (the m-th block an update takes is
    the m-th from its top)."""

    default_block_size = 16
    free_blocks: torch.Tensor
    _books: _C.RequestTable

    def _make_books(self) -> _C.RequestTable:
        """Request books alone: the step's new blocks come from the device's free stack."""
        self._books = _C.RequestTable(self.max_running_reqs, self.max_seq_len, self.block_size)
        return self._books

    def _match_prefix(self, req_id: object, block_hashes: object) -> int:
        return self._step.match_prefix(req_id, block_hashes, self._stream())  # type: ignore[arg-type]

    def _prefix_cache_stats(self) -> tuple[int, int, int, int, int]:
        return self._step.prefix_cache_stats()

    def num_free_slots(self) -> int:
        return self._step.num_free_blocks * self.block_size

    def _block_ids(self, req_id: int, num_blocks: int) -> list[int]:
        row = self._books.row_of(req_id)
        self._flush()  # a read: allowed while another call reads its arguments
        return self.req_to_block[row, :num_blocks].tolist()

    def _check_integrity(self) -> None:
        """Every block free (on the device stack) or owned exactly once (in the block table
        rows of the books' requests), and the request rows add up."""
        books, name = self._books, type(self).__name__
        if books.num_reqs + books.num_free_rows != books.max_reqs:
            raise AssertionError(
                f"{name}: {books.num_reqs} live + {books.num_free_rows} free request rows != {books.max_reqs}"
            )
        problem = self._step.check_prefix()
        if problem:
            raise AssertionError(f"{name}: {problem}")
        table = self._device_rows()
        indexed = self._step.indexed_entries()
        entry_block = self.entry_block.cpu().numpy()  # type: ignore[union-attr]
        height = self._step.num_free_blocks - PrefixCacheStats(*self._prefix_cache_stats()).evictable_blocks
        free = self.free_blocks[:height].cpu().numpy()
        owned = {}  # each request's own blocks; the cache's, once each under its entry
        for req_id in books.req_ids():
            blocks = table[books.row_of(req_id), : -(-books.seq_len(req_id) // self.block_size)]
            entries = np.array(self._step.cached_entries(req_id), dtype=np.int64)
            shared = entries >= 0
            if (blocks[shared] != entry_block[entries[shared]]).any():
                raise AssertionError(f"{name}: request {req_id}'s row {blocks.tolist()} != its cached blocks")
            owned[req_id] = blocks[~shared].astype(np.int64)
        owned[2**64] = entry_block[np.array(indexed, dtype=np.int64)].astype(np.int64)  # (no request's id)
        check_blocks(name, owned, free, self.num_blocks)

"""The `gpu` design: block tables and free blocks resident on the device, SGLang style.

The C++ request books (`_C.RequestTable`) check each batch and mirror every length on
the host, so shapes never need a device read; the free blocks are a stack on the device,
whose height the native step mirrors. A first-layer update takes its blocks from the top
of that stack, a release pushes the blocks back, both in kernels that the next pack
launches with its own (`device_tables`: the step path it shares with `hybrid`).
"""

from __future__ import annotations

import torch

from disagmoe import _C
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
        raise NotImplementedError(
            "GPUBlockManager.match_prefix: the gpu design has no prefix cache yet (its index on the host "
            "and the blocks on the device are not built); use the cpu or hybrid design for shared prefixes"
        )

    def _prefix_cache_stats(self) -> tuple[int, int, int, int, int]:
        return (0, 0, 0, 0, 0)  # never given hashes: nothing cached

    def num_free_slots(self) -> int:
        return self._step.num_free_blocks * self.block_size

    def _block_ids(self, req_id: int, num_blocks: int) -> list[int]:
        row = self._books.row_of(req_id)
        self._flush()  # a read: allowed while another call reads its arguments
        return self.req_to_block[row, :num_blocks].tolist()

    def check_integrity(self) -> None:
        """Every block free (on the device stack) or owned exactly once (in the block table
        rows of the books' requests), and the request rows add up."""
        books, name = self._books, type(self).__name__
        if books.num_reqs + books.num_free_rows != books.max_reqs:
            raise AssertionError(
                f"{name}: {books.num_reqs} live + {books.num_free_rows} free request rows != {books.max_reqs}"
            )
        table = self._device_rows()
        free = self.free_blocks[: self._step.num_free_blocks].cpu().numpy()
        owned = {
            req_id: table[books.row_of(req_id), : -(-books.seq_len(req_id) // self.block_size)]
            for req_id in books.req_ids()
        }
        check_blocks(name, owned, free, self.num_blocks)

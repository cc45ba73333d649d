"""The `hybrid` backend: the host decides, the device keeps the tables.

The C++ core (`_C.BlockManager`, as the `cpu` backend uses it) checks every batch,
allocates blocks from its host free list and keeps the lengths, so no device state is
needed to decide anything. The block tables live on the device (`req_to_page`, one row
per request row), and each first-layer update sends only what changed: per entry its
row, old and new length and where its new block ids start, and those ids; a kernel
writes them into the rows before the pack builds the metadata from the device table
(`device_tables`: the step path it shares with `gpu`). A step's device work grows with
the blocks it adds, not with batch x context; a release is host work alone (a row's
stale entries are never read: the pack reads a row's first blocks, which the updates
since its request arrived have written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from disagmoe import _C
from disagmoe.block_manager.base import MemoryFootprint
from disagmoe.block_manager.buffers import empty_int32
from disagmoe.block_manager.core_books import CoreBooks
from disagmoe.block_manager.device_tables import DeviceTableManager
from disagmoe.config import CacheConfig, ModelConfig

if TYPE_CHECKING:
    from disagmoe.block_manager.kernels_triton import PackLaunch


class HybridBlockManager(CoreBooks, DeviceTableManager):
    """`kernels`, `cuda_graphs` and `pack_launch` as for `GPUBlockManager`."""

    backend = "hybrid"
    default_block_size = 16
    host_allocates = True

    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        max_running_reqs: int,
        device: torch.device | str | None = None,
        kernels: str = "auto",
        cuda_graphs: bool = True,
        pack_launch: PackLaunch | None = None,
    ) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device, kernels, cuda_graphs, pack_launch)
        self._core = _C.BlockManager(self.block_size, self.num_blocks, self.max_seq_len, self.max_running_reqs)
        self.req_to_page = empty_int32(
            "HybridBlockManager",
            (self.max_running_reqs, self.max_width),
            f"the device block table of {self.max_running_reqs} x {self.max_width} blocks",
            self.device,
        ).zero_()
        self.free_pages = None
        self._start(self._core)

    def _reset(self) -> None:
        self._step.reset(self._stream())

    def check_integrity(self) -> None:
        self._check_core()
        table = self._device_rows()
        for req_id in self._core.req_ids():
            blocks = list(self._core.block_ids(req_id))
            row = table[self._core.row_of(req_id), : len(blocks)].tolist()
            if row != blocks:
                raise AssertionError(
                    f"HybridBlockManager: request {req_id}'s device row {row} != its host blocks {blocks}"
                )

    def memory_footprint(self) -> MemoryFootprint:
        host = self._core_bytes() + (self._staging_bytes() if self.device.type == "cuda" else 0)
        device = self._device_bytes() + (0 if self.device.type == "cuda" else self._staging_bytes())
        return MemoryFootprint(device_bytes=device, host_bytes=host)

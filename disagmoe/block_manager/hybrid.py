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

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from disagmoe import _C
from disagmoe.batch import BatchMetadata
from disagmoe.block_manager import layout as L
from disagmoe.block_manager.base import MemoryFootprint
from disagmoe.block_manager.core_books import CoreBooks
from disagmoe.block_manager.device_tables import DeviceTableManager
from disagmoe.block_manager.mem_pool import empty_int32
from disagmoe.block_manager.staging import DeviceDone
from disagmoe.config import CacheConfig, ModelConfig

if TYPE_CHECKING:
    from disagmoe.block_manager.kernels_triton import PackLaunch


class HybridBlockManager(CoreBooks, DeviceTableManager):
    """`kernels`, `cuda_graphs`, `zero_copy` and `pack_launch` as for `GPUBlockManager`."""

    backend = "hybrid"
    default_block_size = 16

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 max_running_reqs: int, device: torch.device | str | None = None,
                 kernels: str = "auto", cuda_graphs: bool = True, zero_copy: bool = False,
                 pack_launch: PackLaunch | None = None) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device, kernels, cuda_graphs,
                         zero_copy, pack_launch)
        self._core = _C.BlockManager(self.block_size, self.num_blocks, self.max_seq_len, self.max_running_reqs)
        self.req_to_page = empty_int32("HybridBlockManager", (self.max_running_reqs, self.max_width),
                                       f"the device block table of {self.max_running_reqs} x {self.max_width} "
                                       "blocks", self.device).zero_()
        self._free_pages = None
        self._big: tuple[torch.Tensor, torch.Tensor] | None = None  # pinned ids and device twin, grown
        self._big_done = DeviceDone(self.device) if self.device.type == "cuda" else None
        if self.kernels == "triton":
            self._k = self._triton_kernels(self.req_to_page, None)

    def _carried_ids(self) -> int:
        # The new block ids of a decode step of every request and more; an update that
        # adds more blocks than that launches alone, from its own buffers (_big_ids).
        return max(2 * self.max_running_reqs, 4096)

    def _books_lookup(self, batch: BatchMetadata, out: np.ndarray, op: str):
        return self._core.lookup(batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens,
                                 out, self._stride, op)

    def _stage_update(self, batch: BatchMetadata) -> list[int]:
        plan_start, ids_start = L.plan_start(self._stride), L.page_ids_start(self._stride)
        big: list = []  # the buffer grow() handed out, if the step's ids did not fit

        def grow(num_pages: int) -> np.ndarray:
            big.append(self._big_ids(num_pages))
            return big[-1][0]

        def update(plan: np.ndarray):
            ids = plan[ids_start - plan_start:][:self.page_ids_capacity]
            return self._core.update_block_table_plan(batch.req_ids, batch.num_prefill_seqs,
                                                      batch.init_prefill_lens, plan, self._stride, ids, grow)

        (num_pages, seq_lens), words = self._staged_call(plan_start, update)
        if seq_lens:
            self.memo.changed()
            words[L.UPDATE_SIZE] = self._update_size = len(seq_lens)
            words[L.NUM_PAGE_IDS] = 0 if big else num_pages
            if big:  # more new blocks than a launch carries: this update launches alone
                _, host, device = big[-1]
                if self._big_done is not None:  # on CUDA: the ids go to the device
                    device[:num_pages].copy_(host[:num_pages], non_blocking=True)
                    self._big_done.record()
                self._launch(pack=False, page_ids=device)
        return seq_lens

    def _big_ids(self, num_pages: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """A pinned buffer of at least `num_pages` ids (and its device twin), free to write."""
        if self._big is None or self._big[0].numel() < num_pages:
            on_cuda = self.device.type == "cuda"
            host = torch.empty(num_pages + num_pages // 2, dtype=torch.int32, pin_memory=on_cuda)
            self._big = (host, host.to(self.device) if on_cuda else host)
        host, device = self._big
        if self._big_done is not None:
            self._big_done.wait()  # the last copy out of it has run
        return host.numpy(), host, device

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        self._core.release_seqs(self._id_list(req_ids))
        self.memo.changed()

    def _reset_books(self) -> None:
        self._core.reset_state()

    def check_integrity(self) -> None:
        problem = self._core.check_integrity()
        if problem:
            raise AssertionError(f"HybridBlockManager: {problem}")
        self.flush()
        table = self.req_to_page.cpu().numpy()
        for req_id in self._core.req_ids():
            blocks = self._core.block_ids(req_id)
            row = self._core.row_of(req_id)
            if table[row, :len(blocks)].tolist() != list(blocks):
                raise AssertionError(f"HybridBlockManager: request {req_id}'s device row "
                                     f"{table[row, :len(blocks)].tolist()} != its host blocks {list(blocks)}")

    def memory_footprint(self) -> MemoryFootprint:
        table_bytes = 4 * (self.max_running_reqs * self._core.max_blocks_per_seq + self.num_blocks)
        device = (self.req_to_page.numel() * 4 + self._out32.numel() * 4 + self._out64.numel() * 8
                  + self._ring.device_bytes)
        host = table_bytes + (self._ring.host_bytes if self.device.type == "cuda" else 0)
        return MemoryFootprint(device_bytes=device, host_bytes=host)

"""The `gpu` backend: block tables and free pages resident on the device, SGLang style.

The C++ request books (`_C.RequestTable`) check each batch and mirror every length on
the host, so shapes never need a device read; the free pages are a stack on the device
(`mem_pool`), whose height the host mirrors. A first-layer update takes its pages from
the top of that stack, a release pushes the pages back, both in kernels that the next
pack launches with its own (`device_tables`: the step path it shares with `hybrid`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from disagmoe.batch import BatchMetadata
from disagmoe.block_manager import layout as L
from disagmoe.block_manager.base import MemoryFootprint
from disagmoe.block_manager.device_tables import KERNELS, DeviceTableManager
from disagmoe.block_manager.mem_pool import PagedTokenToKVPoolAllocator, ReqToTokenPool, TokenToKVPoolAllocator
from disagmoe.config import CacheConfig, ModelConfig

if TYPE_CHECKING:
    from disagmoe.block_manager.kernels_triton import PackLaunch

__all__ = ["GPUBlockManager", "KERNELS"]


class GPUBlockManager(DeviceTableManager):
    """`kernels`: "triton" (CUDA only), "torch" (any device) or "auto" (triton
    where it can run). `cuda_graphs` replays the Triton launches (and the copy
    of their inputs) from graphs. `zero_copy` lets the Triton kernels read
    their inputs from pinned host memory instead of a device copy. `pack_launch`
    is the Triton pack kernel's launch shape (`kernels_triton.PackLaunch`; None
    takes its default); it needs the Triton kernels."""

    backend = "gpu"
    default_block_size = 16

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 max_running_reqs: int, device: torch.device | str | None = None,
                 kernels: str = "auto", cuda_graphs: bool = True, zero_copy: bool = False,
                 pack_launch: PackLaunch | None = None) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device, kernels, cuda_graphs,
                         zero_copy, pack_launch)
        self.req_to_token_pool = ReqToTokenPool(self.max_running_reqs, self.max_seq_len,
                                                self.block_size, self.device)
        self._books = self.req_to_token_pool.books
        self.req_to_page = self.req_to_token_pool.req_to_page
        self.allocator = (TokenToKVPoolAllocator(self.num_blocks, self.device) if self.block_size == 1
                          else PagedTokenToKVPoolAllocator(self.num_blocks, self.block_size, self.device))
        self._free_pages = self.allocator.free_pages
        if self.kernels == "triton":
            self._k = self._triton_kernels(self.req_to_page, self._free_pages)

    def _books_lookup(self, batch: BatchMetadata, out: np.ndarray, op: str):
        return self._books.lookup(batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens,
                                  out, self._stride, op)

    def _stage_update(self, batch: BatchMetadata) -> list[int]:
        update = lambda plan: self._books.update_block_table(  # noqa: E731
            batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens, self.allocator.num_free_pages,
            plan, self._stride)
        (num_pages, seq_lens), words = self._staged_call(L.plan_start(self._stride), update)
        if seq_lens:
            self.memo.changed()
            words[L.UPDATE_SIZE] = self._update_size = len(seq_lens)
            words[L.HEIGHT] = self.allocator.take(num_pages)
        return seq_lens

    # -- lifecycle and inspection ----------------------------------------------

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        if self._deferred():
            # Release runs first in a launch: an update staged before this release must
            # run before it, and two releases do not share one launch.
            self.flush()
        rows, lens = self._books.release_seqs(self._id_list(req_ids))
        if not rows:
            return
        self.memo.changed()
        words = self._words()
        start, stride = L.release_start(self._stride), self._stride
        count = len(rows)
        lengths = np.asarray(lens, dtype=np.int64)
        pages = (lengths + self.block_size - 1) // self.block_size
        words[start + L.RELEASE_ROWS * stride:][:count] = rows
        words[start + L.RELEASE_LENS * stride:][:count] = lens
        words[start + L.RELEASE_PAGE_OFFSETS * stride:][:count] = np.cumsum(pages) - pages
        words[L.RELEASE_SIZE] = self._release_size = count
        words[L.RELEASE_HEIGHT] = self.allocator.push(int(pages.sum()))

    def _reset_books(self) -> None:
        self.req_to_token_pool.clear()
        self.allocator.clear()

    def num_free_slots(self) -> int:
        return self.allocator.available_size()

    def num_running_reqs(self) -> int:
        return self._books.num_reqs

    def seq_len(self, req_id: int) -> int:
        return self._books.seq_len(req_id)

    def token_slots(self, req_id: int) -> list[int]:
        req_id = self._checked_req_id(req_id)
        seq_len = self._books.seq_len(req_id)
        row = self._books.row_of(req_id)
        self.flush()
        return self.req_to_token_pool.token_slots(row, seq_len)

    def check_integrity(self) -> None:
        from disagmoe.block_manager.integrity import check_paged_state
        self.flush()
        check_paged_state(self)

    def memory_footprint(self) -> MemoryFootprint:
        device = (self.req_to_token_pool.nbytes + self.allocator.nbytes + self._out32.numel() * 4
                  + self._out64.numel() * 8 + self._ring.device_bytes)
        host = self._ring.host_bytes if self.device.type == "cuda" else 0
        return MemoryFootprint(device_bytes=device, host_bytes=host)

"""The `gpu` backend: block tables and free pages resident on the device, SGLang style.

The C++ request books (`_C.RequestTable`) check each batch and mirror every length on
the host, so shapes never need a device read; the free pages are a stack on the device,
whose height the native step mirrors. A first-layer update takes its pages from the top
of that stack, a release pushes the pages back, both in kernels that the next pack
launches with its own (`device_tables`: the step path it shares with `hybrid`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from disagmoe import _C
from disagmoe.block_manager.base import MemoryFootprint
from disagmoe.block_manager.buffers import empty_int32
from disagmoe.block_manager.device_tables import KERNELS, DeviceTableManager
from disagmoe.block_manager.integrity import check_pages
from disagmoe.config import CacheConfig, ModelConfig

if TYPE_CHECKING:
    from disagmoe.block_manager.kernels_triton import PackLaunch

__all__ = ["GPUBlockManager", "KERNELS"]


class GPUBlockManager(DeviceTableManager):
    """`kernels`: "triton" (CUDA only), "torch" (any device) or "auto" (triton
    where it can run). `cuda_graphs` replays the Triton launches from graphs.
    `pack_launch` is the Triton pack kernel's launch shape
    (`kernels_triton.PackLaunch`; None takes its default); it needs the Triton
    kernels.

    `req_to_page[row, k]` (int32, on the device) is the page of positions
    [k * block_size, (k + 1) * block_size) of the request in `row` (SGLang's
    `req_to_token` at block size 1); `free_pages` is the device's stack of free pages
    (the m-th page an update takes is the m-th from its top)."""

    backend = "gpu"
    default_block_size = 16
    host_allocates = False
    free_pages: torch.Tensor

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
        name = type(self).__name__
        self._books = _C.RequestTable(self.max_running_reqs, self.max_seq_len, self.block_size)
        self.req_to_page = empty_int32(
            name,
            (self.max_running_reqs, self.max_width),
            f"the device page table of {self.max_running_reqs} x {self.max_width} pages",
            self.device,
        ).zero_()
        # Taking from the top hands out page 0 first, as the C++ core does.
        initial = torch.arange(self.num_blocks - 1, -1, -1, dtype=torch.int32, device=self.device)
        self.free_pages = initial.clone()
        self._start(self._books)
        self._step.set_free_stack(self.free_pages, initial)

    def _reset(self) -> None:
        self._step.reset(self._stream())

    def num_free_slots(self) -> int:
        return self._step.num_free_pages * self.block_size

    def num_running_reqs(self) -> int:
        return self._books.num_reqs

    def seq_len(self, req_id: int) -> int:
        return self._books.seq_len(req_id)

    def token_slots(self, req_id: int) -> list[int]:
        req_id = self._checked_req_id(req_id)
        seq_len = self._books.seq_len(req_id)
        row = self._books.row_of(req_id)
        self._flush()  # a read: allowed while another call reads its arguments
        pages = self.req_to_page[row, : -(-seq_len // self.block_size)].tolist()
        bs = self.block_size
        return [pages[p // bs] * bs + p % bs for p in range(seq_len)]

    def check_integrity(self) -> None:
        """Every page free (on the device stack) or owned exactly once (in the page table
        rows of the books' requests), and the request rows add up."""
        books, name = self._books, type(self).__name__
        if books.num_reqs + books.num_free_rows != books.max_reqs:
            raise AssertionError(
                f"{name}: {books.num_reqs} live + {books.num_free_rows} free request rows != {books.max_reqs}"
            )
        table = self._device_rows()
        free = self.free_pages[: self._step.num_free_pages].cpu().numpy()
        owned = {
            req_id: table[books.row_of(req_id), : -(-books.seq_len(req_id) // self.block_size)]
            for req_id in books.req_ids()
        }
        check_pages(name, owned, free, self.num_blocks)

    def memory_footprint(self) -> MemoryFootprint:
        host = self._staging_bytes() if self.device.type == "cuda" else 0
        return MemoryFootprint(
            device_bytes=self._device_bytes() + (0 if host else self._staging_bytes()), host_bytes=host
        )

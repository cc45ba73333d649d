"""The `gpu` backend: block tables resident on the device, SGLang style.

The C++ request books (`_C.RequestTable`) check each batch and mirror every
length on the host, so shapes never need a device read. Each step stages its
small per-entry integers in one pinned buffer, sends them with one
non-blocking copy, and runs one kernel per operation: Triton on CUDA, plain
torch operations elsewhere.

With Triton, a first-layer `update_block_table` is deferred: its plan waits
in the staging buffer, and the `pack_flash_attn_metadata` that follows sends
both inputs in one copy and runs both kernels, replayed from one CUDA graph
per batch-size bucket. Any other call that touches the device tables (another
update, release, inspection) launches a deferred update first, so every
observable result is as if it had run at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from disagmoe.batch import BatchMetadata
from disagmoe.block_manager import kernels_torch
from disagmoe.block_manager.base import BlockManager, MemoryFootprint
from disagmoe.block_manager.mem_pool import (PagedTokenToKVPoolAllocator, ReqToTokenPool,
                                             TokenToKVPoolAllocator)
from disagmoe.block_manager.staging import HEADER, Staging
from disagmoe.config import CacheConfig, ModelConfig
from disagmoe.metadata import FlashAttentionMetadata, MetadataBuffer
from disagmoe import _C

if TYPE_CHECKING:
    from disagmoe.block_manager.kernels_triton import PackLaunch

KERNELS = ("auto", "triton", "torch")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class GPUBlockManager(BlockManager):
    """`kernels`: "triton" (CUDA only), "torch" (any device) or "auto" (triton
    where it can run). `cuda_graphs` replays the Triton launches (and the copy
    of their inputs) from graphs. `zero_copy` lets the Triton kernels read
    their inputs from pinned host memory instead of a device copy. `pack_launch`
    is the Triton pack kernel's launch shape (`kernels_triton.PackLaunch`; None
    takes its default); it needs the Triton kernels."""

    backend = "gpu"
    default_block_size = 1

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 max_running_reqs: int, device: torch.device | str | None = None,
                 kernels: str = "auto", cuda_graphs: bool = True, zero_copy: bool = False,
                 pack_launch: PackLaunch | None = None) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device)
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r} is not one of {KERNELS}")
        on_cuda = self.device.type == "cuda"
        if kernels == "auto":
            kernels = "triton" if on_cuda and _triton_available() else "torch"
        if kernels == "triton" and not on_cuda:
            raise ValueError(f"kernels='triton' needs a CUDA device, got {self.device}")
        if pack_launch is not None and kernels != "triton":
            raise ValueError(f"pack_launch={pack_launch!r} needs kernels='triton', got kernels={kernels!r}")
        if kernels == "triton":
            from disagmoe.block_manager import kernels_triton
            if pack_launch is None:
                pack_launch = kernels_triton.PackLaunch()
            elif not isinstance(pack_launch, kernels_triton.PackLaunch):
                raise TypeError(f"pack_launch must be a kernels_triton.PackLaunch, got {pack_launch!r}")
        self.kernels = kernels
        self.cuda_graphs = cuda_graphs and kernels == "triton"
        self.req_to_token_pool = ReqToTokenPool(max_running_reqs, self.max_seq_len,
                                                self.block_size, self.device)
        self._books = self.req_to_token_pool.books
        self.allocator = (TokenToKVPoolAllocator(self.num_blocks, self.device) if self.block_size == 1
                          else PagedTokenToKVPoolAllocator(self.num_blocks, self.block_size, self.device))
        self._stride = max_running_reqs + 1
        # Region 0: update's plan; region 1: pack's lookup.
        self._staging = Staging([HEADER + 4 * self._stride, HEADER + 5 * self._stride], self.device,
                                zero_copy and kernels == "triton")
        self._plan, self._lookup = self._staging.arrays
        self._pending_update = 0  # batch size of a staged update not yet launched
        self._scratch = np.empty(5 * self._stride, dtype=np.int32)  # host-only lookups
        max_width = -(-self.max_seq_len // self.block_size)
        nbytes = _C.metadata_layout(max_running_reqs, max_width, max_running_reqs)[-1]
        self._metadata = MetadataBuffer(nbytes, self.device)
        self._headers: dict[tuple, np.ndarray] = {}
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # per bucket pair
        self._graphs_address = 0  # of the metadata buffer the graphs write
        if kernels == "triton":
            self._triton = kernels_triton
            self._pack_launch = pack_launch

    # -- the step -------------------------------------------------------------

    def update_block_table(self, batch: BatchMetadata) -> None:
        args = (batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
        if not self._is_first_layer(batch):
            _, batch.seq_lens = self._books.lookup(*args, self._scratch, self._stride,
                                                   "update_block_table")
            return
        self.flush()  # the staged plan is about to be rewritten
        self._staging.host()
        num_pages, seq_lens = self._books.update_block_table(
            *args, self.allocator.num_free_pages, self._staging.args[0], self._stride)
        batch_size = len(seq_lens)
        if batch_size:
            self._plan[0] = batch_size
            self._plan[1] = self.allocator.take(num_pages)
            if self.kernels == "triton":
                self._pending_update = batch_size
            else:
                self._staging.upload()
                kernels_torch.update_block_table(self._staging.device_views[0], self._plan, self._stride,
                                                 batch_size, self.allocator.free_pages,
                                                 self.req_to_token_pool.req_to_token, self.block_size)
                self._staging.enqueued()
        batch.seq_lens = seq_lens

    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        self._is_first_layer(batch)  # rejects an unknown layer
        self._staging.host()
        stats, seq_lens = self._books.lookup(batch.req_ids, batch.num_prefill_seqs,
                                             batch.init_prefill_lens, self._staging.args[1], self._stride,
                                             "pack_flash_attn_metadata")
        num_tokens, max_seq_len = stats[0], stats[2]
        batch_size = len(seq_lens)
        width = -(-max_seq_len // self.block_size)
        views = self._metadata.views(batch_size, width, num_tokens)
        self._lookup[:8] = self._header(views[0])
        if self.kernels == "triton" and batch_size:
            self._launch(self._pending_update, batch_size)
            self._pending_update = 0
        else:
            self.flush()
            self._staging.upload()
            kernels_torch.pack_flash_attn_metadata(self._staging.device_views[1], self._stride,
                                                   batch_size, width, num_tokens,
                                                   self.req_to_token_pool.req_to_token,
                                                   self.block_size, views)
        self._staging.enqueued()
        return FlashAttentionMetadata.from_step(batch, stats, seq_lens, views, self.block_size)

    def _header(self, layout: tuple) -> np.ndarray:
        header = self._headers.get(layout)
        if header is None:
            if len(self._headers) >= 256:  # bounded, as the metadata views
                self._headers.clear()
            batch_size, width, _, slots, seq, ctx, qsl, ssl, tables, _ = layout
            header = np.array([batch_size, width, slots // 8, seq // 4, ctx // 4, qsl // 4,
                               ssl // 4, tables // 4], dtype=np.int32)
            self._headers[layout] = header
        return header

    def synchronize(self) -> None:
        self.flush()
        super().synchronize()

    def flush(self) -> None:
        """Launches a deferred update, if any (see the module docstring)."""
        if self._pending_update:
            self._launch(self._pending_update, 0)
            self._pending_update = 0
            self._staging.enqueued()

    def _launch(self, update_size: int, pack_size: int) -> None:
        """One copy of the staged inputs, then the update and/or pack kernel
        (a size of 0 skips it); from a CUDA graph per pair of size buckets."""
        if not self.cuda_graphs:
            self._run_kernels(update_size, pack_size)
            return
        buckets = tuple(1 << max(0, n - 1).bit_length() if n else 0 for n in (update_size, pack_size))
        address = self._metadata.bytes.data_ptr()
        if address != self._graphs_address:  # the buffer grew: graphs write the old one
            self._graphs.clear()
            self._graphs_address = address
        graph = self._graphs.get(buckets)
        if graph is not None:
            graph.replay()
            return
        # This step runs eagerly (and compiles); programs past a batch's size do nothing.
        self._run_kernels(*buckets)
        graph = torch.cuda.CUDAGraph()
        # Relaxed: a garbage collection (or another thread) may free CUDA objects, such
        # as a dead manager's graphs, while this capture is under way; the default
        # mode would then invalidate the capture.
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            self._run_kernels(*buckets)
        self._graphs[buckets] = graph

    def _run_kernels(self, update_grid: int, pack_grid: int) -> None:
        self._staging.upload()
        plan, lookup = self._staging.device_views
        r2t = self.req_to_token_pool.req_to_token
        if update_grid:
            self._triton.update_block_table(plan, self._stride, update_grid, self.allocator.free_pages,
                                            r2t, self.block_size)
        if pack_grid:
            self._triton.pack_flash_attn_metadata(lookup, self._stride, self._metadata, r2t,
                                                  self.block_size, pack_grid, self._pack_launch)

    # -- lifecycle and inspection ----------------------------------------------

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        rows, lens = self._books.release(list(req_ids))
        self.flush()  # its kernel reads stack entries that these pages will overwrite
        counts = (np.asarray(lens, dtype=np.int64) + self.block_size - 1) // self.block_size
        total = int(counts.sum())
        if total == 0:
            return
        firsts = np.repeat(np.cumsum(counts) - counts, counts)
        row_idx = torch.from_numpy(np.repeat(np.asarray(rows, dtype=np.int64), counts))
        first_slot = torch.from_numpy((np.arange(total) - firsts) * self.block_size)
        r2t = self.req_to_token_pool.req_to_token
        pages = r2t[row_idx.to(self.device), first_slot.to(self.device)] // self.block_size
        self.allocator.free(pages)

    def reset_state(self) -> None:
        self._pending_update = 0  # its plan is moot: every table is cleared
        self.req_to_token_pool.clear()
        self.allocator.clear()

    def num_free_slots(self) -> int:
        return self.allocator.available_size()

    def num_running_reqs(self) -> int:
        return self._books.num_reqs

    def seq_len(self, req_id: int) -> int:
        return self._books.seq_len(req_id)

    def token_slots(self, req_id: int) -> list[int]:
        seq_len = self._books.seq_len(req_id)
        row = self._books.row_of(req_id)
        self.flush()
        return self.req_to_token_pool.req_to_token[row, :seq_len].tolist()

    def check_integrity(self) -> None:
        from disagmoe.block_manager.integrity import check_paged_state
        self.flush()
        check_paged_state(self)

    def memory_footprint(self) -> MemoryFootprint:
        device = (self.req_to_token_pool.nbytes + self.allocator.nbytes + self._metadata.nbytes
                  + self._staging.device_bytes)
        host = self._staging.host_bytes if self.device.type == "cuda" else 0
        return MemoryFootprint(device_bytes=device, host_bytes=host)

"""The `gpu` backend: block tables resident on the device, SGLang style.

The C++ request books (`_C.RequestTable`) check each batch and mirror every
length on the host, so shapes never need a device read. Each step stages its
small per-entry integers in one pinned buffer, sends them with one
non-blocking copy, and runs one kernel: Triton on CUDA (replayed from a CUDA
graph per batch-size bucket), plain torch operations elsewhere. The Triton
kernels skip even the copy: they read the pinned inputs over the bus.
"""

from __future__ import annotations

from typing import Sequence

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
    their inputs from pinned host memory instead of a device copy."""

    backend = "gpu"
    default_block_size = 1

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 max_running_reqs: int, device: torch.device | str | None = None,
                 kernels: str = "auto", cuda_graphs: bool = True, zero_copy: bool = False) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device)
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r} is not one of {KERNELS}")
        on_cuda = self.device.type == "cuda"
        if kernels == "auto":
            kernels = "triton" if on_cuda and _triton_available() else "torch"
        if kernels == "triton" and not on_cuda:
            raise ValueError(f"kernels='triton' needs a CUDA device, got {self.device}")
        self.kernels = kernels
        self.cuda_graphs = cuda_graphs and kernels == "triton"
        self.req_to_token_pool = ReqToTokenPool(max_running_reqs, self.max_seq_len,
                                                self.block_size, self.device)
        self._books = self.req_to_token_pool.books
        self.allocator = (TokenToKVPoolAllocator(self.num_blocks, self.device) if self.block_size == 1
                          else PagedTokenToKVPoolAllocator(self.num_blocks, self.block_size, self.device))
        self._stride = max_running_reqs + 1
        zero_copy = zero_copy and kernels == "triton"
        self._plan = Staging(HEADER + 4 * self._stride, self.device, zero_copy)  # update's inputs
        self._lookup = Staging(HEADER + 5 * self._stride, self.device, zero_copy)  # pack's inputs
        self._scratch = np.empty(5 * self._stride, dtype=np.int32)  # host-only lookups
        max_width = -(-self.max_seq_len // self.block_size)
        nbytes = _C.metadata_layout(max_running_reqs, max_width, max_running_reqs)[-1]
        self._metadata = MetadataBuffer(nbytes, self.device)
        self._headers: dict[tuple, np.ndarray] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        if kernels == "triton":
            from disagmoe.block_manager import kernels_triton
            self._triton = kernels_triton

    # -- the step -------------------------------------------------------------

    def update_block_table(self, batch: BatchMetadata) -> None:
        args = (batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
        if not self._is_first_layer(batch):
            _, batch.seq_lens = self._books.lookup(*args, self._scratch, self._stride)
            return
        host = self._plan.host()
        num_pages, seq_lens = self._books.update_block_table(
            *args, self.allocator.num_free_pages, self._plan.args, self._stride)
        batch_size = len(seq_lens)
        if batch_size:
            host[0] = batch_size
            host[1] = self.allocator.take(num_pages)
            if self.kernels == "torch":
                kernels_torch.update_block_table(self._plan.upload(), host, self._stride, batch_size,
                                                 self.allocator.free_pages,
                                                 self.req_to_token_pool.req_to_token, self.block_size)
            else:
                self._launch("update", batch_size, self._plan)
            self._plan.enqueued()
        batch.seq_lens = seq_lens

    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        host = self._lookup.host()
        stats, seq_lens = self._books.lookup(batch.req_ids, batch.num_prefill_seqs,
                                             batch.init_prefill_lens, self._lookup.args, self._stride)
        num_tokens, max_query_len, max_seq_len, max_prefill_seq_len, max_decode_seq_len, \
            max_decode_query_len = stats
        batch_size = len(seq_lens)
        width = -(-max_seq_len // self.block_size)
        views = self._metadata.views(batch_size, width, num_tokens)
        host[:8] = self._header(views[0])
        if self.kernels == "torch" or batch_size == 0:
            kernels_torch.pack_flash_attn_metadata(self._lookup.upload(), self._stride, batch_size,
                                                   width, num_tokens,
                                                   self.req_to_token_pool.req_to_token,
                                                   self.block_size, views)
        else:
            self._launch("pack", batch_size, self._lookup)
        self._lookup.enqueued()
        _, slots, seq, ctx, qsl, ssl, tables, _ = views
        num_decodes = batch_size - batch.num_prefill_seqs
        return FlashAttentionMetadata(
            num_prefills=batch.num_prefill_seqs,
            num_prefill_tokens=num_tokens - num_decodes,
            num_decode_tokens=num_decodes,
            seq_lens=seq_lens,
            seq_lens_tensor=seq,
            context_lens_tensor=ctx,
            query_start_loc=qsl,
            seq_start_loc=ssl,
            max_query_len=max_query_len,
            max_prefill_seq_len=max_prefill_seq_len,
            max_decode_seq_len=max_decode_seq_len,
            max_decode_query_len=max_decode_query_len,
            block_tables=tables,
            slot_mapping=slots,
            block_size=self.block_size,
        )

    def _header(self, layout: tuple) -> np.ndarray:
        header = self._headers.get(layout)
        if header is None:
            batch_size, width, _, slots, seq, ctx, qsl, ssl, tables, _ = layout
            header = np.array([batch_size, width, slots // 8, seq // 4, ctx // 4, qsl // 4,
                               ssl // 4, tables // 4], dtype=np.int32)
            self._headers[layout] = header
        return header

    def _launch(self, op: str, batch_size: int, staging: Staging) -> None:
        if not self.cuda_graphs:
            self._run_kernel(op, batch_size, staging.upload())
            return
        bucket = 1 << max(0, batch_size - 1).bit_length()  # the next power of two
        key = (op, bucket, self._metadata.bytes.data_ptr())
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        # This step runs eagerly (and compiles); programs past batch_size do nothing.
        self._run_kernel(op, bucket, staging.upload())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run_kernel(op, bucket, staging.upload())
        self._graphs[key] = graph

    def _run_kernel(self, op: str, grid: int, staged: torch.Tensor) -> None:
        r2t = self.req_to_token_pool.req_to_token
        if op == "update":
            self._triton.update_block_table(staged, None, self._stride, grid, self.allocator.free_pages,
                                            r2t, self.block_size, grid=grid)
        else:
            self._triton.pack_flash_attn_metadata(staged, self._stride, self._metadata, r2t,
                                                  self.block_size, grid)

    # -- lifecycle and inspection ----------------------------------------------

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        rows, lens = self._books.release(list(req_ids))
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
        return self.req_to_token_pool.req_to_token[row, :seq_len].tolist()

    def check_integrity(self) -> None:
        from disagmoe.block_manager.integrity import check_paged_state
        check_paged_state(self)

    def memory_footprint(self) -> MemoryFootprint:
        device = (self.req_to_token_pool.nbytes + self.allocator.nbytes + self._metadata.nbytes
                  + self._plan.device_bytes + self._lookup.device_bytes)
        host = self._plan.host_bytes + self._lookup.host_bytes if self.device.type == "cuda" else 0
        return MemoryFootprint(device_bytes=device, host_bytes=host)

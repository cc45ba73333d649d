"""The `cpu` backend: block tables kept by the C++ core on the host.

`pack_flash_attn_metadata` has the core write every array straight into one
persistent (pinned, on CUDA) staging buffer, then issues one non-blocking copy
into a persistent device buffer whose views are the metadata tensors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from disagmoe import _C
from disagmoe.batch import BatchMetadata
from disagmoe.block_manager.base import BlockManager, MemoryFootprint
from disagmoe.block_manager.staging import DeviceDone
from disagmoe.config import CacheConfig, ModelConfig
from disagmoe.metadata import FlashAttentionMetadata, MetadataBuffer


class CPUBlockManager(BlockManager):
    backend = "cpu"
    default_block_size = 16

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 max_running_reqs: int, device: torch.device | str | None = None) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device)
        self._core = _C.BlockManager(self.block_size, self.num_blocks, self.max_seq_len,
                                     self.max_running_reqs)
        # Sized for the largest decode step; prefill steps grow it on demand.
        nbytes = _C.metadata_layout(self.max_running_reqs, self._core.max_blocks_per_seq,
                                    self.max_running_reqs).nbytes
        on_cuda = self.device.type == "cuda"
        self._staging = MetadataBuffer(nbytes, torch.device("cpu"), pin_memory=on_cuda)
        self._staging_np = self._staging.bytes.numpy()
        # On a CPU device the staging buffer is the metadata buffer.
        self._metadata = MetadataBuffer(nbytes, self.device) if on_cuda else self._staging
        self._copy_done = DeviceDone(self.device) if on_cuda else None
        self._grow = self._grow_staging  # bound once: pack passes it every step

    def update_block_table(self, batch: BatchMetadata) -> None:
        batch.seq_lens = self._core.update_block_table(
            batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens,
            self._is_first_layer(batch))

    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        self._is_first_layer(batch)  # rejects an unknown layer
        if self._copy_done is not None:
            self._copy_done.wait()  # the last copy out of the staging buffer is done
        args = (batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
        stats, seq_lens = self._core.pack_flash_attn_metadata(*args, self._staging_np, self._grow)
        batch_size, width, num_tokens = stats.batch_size, stats.width, stats.num_tokens
        views = self._metadata.views(batch_size, width, num_tokens)
        if self._copy_done is not None:
            views[-1].copy_(self._staging.views(batch_size, width, num_tokens)[-1], non_blocking=True)
            self._copy_done.record()
        return FlashAttentionMetadata.from_step(stats, seq_lens, views, self.block_size)

    def _grow_staging(self, nbytes: int) -> np.ndarray:
        """The staging buffer, grown to hold `nbytes` (the core asks when a batch does not fit)."""
        self._staging.reserve(nbytes)
        self._staging_np = self._staging.bytes.numpy()
        return self._staging_np

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        self._core.release_seqs(list(req_ids))

    def reset_state(self) -> None:
        self._core.reset_state()

    def num_free_slots(self) -> int:
        return self._core.num_free_blocks() * self.block_size

    def num_running_reqs(self) -> int:
        return self._core.num_reqs

    def seq_len(self, req_id: int) -> int:
        return self._core.seq_len(req_id)

    def token_slots(self, req_id: int) -> list[int]:
        req_id = self._checked_req_id(req_id)
        blocks, bs = self._core.block_ids(req_id), self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(self._core.seq_len(req_id))]

    def check_integrity(self) -> None:
        problem = self._core.check_integrity()
        if problem:
            raise AssertionError(f"CPUBlockManager: {problem}")

    def memory_footprint(self) -> MemoryFootprint:
        table_bytes = 4 * (self.max_running_reqs * self._core.max_blocks_per_seq + self.num_blocks)
        device_bytes = self._metadata.nbytes if self._metadata is not self._staging else 0
        return MemoryFootprint(device_bytes=device_bytes, host_bytes=table_bytes + self._staging.nbytes)

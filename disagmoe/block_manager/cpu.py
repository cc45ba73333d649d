"""The `cpu` backend: block tables kept by the C++ core on the host.

`pack_flash_attn_metadata` has the core write every array straight into the next of a
ring of pinned staging buffers (`staging.StagingRing`), then issues one non-blocking
copy into a persistent device buffer whose views are the metadata tensors. The host
waits only for the copy out of a buffer `depth` packs old. The core remembers what each
buffer's block table rows hold, so a row already there gets only its new blocks: a
decode step writes O(batch) words on the host, and what stays is the copy of the whole
table (the design's floor at long contexts). A pack of the same batch as the last one,
with nothing changed since (the next layer of a step), returns the same tensors
without writing or copying anything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from disagmoe import _C
from disagmoe.batch import BatchMetadata
from disagmoe.block_manager.base import BlockManager, MemoryFootprint
from disagmoe.block_manager.core_books import CoreBooks
from disagmoe.block_manager.memo import BatchMemo
from disagmoe.block_manager.staging import StagingRing
from disagmoe.config import CacheConfig, ModelConfig
from disagmoe.metadata import FlashAttentionMetadata, packed_offsets, packed_views


class CPUBlockManager(CoreBooks, BlockManager):
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
        self._ring = StagingRing(nbytes, self.device, owner="CPUBlockManager")
        self._grow = self._grow_staging  # bound once: pack passes it every step
        self.memo = BatchMemo()

    def update_block_table(self, batch: BatchMetadata) -> None:
        first = self._is_first_layer(batch)
        if not first:
            seq_lens = self.memo.lengths(batch)  # from the same batch's pack at an earlier layer
            if seq_lens is not None:
                batch.seq_lens = seq_lens
                return
        seq_lens = self._core.update_block_table(batch.req_ids, batch.num_prefill_seqs,
                                                 batch.init_prefill_lens, first)
        if first and seq_lens:
            self.memo.changed()
        batch.seq_lens = seq_lens

    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        self._is_first_layer(batch)  # rejects an unknown layer
        repacked = self.memo.repacked(batch)
        if repacked is not None:
            return repacked
        ring = self._ring
        slot = ring.acquire()  # its last copy out is done
        args = (batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
        stats, seq_lens = self._core.pack_flash_attn_metadata(*args, ring.host_arrays[slot], self._grow, slot)
        assert seq_lens is not None  # with grow, the core always writes
        batch_size, width, num_tokens = stats.batch_size, stats.width, stats.num_tokens
        ring.upload(packed_offsets(batch_size, width, num_tokens)[-1])
        ring.enqueued()
        views = packed_views(ring.device32, ring.device64, batch_size, width, num_tokens)
        metadata = FlashAttentionMetadata.from_step(stats, seq_lens, views, self.block_size)
        self.memo.put(batch, metadata)
        return metadata

    def _grow_staging(self, nbytes: int) -> np.ndarray:
        """The current staging buffer, grown to hold `nbytes` (the core asks when a batch
        does not fit)."""
        return self._ring.grow(self._ring.current, nbytes, "CPUBlockManager")

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        self._core.release_seqs(self._id_list(req_ids))
        self.memo.changed()

    def reset_state(self) -> None:
        self._core.reset_state()
        self.memo.changed()
        self._ring.restart()

    def check_integrity(self) -> None:
        problem = self._core.check_integrity()
        if problem:
            raise AssertionError(f"CPUBlockManager: {problem}")

    def memory_footprint(self) -> MemoryFootprint:
        table_bytes = 4 * (self.max_running_reqs * self._core.max_blocks_per_seq + self.num_blocks)
        return MemoryFootprint(device_bytes=self._ring.device_bytes,
                               host_bytes=table_bytes + self._ring.host_bytes)

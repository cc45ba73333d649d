"""The `cpu` design: block tables kept by the C++ core on the host.

A pack (`_C.HostStep`) has the core write the metadata into the next of a ring of
pinned host buffers, then copies it into the device's metadata buffer: the block table
rows with one 2D copy (a buffer keeps each entry's row at a fixed pitch, so a row stays
where it was whatever the batch's width, and a row already there gets only its new
blocks: a decode step writes O(batch) words), the other arrays with one more. The host
waits only for the copy out of a buffer `depth` packs old. A pack of the same batch as
the last one at another layer, with nothing changed since, returns the same metadata
without writing or copying anything.
"""

from __future__ import annotations

from typing import Any

import torch

from disagmoe import _C
from disagmoe.block_manager.base import DEFAULT_DEPTH, BlockManager, MemoryFootprint
from disagmoe.block_manager.buffers import MetadataBuffer, checked_empty
from disagmoe.block_manager.core_books import CoreBooks

HOST = torch.device("cpu")


class CPUBlockManager(CoreBooks, BlockManager):
    default_block_size = 16
    runs_after_fork = True  # the step is C++ and memcpy on torch's CPU device

    def _build(self) -> None:
        books = self._make_books()
        on_cuda = self.device.type == "cuda"
        self._step = _C.HostStep(books, DEFAULT_DEPTH if on_cuda else 1, self.device.index if on_cuda else -1)
        pitch = books.max_blocks_per_seq
        # Sized for a decode step of every request; a step of more tokens grows them.
        layout = _C.metadata_layout(self.max_running_reqs, pitch, self.max_running_reqs)
        self._tables = [
            checked_empty(
                "CPUBlockManager",
                (self.max_running_reqs * pitch,),
                torch.int32,
                f"a staging block table of {self.max_running_reqs} x {pitch} blocks",
                HOST,
                pin_memory=on_cuda,
            )
            for _ in range(self._step.depth)
        ]
        for k in range(self._step.depth):
            self._set_head(k, self._head_bytes(layout))
        self._grow("device", layout.nbytes)

    @staticmethod
    def _head_bytes(layout) -> int:
        """A buffer's head for a batch of this layout: its lengths and slot_mapping, and room
        to gather a small table after them."""
        return layout.block_tables + _C.HostStep.compact_bytes

    def _set_head(self, k: int, nbytes: int) -> None:
        head = checked_empty(
            "CPUBlockManager",
            (nbytes,),
            torch.uint8,
            f"a staging buffer of {nbytes} bytes",
            HOST,
            pin_memory=self.device.type == "cuda",
        )
        self._step.set_buffer(k, self._tables[k], head)

    def _grow(self, which: str, nbytes: int) -> None:
        nbytes = (nbytes + nbytes // 2 + 63) // 64 * 64
        if which == "host":  # the buffer the pack writes: the device has read it (the step waited)
            self._set_head(self._step.current, nbytes)
        else:
            out = checked_empty(
                "CPUBlockManager", (nbytes,), torch.uint8, f"a metadata buffer of {nbytes} bytes", self.device
            )
            self._step.set_out(out, MetadataBuffer(out))  # one native call: nothing splits it

    def _release(self, req_ids: Any) -> None:
        self._step.release(req_ids)

    def _reset(self) -> None:
        self._step.reset()

    def _flush(self) -> None:
        pass  # nothing is deferred

    def _warm_up(self, max_num_tokens: int) -> None:
        layout = _C.metadata_layout(self.max_running_reqs, self._books.max_blocks_per_seq, max_num_tokens)
        for k, head in enumerate(self._step.heads):
            if head.numel() < self._head_bytes(layout):
                self._step.wait_all()
                self._set_head(k, self._head_bytes(layout))
        if self._step.out.out.numel() < layout.nbytes:
            self._grow("device", layout.nbytes)

    def _check_integrity(self) -> None:
        self._check_books()

    def memory_footprint(self) -> MemoryFootprint:
        heads = self._step.heads
        host = self._host_table_bytes() + sum(t.nbytes for t in self._tables) + sum(h.nbytes for h in heads)
        out = self._step.out.out.nbytes
        return MemoryFootprint(
            device_bytes=out if self.device.type == "cuda" else 0,
            host_bytes=host if self.device.type == "cuda" else host + out,
        )

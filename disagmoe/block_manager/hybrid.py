"""The `hybrid` design: the host decides, the device keeps the tables.

The C++ core (`_C.BlockBooks`, as the `cpu` design uses it) checks every batch,
allocates blocks from its host free list and keeps the lengths, so no device state is
needed to decide anything. The block tables live on the device (`req_to_block`, one row
per request row), and each first-layer update sends only what changed: per entry its
row, old and new length and where its new block ids start, and those ids; a kernel
writes them into the rows before the pack builds the metadata from the device table
(`device_tables`: the step path it shares with `gpu`). A step's device work grows with
the blocks it adds, not with batch x context; a release is host work alone (a row's
stale entries are never read: the pack reads a row's first blocks, which the updates
since its request arrived have written). A request matched by the prefix cache holds
blocks before its first update; that update stages its row from block 0, the matched
blocks first among its ids (csrc/block_books.h, stage_matched).
"""

from __future__ import annotations

from disagmoe.block_manager.core_books import CoreBooks
from disagmoe.block_manager.device_tables import DeviceTableManager


class HybridBlockManager(CoreBooks, DeviceTableManager):
    """`kernels`, `cuda_graphs`, `pack_launch` and `req_to_block`: see `DeviceTableManager`."""

    default_block_size = 16

    def _check_integrity(self) -> None:
        self._check_books()
        table = self._device_rows()
        unstaged = set(self._books.unstaged_rows())  # matched: their first update writes them
        for req_id in self._books.req_ids():
            if self._books.row_of(req_id) in unstaged:
                continue
            blocks = list(self._books.block_ids(req_id))
            row = table[self._books.row_of(req_id), : len(blocks)].tolist()
            if row != blocks:
                raise AssertionError(
                    f"HybridBlockManager: request {req_id}'s device row {row} != its host blocks {blocks}"
                )

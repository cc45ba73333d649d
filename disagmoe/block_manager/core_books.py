"""What the designs whose books are the C++ core's `_C.BlockManager` (`cpu`, `hybrid`)
answer from it alone: free slots, running requests, lengths, each token's slot, the
core's own invariants and its bytes."""

from __future__ import annotations

from typing import Callable

from disagmoe import _C


class CoreBooks:
    """A mixin for a `BlockManager` that keeps its books in `self._core`."""

    _core: _C.BlockManager
    block_size: int
    max_running_reqs: int
    num_blocks: int
    _checked_req_id: Callable[[object], int]  # BlockManager's

    def num_free_slots(self) -> int:
        return self._core.num_free_blocks() * self.block_size

    def num_running_reqs(self) -> int:
        return self._core.num_reqs

    def seq_len(self, req_id: int) -> int:
        return self._core.seq_len(req_id)

    def token_slots(self, req_id: int) -> list[int]:
        """From the host's block ids: they decide (the hybrid backend's device rows mirror them)."""
        req_id = self._checked_req_id(req_id)
        blocks, bs = self._core.block_ids(req_id), self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(self._core.seq_len(req_id))]

    def _check_core(self) -> None:
        problem = self._core.check_integrity()
        if problem:
            raise AssertionError(f"{type(self).__name__}: {problem}")

    def _core_bytes(self) -> int:
        """Host bytes of the core's block tables and free list."""
        return 4 * (self.max_running_reqs * self._core.max_blocks_per_seq + self.num_blocks)

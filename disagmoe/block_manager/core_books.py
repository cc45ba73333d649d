"""What the designs whose books are the C++ core's `_C.BlockBooks` (`cpu`, `hybrid`)
share: the core itself, and what they answer from it alone (free slots, each request's
blocks, the prefix cache, the core's own invariants and its bytes)."""

from __future__ import annotations

from disagmoe import _C


class CoreBooks:
    """A mixin for a `BlockManager` that keeps its books in the C++ core."""

    _books: _C.BlockBooks
    block_size: int
    max_running_reqs: int
    max_seq_len: int
    num_blocks: int

    def _make_books(self) -> _C.BlockBooks:
        """The core, sized by the manager's limits, as `self._books`."""
        self._books = _C.BlockBooks(self.block_size, self.num_blocks, self.max_seq_len, self.max_running_reqs)
        return self._books

    def _match_prefix(self, req_id: object, block_hashes: object) -> int:
        return self._books.match_prefix(req_id, block_hashes)  # type: ignore[arg-type]

    def _prefix_cache_stats(self) -> tuple[int, int, int, int, int]:
        return self._books.prefix_cache_stats()

    def num_free_slots(self) -> int:
        return self._books.num_free_blocks() * self.block_size

    def _block_ids(self, req_id: int, num_blocks: int) -> list[int]:
        """From the host's block ids: they decide (the hybrid design's device rows mirror them)."""
        return self._books.block_ids(req_id)[:num_blocks]

    def _check_books(self) -> None:
        problem = self._books.check_integrity()
        if problem:
            raise AssertionError(f"{type(self).__name__}: {problem}")

    def _host_table_bytes(self) -> int:
        """Host bytes of the core's block tables and free list, and the prefix cache's
        entries (24 bytes a block) and hash index (about 12 bytes a slot, 2 to 4 slots a
        block: 36 a block, roughly)."""
        return 4 * (self.max_running_reqs * self._books.max_blocks_per_seq + self.num_blocks) + 60 * self.num_blocks

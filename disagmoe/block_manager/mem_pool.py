"""SGLang's device-resident pools, with SGLang's names: the interface that a serving
engine built on SGLang calls. The `gpu` design keeps the same layout (one int32 row per
request, a free stack on the device) inside its native step (`device_tables`).

"Page" here is SGLang's word, kept in SGLang's names: a page is what the rest of this
package calls a block (`page_size` slots; at page size 1, SGLang's token-level pool,
one slot). `ReqToTokenPool` maps each running request's row to the page of each of its
positions (at page size 1, SGLang's `req_to_token`; at larger page sizes one entry per
page, so that a pack reads `page_size` times fewer words); `TokenToKVPoolAllocator`
(one slot per page) and `PagedTokenToKVPoolAllocator` (pages of `page_size` slots) keep
the free pages as a device stack. Host integers mirror every count that a shape depends
on, so no step reads the device back.
"""

from __future__ import annotations

import torch

from disagmoe import _C
from disagmoe.block_manager.buffers import empty_int32
from disagmoe.config import checked_int, checked_slots


class ReqToTokenPool:
    """`req_to_page[row, k]`: the page holding positions [k * page_size, (k + 1) * page_size)
    of the request in `row`; its slots are page * page_size + offset.

    The host books (request id -> row, lengths, free rows) are a
    `_C.RequestTable`; the table itself is an int32 device tensor.
    """

    def __init__(self, size: int, max_context_len: int, page_size: int, device: torch.device) -> None:
        self.books = _C.RequestTable(size, max_context_len, page_size)  # checks the sizes
        self.size = self.books.max_reqs
        self.max_context_len = self.books.max_seq_len
        self.page_size = self.books.block_size
        max_pages = -(-self.max_context_len // self.page_size)
        what = f"req_to_page of size={self.size} x {max_pages} pages of {self.page_size} slots"
        self.req_to_page = empty_int32("ReqToTokenPool", (self.size, max_pages), what, device).zero_()

    def clear(self) -> None:
        self.books.reset_state()

    def token_slots(self, row: int, seq_len: int) -> list[int]:
        """The slot of each of the row's first `seq_len` positions (reads the device)."""
        pages = self.req_to_page[row, : -(-seq_len // self.page_size)].tolist()
        return [pages[p // self.page_size] * self.page_size + p % self.page_size for p in range(seq_len)]

    @property
    def nbytes(self) -> int:
        return self.req_to_page.numel() * self.req_to_page.element_size()


class PagedTokenToKVPoolAllocator:
    """Free pages of `page_size` slots, as a stack on the device.

    The stack's height is a host integer: taking k pages moves it down by k
    (the m-th page taken is `free_pages[height - 1 - m]`), freeing pushes.
    """

    def __init__(self, num_pages: int, page_size: int, device: torch.device) -> None:
        owner = type(self).__name__
        self.num_pages = checked_int(owner, "num_pages", num_pages)
        self.page_size = checked_int(owner, "page_size", page_size)
        # Slots are int32 in req_to_token: a pool past that would hand out negative slots.
        checked_slots(owner, self.num_pages, self.page_size, ("num_pages", "page_size"))
        self.device = device
        self.free_pages = empty_int32(owner, (self.num_pages,), f"num_pages={self.num_pages} pages", device)
        self.clear()

    def clear(self) -> None:
        # Taking from the top hands out page 0 first, as the C++ core does.
        torch.arange(self.num_pages - 1, -1, -1, dtype=torch.int32, out=self.free_pages)
        self.num_free_pages = self.num_pages

    def available_size(self) -> int:
        """Free slots."""
        return self.num_free_pages * self.page_size

    def take(self, num_pages: int) -> int:
        """Takes `num_pages` pages off the stack; returns the height before.

        The caller (a kernel) reads them as `free_pages[height - 1 - m]`.
        """
        if num_pages > self.num_free_pages:
            raise ValueError(f"take: {num_pages} pages asked, {self.num_free_pages} free")
        height = self.num_free_pages
        self.num_free_pages -= num_pages
        return height

    def push(self, num_pages: int) -> int:
        """Makes room for `num_pages` pages that a kernel pushes; returns the height
        before (the kernel writes them at free_pages[height:height + num_pages])."""
        if num_pages > self.num_pages - self.num_free_pages:
            raise ValueError(f"push: {num_pages} pages pushed, only {self.num_pages - self.num_free_pages} are taken")
        height = self.num_free_pages
        self.num_free_pages += num_pages
        return height

    def free(self, pages: torch.Tensor) -> None:
        """Pushes `pages` (int32, on the device), in order."""
        count = pages.numel()
        if count > self.num_pages - self.num_free_pages:
            raise ValueError(f"free: {count} pages pushed, only {self.num_pages - self.num_free_pages} are taken")
        self.free_pages[self.num_free_pages : self.num_free_pages + count].copy_(pages)
        self.num_free_pages += count

    @property
    def nbytes(self) -> int:
        return self.free_pages.numel() * self.free_pages.element_size()


class TokenToKVPoolAllocator(PagedTokenToKVPoolAllocator):
    """Free slots, one per page (SGLang's token-level allocator)."""

    def __init__(self, size: int, device: torch.device) -> None:
        super().__init__(size, 1, device)

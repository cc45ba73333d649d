"""What the two device-table backends (`gpu`, `hybrid`) share: block tables resident on
the device as one page table (`req_to_page[row, k]`), and a step path whose host cost
does not depend on the batch's shape.

Each launch stages its inputs in the next buffer of a `StagingRing` (layout.py names
the words): a first-layer update and a release are deferred into it, and the
`pack_flash_attn_metadata` that follows sends all of it with one copy and runs the
release, update and pack kernels in that order, replayed from one CUDA graph per
(kernels, grid bucket, ring buffer) with Triton (`graphs.py`). Any other call that
reads the device tables (a second update, inspection, synchronize) launches what is
deferred first, so every observable result is as if it had run at once. The host
never waits for the device except for a ring buffer `depth` launches old.

The metadata lands in one persistent device buffer at fixed offsets (`slot_mapping` in
a second one, grown when a batch has more tokens than any before), so a pack builds
its views from three integers, whatever the shape. A pack of the same batch as the last
one, with nothing changed since (the next layer of the same step), returns the same
tensors without a launch (`BatchMemo`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from disagmoe.batch import BatchMetadata
from disagmoe.block_manager import kernels_torch
from disagmoe.block_manager import layout as L
from disagmoe.block_manager.base import BlockManager
from disagmoe.block_manager.graphs import GraphCache, bucket
from disagmoe.block_manager.mem_pool import checked_empty
from disagmoe.block_manager.memo import BatchMemo
from disagmoe.block_manager.staging import StagingRing
from disagmoe.config import CacheConfig, ModelConfig
from disagmoe.metadata import FlashAttentionMetadata, metadata_views

KERNELS = ("auto", "triton", "torch")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401 (is it there?)
    except ImportError:
        return False
    return True


class DeviceTableManager(BlockManager):
    """The shared step path; subclasses stage their update and release (`_stage_update`,
    `_stage_release`) and say where new pages come from (`_free_pages`: the device free
    stack, or None for page ids staged by the host)."""

    page_ids_capacity = 0  # words of staged page ids a launch may carry (hybrid: set in _carried_ids)

    def _carried_ids(self) -> int:
        """Words of new page ids a launch carries (the hybrid backend's; the gpu backend's
        pages come from the device stack)."""
        return 0

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig, max_running_reqs: int,
                 device: torch.device | str | None, kernels: str, cuda_graphs: bool, zero_copy: bool,
                 pack_launch) -> None:
        super().__init__(model_config, cache_config, max_running_reqs, device)
        self.kernels = self._choose_kernels(kernels, pack_launch)
        self.cuda_graphs = bool(cuda_graphs) and self.kernels == "triton"
        self.zero_copy = bool(zero_copy) and self.kernels == "triton"
        max_running_reqs = self.max_running_reqs  # the checked int
        self.page_ids_capacity = self._carried_ids()
        self._stride = max_running_reqs + 1
        name = type(self).__name__
        self._ring = StagingRing(4 * L.staged_words(self._stride, self.page_ids_capacity), self.device, owner=name)
        self._staged_device = self._ring.device.view(torch.int32)
        self._slot: int | None = None  # the ring buffer being staged, once acquired
        self._update_size = self._release_size = 0  # staged, not launched yet
        self._scratch = np.empty(L.LOOKUP_COLUMNS * self._stride, dtype=np.int32)  # host-only lookups
        self.max_width = -(-self.max_seq_len // self.block_size)
        self._tables = L.tables_offset(max_running_reqs)
        words = self._tables + max_running_reqs * self.max_width
        self._out32 = checked_empty(name, (words,), torch.int32, f"the metadata buffer of {max_running_reqs} x "
                                    f"{self.max_width} blocks", self.device).zero_()
        self._out64 = torch.zeros(max_running_reqs, dtype=torch.int64, device=self.device)
        self._graphs = GraphCache()
        self.memo = BatchMemo()
        self._pack_launch = pack_launch

    def _choose_kernels(self, kernels: str, pack_launch) -> str:
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r} is not one of {KERNELS}")
        on_cuda = self.device.type == "cuda"
        if kernels == "auto":
            kernels = "triton" if on_cuda and _triton_available() else "torch"
        if kernels == "triton" and not on_cuda:
            raise ValueError(f"kernels='triton' needs a CUDA device, got {self.device}")
        if pack_launch is not None and kernels != "triton":
            raise ValueError(f"pack_launch={pack_launch!r} needs kernels='triton', got kernels={kernels!r}")
        return kernels

    def _triton_kernels(self, req_to_page: torch.Tensor, free_pages: torch.Tensor | None):
        from disagmoe.block_manager import kernels_triton
        launch = self._pack_launch
        if launch is None:
            launch = kernels_triton.PackLaunch()
        elif not isinstance(launch, kernels_triton.PackLaunch):
            raise TypeError(f"pack_launch must be a kernels_triton.PackLaunch, got {launch!r}")
        self._triton = kernels_triton
        page_ids = None if free_pages is not None else self._staged_device[L.page_ids_start(self._stride):]
        return kernels_triton.Kernels(req_to_page, free_pages, page_ids, self._out32, self._out64,
                                      self._tables, self._stride, self.block_size, launch)

    # -- what subclasses provide ----------------------------------------------------------

    req_to_page: torch.Tensor
    _free_pages: torch.Tensor | None

    def _books_lookup(self, batch: BatchMetadata, out: np.ndarray, op: str):
        raise NotImplementedError

    def _stage_update(self, batch: BatchMetadata) -> list[int]:
        """Checks a first-layer update, changes the books and stages its plan; returns the
        batch's lengths after it."""
        raise NotImplementedError

    # -- staging ------------------------------------------------------------------------

    def _words(self) -> np.ndarray:
        """The ring buffer this launch stages into (acquired on first use)."""
        if self._slot is None:
            self._slot = self._ring.acquire()
            words = self._ring.int32_arrays[self._slot]
            words[:L.HEADER] = 0
            return words
        return self._ring.int32_arrays[self._slot]

    def _staged_call(self, start: int, call):
        """`call(words[start:])` for a C++ call that writes its columns into the staging
        buffer while it reads the caller's arguments, and the buffer they are in: an
        argument's __index__ may launch what is staged (token_slots flushes), and then the
        columns move on to the next buffer with the rest of this launch."""
        words = self._words()
        slot = self._slot
        result = call(words[start:])
        if self._slot != slot:  # launched meanwhile; its kernels did not read these columns
            fresh = self._words()
            fresh[start:] = words[start:]
            words = fresh
        return result, words

    def _deferred(self) -> bool:
        return bool(self._update_size or self._release_size)

    # -- the step -----------------------------------------------------------------------

    def update_block_table(self, batch: BatchMetadata) -> None:
        if not self._is_first_layer(batch):
            seq_lens = self.memo.lengths(batch)  # from the same batch's pack at an earlier layer
            if seq_lens is None:
                seq_lens = self._books_lookup(batch, self._scratch, "update_block_table")[1]
            batch.seq_lens = seq_lens
            return
        if self._update_size:
            self.flush()  # the staged plan is about to be rewritten
        batch.seq_lens = self._stage_update(batch)

    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        self._is_first_layer(batch)  # rejects an unknown layer
        repacked = self.memo.repacked(batch)
        if repacked is not None:
            return repacked
        lookup = lambda out: self._books_lookup(batch, out, "pack_flash_attn_metadata")  # noqa: E731
        (stats, seq_lens), words = self._staged_call(L.LOOKUP, lookup)
        batch_size, width, num_tokens = stats.batch_size, stats.width, stats.num_tokens
        if num_tokens > self._out64.numel():  # a batch with more tokens than any before
            columns = words[L.LOOKUP:L.plan_start(self._stride)].copy()
            self.flush()
            self._grow_slots(num_tokens)
            words = self._words()
            words[L.LOOKUP:L.plan_start(self._stride)] = columns
        words[L.PACK_SIZE] = batch_size
        words[L.WIDTH] = width
        words[L.NUM_TOKENS] = num_tokens
        views = self._views(batch_size, width, num_tokens)
        self._launch(pack=True, views=views)
        metadata = FlashAttentionMetadata.from_step(stats, seq_lens, views, self.block_size)
        self.memo.put(batch, metadata)
        return metadata

    def _views(self, batch_size: int, width: int, num_tokens: int) -> tuple:
        return metadata_views(self._out32, self._out64, 0, self._tables, 0, batch_size, width, num_tokens)

    def _grow_slots(self, num_tokens: int) -> None:
        self._out64 = torch.zeros(num_tokens + num_tokens // 2, dtype=torch.int64, device=self.device)
        self._graphs.clear()  # they write the old buffer
        if self.kernels == "triton":
            import dataclasses
            self._k: Any = dataclasses.replace(self._k, out64=self._out64)

    def synchronize(self) -> None:
        self.flush()
        super().synchronize()

    def flush(self) -> None:
        """Launches a deferred update or release, if any (see the module docstring)."""
        if self._deferred():
            self._launch(pack=False)

    def _launch(self, pack: bool, views: tuple | None = None, page_ids: torch.Tensor | None = None) -> None:
        """One launch of what is staged: release, update, pack (see the module docstring).
        `page_ids` (hybrid: an update too large for a staged buffer) launches eagerly
        with the update's ids read from there."""
        release, update = bool(self._release_size), bool(self._update_size)
        slot = self._slot
        assert slot is not None, "a launch of nothing staged"
        words = self._ring.int32_arrays[slot]
        if self.kernels == "torch" or page_ids is not None:
            own_ids = update and page_ids is None and self._free_pages is None
            self._ring.upload(4 * L.copy_words(self._stride, release, update,
                                               int(words[L.NUM_PAGE_IDS]) if own_ids else 0))
            staged = self._staged_device
            if self.kernels == "triton":
                sizes = (self._release_size, self._update_size, int(words[L.PACK_SIZE]) if pack else 0)
                self._triton.launch(self._k, staged, bucket(max(max(sizes), 1)), release, update, pack, page_ids)
            else:
                if release:
                    assert self._free_pages is not None  # only the gpu backend stages releases
                    kernels_torch.release(staged, words, self._stride, self.req_to_page, self._free_pages,
                                          self.block_size)
                if update:
                    kernels_torch.update(staged, words, self._stride, self.req_to_page, self._free_pages,
                                         self.block_size, page_ids)
                if pack:
                    assert views is not None
                    kernels_torch.pack(staged, words, self._stride, self.req_to_page, self.block_size, views)
        else:
            sizes = (self._release_size, self._update_size, int(words[L.PACK_SIZE]) if pack else 0)
            grid = bucket(max(max(sizes), 1))
            carried = self.page_ids_capacity if update else 0
            nbytes = 4 * L.copy_words(self._stride, release, update, carried)
            run = lambda: self._run_triton(slot, grid, release, update, pack, nbytes)  # noqa: E731
            if self.cuda_graphs:
                self._graphs.launch((release, update, pack, grid, slot), run)
            else:
                run()
        self._ring.enqueued()
        self._slot = None
        self._update_size = self._release_size = 0

    def _run_triton(self, slot: int, grid: int, release: bool, update: bool, pack: bool, nbytes: int) -> None:
        if self.zero_copy:
            staged = self._ring.host_tensor(slot).view(torch.int32)
        else:
            self._ring.device[:nbytes].copy_(self._ring.host_tensor(slot)[:nbytes], non_blocking=True)
            staged = self._staged_device
        self._triton.launch(self._k, staged, grid, release, update, pack)

    # -- lifecycle and inspection ----------------------------------------------------------

    def reset_state(self) -> None:
        self._reset_books()  # first: it raises, changing nothing, during another call
        self._slot = None  # whatever was staged is moot: every table is cleared
        self._ring.restart()
        self._update_size = self._release_size = 0
        self.memo.changed()

    def _reset_books(self) -> None:
        raise NotImplementedError

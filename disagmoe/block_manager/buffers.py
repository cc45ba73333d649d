"""A manager's buffers: their allocation (every size checked by arithmetic before anything
is allocated, and a failed allocation a ValueError naming what it was for), and the objects
that a native step takes them in, one call each."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from disagmoe import _C
from disagmoe.metadata import LengthViews, length_views, slot_view, table_view

MAX_HOST_BYTES: int = _C.MAX_HOST_BYTES
"""The most bytes one buffer on the host (torch's CPU device, pinned memory) may take."""


def device_bytes_limit(device: torch.device) -> int:
    """The most bytes one buffer on `device` may take: the device's memory on CUDA (a
    property of the device), MAX_HOST_BYTES on the host (whatever this machine has)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return MAX_HOST_BYTES


def checked_empty(
    owner: str, shape: tuple[int, ...], dtype: torch.dtype, what: str, device: torch.device, pin_memory: bool = False
) -> torch.Tensor:
    """torch.empty, or ValueError naming `what` and its bytes when they pass what one buffer
    on the device (on the host, for pinned memory) may take: checked before allocating,
    since the managers write every entry of their tables, touching every page."""
    nbytes = torch.empty((), dtype=dtype).element_size()
    for n in shape:
        nbytes *= n
    limit = device_bytes_limit(torch.device("cpu") if pin_memory else device)
    if nbytes > limit:
        raise ValueError(
            f"{owner}: {what} need {nbytes} bytes, past the {limit} bytes one buffer on "
            f"{'pinned host memory' if pin_memory else device} may take"
        )
    try:
        return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory)
    except RuntimeError as exc:  # torch.OutOfMemoryError included
        raise ValueError(f"{owner}: cannot allocate {nbytes} bytes for {what} on {device}") from exc


def empty_int32(owner: str, shape: tuple[int, ...], what: str, device: torch.device) -> torch.Tensor:
    return checked_empty(owner, shape, torch.int32, what, device)


MAX_CACHED_SHAPES = 1024
"""Views of each kind a metadata buffer keeps (by the sizes they depend on)."""


class MetadataBuffer:
    """The metadata buffer every pack writes (bytes, a multiple of 8) and the views of it that
    packs return, kept by what their place and shape depend on: the lengths by the batch
    size, slot_mapping by it and the tokens, the table by all three. `kernels`: what a design
    keeps with it (the device-table designs' Triton kernels, which address it).

    One object, so that a buffer and its views are replaced in one native call: a step takes
    it with the buffer (`set_out(out, buffer)`) and hands it back with every pack's stats
    (`stats.buffer`), so the views a pack returns are always those of the buffer the step
    wrote, whatever interrupts the replacement (docs/architecture.md, Interrupts)."""

    __slots__ = ("out", "out32", "out64", "kernels", "_lengths", "_slots", "_tables")

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out
        self.out32 = out.view(torch.int32)
        self.out64 = out.view(torch.int64)
        self.kernels: object = None
        self._lengths: dict[int, LengthViews] = {}
        self._slots: dict[tuple[int, int], torch.Tensor] = {}
        self._tables: dict[tuple[int, int, int], torch.Tensor] = {}

    def views(self, batch_size: int, width: int, num_tokens: int) -> tuple:
        """The metadata tensors of a batch of this shape: (seq_lens, context_lens,
        query_start_loc, seq_start_loc, block_tables, slot_mapping)."""
        lengths = self._lengths.get(batch_size)
        if lengths is None:
            lengths = self._lengths[batch_size] = length_views(self.out32, batch_size)
        slots = self._slots.get((batch_size, num_tokens))
        if slots is None:
            if len(self._slots) >= MAX_CACHED_SHAPES:
                self._slots.clear()
            slots = self._slots[(batch_size, num_tokens)] = slot_view(self.out64, batch_size, num_tokens)
        table = self._tables.get((batch_size, num_tokens, width))
        if table is None:
            if len(self._tables) >= MAX_CACHED_SHAPES:
                self._tables.clear()
            table = self._tables[(batch_size, num_tokens, width)] = table_view(
                self.out32, batch_size, width, num_tokens
            )
        return (*lengths, table, slots)


class StagingBuffers(NamedTuple):
    """A device-table step's ring of staging buffers (int32 words on the host, pinned on
    CUDA), the numpy views of them the torch kernels read, and the device twin every launch
    copies its words into (None on torch's CPU device). A step takes all of it in one native
    call (`set_staging`) and keeps it (`step.staging`)."""

    words: list[torch.Tensor]
    host_words: list[np.ndarray]
    twin: torch.Tensor | None

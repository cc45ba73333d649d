"""Allocation of a manager's buffers: every size checked by arithmetic before anything is
allocated, and a failed allocation a ValueError naming what it was for."""

from __future__ import annotations

import torch

from disagmoe import _C

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

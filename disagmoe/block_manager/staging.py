"""Small int32 step inputs staged on the host for the device to read."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

HEADER = 16
"""int32 words before the per-entry arrays; kernels read their scalars there."""


class DeviceDone:
    """An event marking when the device has finished with a host buffer.

    `record()` records it on the current stream. Looking the current stream up
    through torch.cuda.current_stream() costs microseconds per call, so the
    stream object is cached and refreshed only when the raw current stream
    changes (the same raw query Triton's launcher uses).
    """

    def __init__(self, device: torch.device) -> None:
        self._event = torch.cuda.Event()
        self._index = device.index
        self._raw = None
        self._stream = None

    def record(self) -> None:
        raw = torch._C._cuda_getCurrentRawStream(self._index)
        if raw != self._raw:
            self._stream = torch.cuda.current_stream(self._index)
            self._raw = raw
        self._event.record(self._stream)

    def wait(self) -> None:
        self._event.synchronize()


class Staging:
    """Pinned host regions of step inputs, one device twin, one reader event.

    Each region starts with a HEADER of scalars. `host()` waits until the
    device has finished reading the buffer, so the caller may overwrite it.
    `upload()` sends every region with one non-blocking copy (with `zero_copy`
    nothing is copied: kernels read the pinned memory over the bus);
    `device_views` are what kernels read, at fixed addresses. `enqueued()`
    marks the readers as enqueued. On a CPU device the host buffer is the
    device buffer.
    """

    def __init__(self, sizes: Sequence[int], device: torch.device, zero_copy: bool = False) -> None:
        on_cuda = device.type == "cuda"
        self._host = torch.zeros(sum(sizes), dtype=torch.int32, pin_memory=on_cuda)
        self._copy = on_cuda and not zero_copy
        self._device = torch.zeros_like(self._host, device=device) if self._copy else self._host
        starts = np.cumsum([0, *sizes])
        whole = self._host.numpy()
        self.arrays = [whole[a:b] for a, b in zip(starts, starts[1:])]
        self.args = [array[HEADER:] for array in self.arrays]  # where the C++ books write
        self.device_views = [self._device[a:b] for a, b in zip(starts, starts[1:])]
        self._read = DeviceDone(device) if on_cuda else None

    def host(self) -> None:
        if self._read is not None:
            self._read.wait()

    def upload(self) -> None:
        if self._copy:
            self._device.copy_(self._host, non_blocking=True)

    def enqueued(self) -> None:
        if self._read is not None:
            self._read.record()

    @property
    def device_bytes(self) -> int:
        return self._device.numel() * 4 if self._copy else 0

    @property
    def host_bytes(self) -> int:
        return self._host.numel() * 4

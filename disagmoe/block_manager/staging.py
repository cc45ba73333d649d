"""Small int32 step inputs staged on the host for the device to read."""

from __future__ import annotations

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
    """A pinned host buffer of step inputs and the event of its last reader.

    `host()` waits until the device has finished reading the buffer, so the
    caller may overwrite it. `device_view()` is what kernels read: with
    `zero_copy` the pinned buffer itself (the kernel reads host memory over
    the bus, no copy is issued), otherwise a device twin filled by one
    non-blocking copy. `enqueued()` marks the readers as enqueued. On a CPU
    device the host buffer is the device buffer.
    """

    def __init__(self, size: int, device: torch.device, zero_copy: bool = False) -> None:
        on_cuda = device.type == "cuda"
        self._host = torch.zeros(size, dtype=torch.int32, pin_memory=on_cuda)
        self._copy = on_cuda and not zero_copy
        self._device = torch.zeros(size, dtype=torch.int32, device=device) if self._copy else self._host
        self.array: np.ndarray = self._host.numpy()
        self.args: np.ndarray = self.array[HEADER:]  # where the C++ books write
        self._read = DeviceDone(device) if on_cuda else None

    def host(self) -> np.ndarray:
        if self._read is not None:
            self._read.wait()
        return self.array

    def device_view(self) -> torch.Tensor:
        """The buffer kernels read; its address never changes."""
        return self._device

    def upload(self) -> torch.Tensor:
        if self._copy:
            self._device.copy_(self._host, non_blocking=True)
        return self._device

    def enqueued(self) -> None:
        if self._read is not None:
            self._read.record()

    @property
    def device_bytes(self) -> int:
        return self._device.numel() * 4 if self._copy else 0

    @property
    def host_bytes(self) -> int:
        return self._host.numel() * 4

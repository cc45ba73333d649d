"""Small int32 step inputs staged on the host and sent to the device in one copy."""

from __future__ import annotations

import numpy as np
import torch

HEADER = 16
"""int32 words before the per-entry arrays; kernels read their scalars there."""


class Staging:
    """A pinned host buffer, its device twin and the event of the last copy.

    `host()` waits until the last copy out of the host buffer is done, so the
    caller may overwrite it; `upload()` sends it with one non-blocking copy.
    On a CPU device the host buffer is the device buffer and nothing is copied.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        on_cuda = device.type == "cuda"
        self._host = torch.zeros(size, dtype=torch.int32, pin_memory=on_cuda)
        self.device_tensor = torch.zeros(size, dtype=torch.int32, device=device) if on_cuda else self._host
        self.array: np.ndarray = self._host.numpy()
        self.args: np.ndarray = self.array[HEADER:]  # where the C++ books write
        self._copied = torch.cuda.Event() if on_cuda else None

    def host(self) -> np.ndarray:
        if self._copied is not None:
            self._copied.synchronize()
        return self.array

    def upload(self) -> torch.Tensor:
        if self._copied is not None:
            self.device_tensor.copy_(self._host, non_blocking=True)
            self._copied.record()
        return self.device_tensor

    @property
    def nbytes(self) -> int:
        return self._host.numel() * 4

"""The host/device buffer pair every backend stages a step through.

`StagingRing` holds `depth` pinned host buffers, each with the event that says when the
device has finished reading it, and one device twin. A step writes the next host buffer
(`acquire` waits only for that buffer's previous reader, `depth` launches ago, so the
host can run up to `depth` launches ahead of the device), copies it to the device twin
(stream order keeps the twin safe: the next copy into it runs after the kernels that
read it), and marks the buffer read (`enqueued`). On torch's CPU device the host buffer
is the device buffer and nothing waits.
"""

from __future__ import annotations

import numpy as np
import torch

from disagmoe.block_manager.mem_pool import checked_empty

DEFAULT_DEPTH = 3


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
        self._raw: int | None = None
        self._stream: torch.cuda.Stream | None = None

    def record(self) -> None:
        raw = torch._C._cuda_getCurrentRawStream(self._index)
        if raw != self._raw:
            self._stream = torch.cuda.current_stream(self._index)
            self._raw = raw
        self._event.record(self._stream)

    def wait(self) -> None:
        self._event.synchronize()


class StagingRing:
    """`depth` pinned host buffers of `nbytes` bytes, one device twin of the same size.

    `host(k)` is buffer k as bytes (numpy uint8) and `int32(k)` as int32 words;
    `device` is the twin (a uint8 tensor); `current` is the buffer the next step writes.
    """

    def __init__(self, nbytes: int, device: torch.device, depth: int = DEFAULT_DEPTH, owner: str = "") -> None:
        on_cuda = device.type == "cuda"
        self.depth = depth if on_cuda else 1
        self.nbytes = (max(nbytes, 64) + 63) // 64 * 64
        self.on_cuda = on_cuda
        what = f"a staging buffer of {self.nbytes} bytes"
        # One allocation each, as a copy from pinned memory wants its own block.
        self._host = [checked_empty(owner, (self.nbytes,), torch.uint8, what, torch.device("cpu"),
                                    pin_memory=on_cuda).zero_() for _ in range(self.depth)]
        self.host_arrays = [t.numpy() for t in self._host]
        self.int32_arrays = [a.view(np.int32) for a in self.host_arrays]
        self._set_device(checked_empty(owner, (self.nbytes,), torch.uint8, f"a staging buffer of {self.nbytes} "
                                       "bytes", device).zero_() if on_cuda else self._host[0])
        self._done = [DeviceDone(device) for _ in range(self.depth)] if on_cuda else None
        self.current = 0

    def _set_device(self, twin: torch.Tensor) -> None:
        """The device twin, and its int32 and int64 views (kept: readers slice them every step)."""
        self.device = twin
        self.device32 = twin.view(torch.int32)
        self.device64 = twin.view(torch.int64)

    def host_tensor(self, k: int) -> torch.Tensor:
        return self._host[k]

    def grow(self, k: int, nbytes: int, owner: str = "") -> np.ndarray:
        """Buffer k (and the device twin) made to hold `nbytes`; returns buffer k's bytes.
        What was in them is not kept. The old device twin stays alive while views of it do."""
        nbytes = (nbytes + nbytes // 2 + 63) // 64 * 64
        if nbytes > self._host[k].numel():
            self._host[k] = checked_empty(owner, (nbytes,), torch.uint8, f"a staging buffer of {nbytes} bytes",
                                          torch.device("cpu"), pin_memory=self.on_cuda)
            self.host_arrays[k] = self._host[k].numpy()
            self.int32_arrays[k] = self.host_arrays[k].view(np.int32)
        if not self.on_cuda:
            self._set_device(self._host[0])
        elif nbytes > self.device.numel():
            self._set_device(checked_empty(owner, (nbytes,), torch.uint8, f"a staging buffer of {nbytes} bytes",
                                           self.device.device))
        self.nbytes = max(self.nbytes, nbytes)
        return self.host_arrays[k]

    def acquire(self) -> int:
        """The buffer the next step writes, once the device has finished reading it."""
        if self._done is not None:
            self._done[self.current].wait()
        return self.current

    def upload(self, nbytes: int | None = None) -> None:
        """One non-blocking copy of the current buffer (its first `nbytes`) to the twin."""
        if self.on_cuda:
            n = self._host[self.current].numel() if nbytes is None else nbytes
            self.device[:n].copy_(self._host[self.current][:n], non_blocking=True)

    def restart(self) -> None:
        """The next step takes buffer 0 again (a manager's state starts over: its launches
        then use the buffers in the same order as the first time, and replay the same
        CUDA graphs)."""
        self.current = 0

    def enqueued(self) -> None:
        """Marks the current buffer's readers as enqueued; the next step takes the next buffer."""
        if self._done is not None:
            self._done[self.current].record()
        self.current = (self.current + 1) % self.depth

    @property
    def device_bytes(self) -> int:
        return self.device.numel() if self.on_cuda else 0

    @property
    def host_bytes(self) -> int:
        return sum(t.numel() for t in self._host)

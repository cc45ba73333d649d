"""What the two device-table designs (`gpu`, `hybrid`) share: block tables resident on
the device as one block table (`req_to_block[row, k]`), and a native step path
(`_C.DeviceStep`, csrc/device_step.h) whose host cost does not depend on the batch's shape.

The one difference between the two is where the blocks an update adds come from, which
the native step says (`block_source`, from the books a design keeps; csrc/device_step.h,
BlockSource): the hybrid design's C++ core allocates them on the host and the step
stages their ids; the gpu design takes them from a free stack on the device, which only
its kernels read.

Each launch stages its inputs in the next buffer of a ring of pinned host buffers (the
words `layout.py` names): a first-layer update and a release are deferred into it, and
the `pack_flash_attn_metadata` that follows sends all of it with one copy into a device
twin and one replay of a CUDA graph of the release, update and pack kernels, captured
for those kernels and the launch's grid (a power of two). (Kernels reading the words
where they are, in pinned memory, cost the device more than the copy: measured, H200.)
A first-layer step's update and pack are one kernel (`kernels_triton`). Any other call that reads the
device tables (a second update, inspection, synchronize) launches what is deferred
first, so every observable result is as if it had run at once. The host never waits for
the device except for a ring buffer `depth` launches old.

`warm_up()` compiles the kernels and captures a graph for every set of kernels and
every grid up to max_running_reqs: after it, no step compiles or captures. Without it,
the first launch of each kind runs eagerly and is captured for the next (counted in
`num_compiles`, `num_captures`). The metadata lands in one persistent buffer, laid out
as the cpu design lays it out; a step whose metadata does not fit grows it (and
captures again: the graphs address it).
"""

from __future__ import annotations

import dataclasses
import weakref
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from disagmoe import _C
from disagmoe.block_manager import kernels_torch
from disagmoe.block_manager import layout as L
from disagmoe.block_manager.base import DEFAULT_DEPTH, BlockManager, MemoryFootprint
from disagmoe.block_manager.buffers import MetadataBuffer, StagingBuffers, checked_empty, empty_int32
from disagmoe.config import CacheConfig, ModelConfig

if TYPE_CHECKING:
    from disagmoe.block_manager.kernels_triton import PackLaunch

KERNELS = ("auto", "triton", "torch")
HOST = torch.device("cpu")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401 (is it there?)
    except ImportError:
        return False
    return True


class DeviceTableManager(BlockManager):
    """The shared step path and construction. `kernels`: "triton" (CUDA only), "torch"
    (any device) or "auto" (triton where it can run). `cuda_graphs` replays the Triton
    launches from graphs. `pack_launch` is the Triton pack kernel's launch shape
    (`kernels_triton.PackLaunch`; None takes its default); it needs the Triton kernels.

    `req_to_block[row, k]` (int32, on the device) is the block of positions
    [k * block_size, (k + 1) * block_size) of the request in `row` (SGLang's
    `req_to_token` at block size 1). A design makes its books (`_make_books`)."""

    block_source: _C.BlockSource
    req_to_block: torch.Tensor
    free_blocks: torch.Tensor | None  # the device's free stack (DEVICE_STACK), else None

    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        max_running_reqs: int,
        device: torch.device | str | None = None,
        kernels: str = "auto",
        cuda_graphs: bool = True,
        pack_launch: PackLaunch | None = None,
    ) -> None:
        self._options = (kernels, cuda_graphs, pack_launch)  # read by _build, once the configs are checked
        super().__init__(model_config, cache_config, max_running_reqs, device)

    def _choose_kernels(self, kernels: str, pack_launch: Any) -> str:
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

    @abstractmethod
    def _make_books(self) -> Any:
        """The books, as `self._books`: a _C.RequestTable (gpu) or a _C.BlockBooks (hybrid)."""

    def _build(self) -> None:
        kernels, cuda_graphs, self._pack_launch = self._options
        self.kernels = self._choose_kernels(kernels, self._pack_launch)
        self.cuda_graphs = bool(cuda_graphs) and self.kernels == "triton"
        on_cuda = self.device.type == "cuda"
        self._step = _C.DeviceStep(
            self._make_books(), self.num_blocks, DEFAULT_DEPTH if on_cuda else 1, self.device.index if on_cuda else -1
        )
        self.block_source = self._step.block_source
        self.req_to_block = empty_int32(
            type(self).__name__,
            (self.max_running_reqs, self.max_width),
            f"the device block table of {self.max_running_reqs} x {self.max_width} blocks",
            self.device,
        ).zero_()
        self.free_blocks = None
        self.entry_block = None  # the gpu design's: each prefix-cache entry's block
        if self.block_source == L.DEVICE_STACK:
            self.entry_block = torch.zeros(self.num_blocks, dtype=torch.int32, device=self.device)
            # Taking from the top hands out block 0 first, as the C++ core does.
            initial = torch.arange(self.num_blocks - 1, -1, -1, dtype=torch.int32, device=self.device)
            self.free_blocks = initial.clone()
            self._step.set_free_stack(self.free_blocks, initial)
        self._start()

    def _start(self) -> None:
        """The step's launcher and its buffers."""
        ref = weakref.ref(self)  # (the step keeps its launcher: no cycle through it)
        self._step.set_launcher(lambda buffer, flags, grid: ref()._launch(buffer, flags, grid))  # type: ignore
        self._capture_stream: Any = None
        if self.kernels == "triton":
            from disagmoe.block_manager import kernels_triton

            launch = self._pack_launch or kernels_triton.PackLaunch()
            if not isinstance(launch, kernels_triton.PackLaunch):
                raise TypeError(f"pack_launch must be a kernels_triton.PackLaunch, got {launch!r}")
            self._triton = kernels_triton
            self._launch_shape = launch
        # On CUDA every launch copies its staged words into a device twin, which the kernels read.
        self._twin_needed = self.device.type == "cuda"
        # Staged ids: a decode step of every request and more (from the host books); a commit
        # of more grows them.
        ids = max(2 * self.max_running_reqs, 4096) if self.block_source == L.HOST_BOOKS else 0
        self._size_staging(L.staged_words(self.max_running_reqs, ids))
        layout = _C.metadata_layout(self.max_running_reqs, self.max_width, self.max_running_reqs)
        self._grow("device", layout.nbytes)

    # -- buffers -------------------------------------------------------------------------

    def _size_staging(self, words: int) -> None:
        """Ring buffers (and the device twin) of `words` words each."""
        on_cuda = self.device.type == "cuda"
        step = self._step
        if step.staging is not None:
            step.flush(self._stream())  # nothing staged stays in a buffer that goes
            step.wait_all()
        what = f"a staging buffer of {words} words"
        buffers = [
            checked_empty(type(self).__name__, (words,), torch.int32, what, HOST, pin_memory=on_cuda)
            for _ in range(step.depth)
        ]
        twin = (
            checked_empty(type(self).__name__, (words,), torch.int32, what, self.device) if self._twin_needed else None
        )
        # One native call takes them all, and forgets the graphs (they address the twin).
        step.set_staging(StagingBuffers(buffers, [w.numpy() for w in buffers], twin))

    def _grow(self, which: str, nbytes: int) -> None:
        """The staging buffers ("staging": a commit's) or the metadata buffer ("device": a
        pack's), to `nbytes` and more."""
        nbytes = (nbytes + nbytes // 2 + 63) // 64 * 64
        if which == "staging":
            self._size_staging(nbytes // 4)
            return
        out = checked_empty(
            type(self).__name__, (nbytes,), torch.uint8, f"a metadata buffer of {nbytes} bytes", self.device
        )
        buffer = MetadataBuffer(out)
        if self.kernels == "triton":
            buffer.kernels = self._triton.Kernels(
                self.req_to_block,
                self.free_blocks,
                self.block_source,
                buffer.out32,
                buffer.out64,
                self.block_size,
                self._launch_shape,
                self.entry_block,
            )
        # One native call takes the buffer, its views and kernels and its size, and forgets
        # the graphs (they address the buffer before).
        self._step.set_out(out, buffer)

    # -- launches ------------------------------------------------------------------------

    def _launch(self, buffer: int, flags: int, grid: int) -> None:
        """A launch that has no graph (the native step calls it): the kernels eagerly, and
        with CUDA graphs the capture of this launch for next time."""
        staging = self._step.staging
        if self.kernels == "torch":
            staged = staging.twin if self._twin_needed else staging.words[buffer]
            host = staging.host_words[buffer]
            views = None
            if flags & L.PACK:
                views = self._step.out.views(int(host[L.PACK_SIZE]), int(host[L.WIDTH]), int(host[L.NUM_TOKENS]))
            kernels_torch.launch(
                staged,
                host,
                flags,
                self.req_to_block,
                self.free_blocks,
                self.block_source,
                self.block_size,
                views,
                self.entry_block,
            )
            return
        before = self._triton.compiled()
        self._triton.launch(self._step.out.kernels, staging.twin, grid, flags)
        self._num_compiles += self._triton.compiled() - before
        if self.cuda_graphs:
            self._capture(flags, grid)

    def _capture(self, flags: int, grid: int) -> None:
        """A CUDA graph of the kernels of `flags` on `grid` programs, for the step to replay
        (whichever ring buffer the launch's words came from: they are in the twin)."""
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        stream = self._capture_stream
        kernels, twin = self._step.out.kernels, self._step.staging.twin
        with torch.cuda.stream(stream):
            _C.begin_capture(stream.cuda_stream)
            try:
                self._triton.launch(kernels, twin, grid, flags)
            except BaseException:
                _C.end_capture(stream.cuda_stream, False)
                raise
            graph = _C.end_capture(stream.cuda_stream, True)
        for buffer in range(self._step.depth):
            self._step.set_graph(flags, grid, buffer, graph)
        self._num_captures += 1

    def _warm_up(self, max_num_tokens: int) -> None:
        layout = _C.metadata_layout(self.max_running_reqs, self.max_width, max_num_tokens)
        if self._step.out.out.nbytes < layout.nbytes:
            self._grow("device", layout.nbytes)
        if self.block_source == L.HOST_BOOKS:  # room for the new ids of the largest step
            words = L.staged_words(self.max_running_reqs, max_num_tokens // self.block_size + self.max_running_reqs)
            if self._step.staged_capacity < words:
                self._size_staging(words)
        if self.kernels != "triton":
            return
        # Every kernel once, on a header of zeros (no work) and a scratch output: compiled.
        zeros = torch.zeros(L.HEADER, dtype=torch.int32, device=self.device)
        scratch = torch.zeros(64, dtype=torch.int64, device=self.device)
        k = dataclasses.replace(self._step.out.kernels, out32=scratch.view(torch.int32), out64=scratch)
        before = self._triton.compiled()
        for flags in self._step.flag_sets:
            self._triton.launch(k, zeros, 1, flags)
        torch.cuda.synchronize(self.device)
        self._num_compiles += self._triton.compiled() - before
        if not self.cuda_graphs:
            return
        grids = [1 << b for b in range(L.grid_of(self.max_running_reqs).bit_length())]
        for flags in self._step.flag_sets:
            for grid in grids:
                if not self._step.captured(flags, grid):
                    self._capture(flags, grid)
        torch.cuda.synchronize(self.device)

    # -- the step hooks ---------------------------------------------------------------------

    def _release(self, req_ids: Any) -> None:
        self._step.release(req_ids, self._stream())

    def _reset(self) -> None:
        self._step.reset(self._stream())

    def _flush(self) -> None:
        self._step.flush(self._stream())

    def flush(self) -> None:
        """Launches a deferred update or release, if any (see the module docstring)."""
        with self._guard:
            self._flush()

    def _device_rows(self) -> np.ndarray:
        """The block table on the host, once what is deferred has run (a read: allowed while
        another call on the manager reads its arguments)."""
        self._flush()
        return self.req_to_block.cpu().numpy()

    def _host_table_bytes(self) -> int:
        """Host bytes of block tables and free blocks: none here (the hybrid design's core
        keeps them on the host too)."""
        return 0

    def memory_footprint(self) -> MemoryFootprint:
        on_cuda = self.device.type == "cuda"
        ring = self._step.staging
        staging = sum(w.nbytes for w in ring.words)  # pinned host memory on CUDA
        # The stack, the initial one and entry_block (the prefix cache's blocks).
        stacks = 3 * 4 * self.num_blocks if self.block_source == L.DEVICE_STACK else 0
        tables = self.req_to_block.nbytes + stacks
        device = tables + self._step.out.out.nbytes + (ring.twin.nbytes if ring.twin is not None else 0)
        return MemoryFootprint(
            device_bytes=device + (0 if on_cuda else staging),
            host_bytes=self._host_table_bytes() + (staging if on_cuda else 0),
        )

"""The native steps as the managers build them (`_C.HostStep` for cpu, `_C.DeviceStep` for
gpu and hybrid), on torch's CPU device, with every buffer where a test can read it: the
host step's metadata buffer, and the device step's staged words at each launch.

A rig grows its buffers when the step asks (`grown` lists the requests), as a manager
does; the device rig's launcher records each launch instead of running kernels.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from disagmoe import _C, PAD_BLOCK_ID
from disagmoe.block_manager import layout as L
from disagmoe.block_manager.buffers import StagingBuffers


def _weak(obj, method: str) -> Callable:
    """obj.method, through a weak reference: the step that keeps it keeps no cycle."""
    ref = weakref.ref(obj)
    return lambda *args: getattr(ref(), method)(*args)


@dataclass
class Metadata:
    """A pack's arrays, as numpy arrays read back from the bytes of the metadata buffer."""

    seq_lens: np.ndarray
    context_lens: np.ndarray
    query_start_loc: np.ndarray
    seq_start_loc: np.ndarray
    block_tables: np.ndarray
    slot_mapping: np.ndarray


def read_metadata(out: np.ndarray, batch_size: int, width: int, num_tokens: int) -> Metadata:
    """The arrays of a pack of this shape in the bytes `out`, laid out by metadata_layout."""
    layout = _C.metadata_layout(batch_size, width, num_tokens)

    def at(offset: int, dtype, count: int) -> np.ndarray:
        return out[offset : offset + count * np.dtype(dtype).itemsize].view(dtype).copy()

    return Metadata(
        at(layout.seq_lens, np.int32, batch_size),
        at(layout.context_lens, np.int32, batch_size),
        at(layout.query_start_loc, np.int32, batch_size + 1),
        at(layout.seq_start_loc, np.int32, batch_size + 1),
        at(layout.block_tables, np.int32, batch_size * width).reshape(batch_size, width),
        at(layout.slot_mapping, np.int64, num_tokens),
    )


def expected_metadata(books, block_size: int, req_ids: list[int], query_lens: list[int], width: int) -> Metadata:
    """What a pack of these running requests writes, from the books' blocks and lengths."""
    seq = np.array([books.seq_len(r) for r in req_ids], dtype=np.int32)
    query = np.array(query_lens, dtype=np.int32)
    tables = np.full((len(req_ids), width), PAD_BLOCK_ID, dtype=np.int32)
    slots: list[int] = []
    for i, r in enumerate(req_ids):
        blocks = books.block_ids(r)
        tables[i, : len(blocks)] = blocks
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(seq[i] - query[i], seq[i])]
    starts = np.concatenate([[0], np.cumsum(query)]).astype(np.int32)
    seq_starts = np.concatenate([[0], np.cumsum(seq)]).astype(np.int32)
    return Metadata(seq, seq - query, starts, seq_starts, tables, np.array(slots, dtype=np.int64))


class Rig:
    """What both rigs call the same way: an update (plan, then commit) and a pack, on
    stream 0."""

    step: Any

    def update(self, req_ids, num_prefill: int, lens) -> list[int]:
        seq_lens = self.step.plan(req_ids, num_prefill, lens)
        self.step.commit(0)
        return seq_lens

    def pack(self, req_ids, num_prefill: int, lens, layer: int = 0, known: int = -1) -> tuple:
        return self.step.pack(req_ids, num_prefill, lens, layer, 0, known)


class HostRig(Rig):
    """A `_C.HostStep` over fresh `_C.BlockBooks`, as `CPUBlockManager` builds it."""

    def __init__(self, block_size: int = 4, num_blocks: int = 8, max_seq_len: int = 32, max_reqs: int = 3) -> None:
        self.block_size = block_size
        self.books = _C.BlockBooks(block_size, num_blocks, max_seq_len, max_reqs)
        self.step = _C.HostStep(self.books, 1, -1)
        self.table = torch.zeros(max_reqs * self.books.max_blocks_per_seq, dtype=torch.int32)
        self.grown: list[tuple[str, int]] = []
        self.set_head(64)
        self.set_out(64)
        self.step.set_grow(_weak(self, "grow"))

    def set_head(self, nbytes: int) -> None:
        self.head = torch.zeros(nbytes, dtype=torch.uint8)
        self.step.set_buffer(0, self.table, self.head)

    def set_out(self, nbytes: int) -> None:
        self.out = torch.full((nbytes,), 9, dtype=torch.uint8)
        self.step.set_out(self.out)

    def grow(self, which: str, nbytes: int) -> None:
        self.grown.append((which, nbytes))
        (self.set_head if which == "host" else self.set_out)(nbytes)

    def metadata(self, stats) -> Metadata:
        return read_metadata(self.out.numpy(), stats.batch_size, stats.width, stats.num_tokens)

    def slots(self, req_id: int) -> list[int]:
        blocks, bs = self.books.block_ids(req_id), self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(self.books.seq_len(req_id))]


@dataclass
class Launch:
    """One launch the device step asked for: its flags, its grid, its staged words."""

    flags: int
    grid: int
    words: np.ndarray

    def columns(self, at: int, stride: int, size: int, count: int) -> list[list[int]]:
        """`count` columns of the region whose start and stride are the header words at, stride."""
        start, step = int(self.words[at]), int(self.words[stride])
        return [self.words[start + k * step : start + k * step + size].tolist() for k in range(count)]

    def plan(self) -> list[list[int]]:
        """Rows, old lengths, new lengths, block offsets (size + 1) of the staged update."""
        n = int(self.words[L.UPDATE_SIZE])
        rows, old, new, offsets = self.columns(L.PLAN_AT, L.PLAN_STRIDE, n + 1, 4)
        return [rows[:n], old[:n], new[:n], offsets]

    def new_ids(self, count: int) -> list[int]:
        at = int(self.words[L.IDS_AT])
        return self.words[at : at + count].tolist()

    def lookup(self) -> list[list[int]]:
        """Rows, lengths, query lengths, query starts, seq starts of the pack's batch."""
        return self.columns(L.LOOKUP_AT, L.LOOKUP_STRIDE, int(self.words[L.PACK_SIZE]), 5)

    def release(self) -> list[list[int]]:
        """Rows, lengths, block offsets of the staged release."""
        return self.columns(L.RELEASE_AT, L.RELEASE_STRIDE, int(self.words[L.RELEASE_SIZE]), 3)


class DeviceRig(Rig):
    """A `_C.DeviceStep` as `GPUBlockManager` (DEVICE_STACK: over a `_C.RequestTable`, with
    a free stack) or `HybridBlockManager` (HOST_BOOKS: over `_C.BlockBooks`) builds it,
    with `ids` words for staged block ids; its launches are recorded, not run."""

    def __init__(
        self,
        source: _C.BlockSource,
        block_size: int = 4,
        num_blocks: int = 16,
        max_seq_len: int = 32,
        max_reqs: int = 3,
        ids: int = 64,
    ) -> None:
        self.max_reqs = max_reqs
        if source == L.DEVICE_STACK:
            self.books = _C.RequestTable(max_reqs, max_seq_len, block_size)
            self.step = _C.DeviceStep(self.books, num_blocks, 1, -1)
            self.initial = torch.arange(num_blocks - 1, -1, -1, dtype=torch.int32)
            self.stack = self.initial.clone()
            self.step.set_free_stack(self.stack, self.initial)
        else:
            self.books = _C.BlockBooks(block_size, num_blocks, max_seq_len, max_reqs)
            self.step = _C.DeviceStep(self.books, 0, 1, -1)
        self.launches: list[Launch] = []
        self.on_launch: Callable[[], object] | None = None
        self.grown: list[tuple[str, int]] = []
        self.set_words(_C.staged_words(max_reqs, ids))
        self.set_out(1 << 16)
        self.step.set_launcher(_weak(self, "launch"))
        self.step.set_grow(_weak(self, "grow"))

    def set_words(self, count: int) -> None:
        self.words = torch.zeros(count, dtype=torch.int32)
        self.step.set_staging(StagingBuffers([self.words], [self.words.numpy()], None))

    def set_out(self, nbytes: int) -> None:
        self.out = torch.zeros(nbytes, dtype=torch.uint8)
        self.step.set_out(self.out, None)

    def launch(self, buffer: int, flags: int, grid: int) -> None:
        if self.on_launch is not None:
            self.on_launch()
        self.launches.append(Launch(flags, grid, self.words.numpy().copy()))

    def grow(self, which: str, nbytes: int) -> None:
        self.grown.append((which, nbytes))
        if which == "staging":
            self.step.flush(0)  # as the managers do: nothing staged stays in a buffer that goes
            self.set_words(nbytes // 4)
        else:
            self.set_out(nbytes)

"""Benchmark workloads shared by the command-line benchmark and the asv suite.

The grid, managers sized for a grid point, decode states that take steps and
rebuild themselves before crossing max_seq_len, the equivalence check of the two
backends, and side-by-side timing of decode steps, every call ending with
`manager.synchronize()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Callable, Sequence

import torch

from disagmoe import BACKENDS, BatchMetadata, BlockManager, CacheConfig, ModelConfig
from disagmoe.block_manager.base import resolve_device

BACKEND_NAMES = ("cpu", "gpu")
BATCH_SIZES = (16, 32, 64, 128, 256)
SEQ_LENS = (128, 256, 512, 1024)
QUICK_BATCH_SIZES = (16, 256)
QUICK_SEQ_LENS = (128, 1024)
CHECK_BLOCK_SIZE = 16  # both backends hand out the same block ids at this block size
DECODE_STEPS = 16  # first-layer steps a decode state takes before it is rebuilt (untimed)
FIRST_LAYER, LATER_LAYER = 0, 1
OPS = ("update_block_table", "pack_flash_attn_metadata")


# -- workloads (shared with the asv suite) -------------------------------------------------


def default_device() -> torch.device:
    """The CUDA device when there is one, else torch's CPU device (as the managers do)."""
    return resolve_device(None)


def device_name(device: torch.device) -> str:
    """The device and what it is, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cuda = "" if torch.cuda.is_available() else ", no CUDA on this machine"
    return f"{device} (torch's CPU device{cuda})"


def limit_cpu_threads(device: torch.device) -> None:
    """One intra-op thread when the managers run on torch's CPU device: their small
    torch operations gain nothing from more, and waking the thread pool made timings
    on a busy 2-core machine swing twentyfold."""
    if device.type == "cpu":
        torch.set_num_threads(1)


def make_manager(
    backend: str, batch_size: int, seq_len: int, device: torch.device | str | None = None, block_size: int | None = None
) -> BlockManager:
    """A manager sized for B requests of up to `seq_len + DECODE_STEPS` tokens.

    `block_size=None` takes the backend's default (16 for each).
    """
    cls = BACKENDS[backend]
    block_size = block_size or cls.default_block_size
    max_seq_len = seq_len + DECODE_STEPS
    num_blocks = batch_size * -(-max_seq_len // block_size)
    model = ModelConfig(layer_ids=(FIRST_LAYER, LATER_LAYER), max_seq_len=max_seq_len, max_batch_size_attn=batch_size)
    return cls(model, CacheConfig(block_size, num_blocks), batch_size, device=device)


def prefill_batch(batch_size: int, seq_len: int) -> BatchMetadata:
    return BatchMetadata(FIRST_LAYER, list(range(batch_size)), batch_size, [seq_len] * batch_size)


def decode_batch(batch_size: int, layer_id: int = FIRST_LAYER) -> BatchMetadata:
    return BatchMetadata(layer_id, list(range(batch_size)), 0, [])


class DecodeState:
    """B requests that each hold `seq_len` tokens, and the batches of their decode step.

    `make_room()` rebuilds the state (reset + prefill) once `DECODE_STEPS`
    first-layer steps were taken, so lengths stay within [L, L + DECODE_STEPS]
    and a block-size-16 manager allocates on one step in 16.
    """

    def __init__(self, manager: BlockManager, batch_size: int, seq_len: int) -> None:
        self.manager = manager
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = manager.device
        self.first = decode_batch(batch_size, FIRST_LAYER)
        self.later = decode_batch(batch_size, LATER_LAYER)
        self.rebuild()

    def rebuild(self) -> None:
        self.manager.reset_state()
        self.manager.update_block_table(prefill_batch(self.batch_size, self.seq_len))
        self.steps = 0
        self.manager.synchronize()  # deferred work included: the next timed call starts clean

    def make_room(self) -> None:
        if self.steps >= DECODE_STEPS:
            self.rebuild()

    def step(self) -> None:
        """One first-layer decode update (the caller times and synchronises it)."""
        self.manager.update_block_table(self.first)
        self.steps += 1

    def warm_up(self, steps: int = DECODE_STEPS) -> None:
        """Takes `steps` decode steps as the timed calls do (first-layer update, pack,
        later-layer update, each synchronised): Triton compiles, CUDA graphs are
        captured, buffers reach their size, caches warm. Then rebuilds the state."""
        for _ in range(steps):
            self.make_room()
            for call in (
                self.step,
                lambda: self.manager.pack_flash_attn_metadata(self.first),
                lambda: self.manager.update_block_table(self.later),
            ):
                call()
                self.manager.synchronize()
        self.rebuild()


def decode_state(
    backend: str, batch_size: int, seq_len: int, device: torch.device | str | None = None, block_size: int | None = None
) -> DecodeState:
    """A warmed-up decode state on a fresh manager."""
    state = DecodeState(make_manager(backend, batch_size, seq_len, device, block_size), batch_size, seq_len)
    state.warm_up()
    return state


# -- equivalence ----------------------------------------------------------------------------


class BackendMismatch(AssertionError):
    """The two backends disagree on a workload's metadata."""


def _snapshot(metadata) -> dict:
    return {
        field.name: (value.cpu().clone() if isinstance(value, torch.Tensor) else value)
        for field in dataclasses.fields(metadata)
        for value in (getattr(metadata, field.name),)
    }


def _trace(backend: str, batch_size: int, seq_len: int, device, block_size: int) -> dict[str, dict]:
    """What a prefill step, then a decode step at the first and a later layer, produce."""
    manager = make_manager(backend, batch_size, seq_len, device, block_size)
    prefill, first, later = (
        prefill_batch(batch_size, seq_len),
        decode_batch(batch_size),
        decode_batch(batch_size, LATER_LAYER),
    )
    manager.update_block_table(prefill)
    trace = {"prefill pack": _snapshot(manager.pack_flash_attn_metadata(prefill))}
    manager.update_block_table(first)
    trace["decode pack"] = _snapshot(manager.pack_flash_attn_metadata(first))
    manager.update_block_table(later)
    trace["decode update"] = {"seq_lens (first layer)": first.seq_lens, "seq_lens (later layer)": later.seq_lens}
    manager.check_integrity()
    return trace


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def check_equivalent(
    batch_size: int, seq_len: int, device: torch.device | str | None = None, block_size: int = CHECK_BLOCK_SIZE
) -> None:
    """Raises BackendMismatch unless both backends, at the same block size, produce
    identical metadata (every field) and lengths for the grid point's workloads."""
    expected, got = (_trace(backend, batch_size, seq_len, device, block_size) for backend in BACKEND_NAMES)
    for step, fields in expected.items():
        for name, value in fields.items():
            if not _same(value, got[step][name]):
                raise BackendMismatch(
                    f"batch_size={batch_size} seq_len={seq_len} block_size={block_size}: "
                    f"{step}: {name} differs: cpu {value!r:.200} != gpu {got[step][name]!r:.200}"
                )


# -- side-by-side timing --------------------------------------------------------------------


def no_label(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _timed(call: Callable[[], object], manager: BlockManager) -> float:
    """Seconds of `call` until the device has finished its work, deferred work included."""
    start = time.perf_counter()
    call()
    manager.synchronize()
    return time.perf_counter() - start


def time_decode_steps(
    states: dict[str, DecodeState],
    iterations: int,
    label: Callable[[str], contextlib.AbstractContextManager] = no_label,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of `iterations` decode steps on each backend: the first-layer
    `update_block_table`, then `pack_flash_attn_metadata`, each call ending with the
    device synchronised. Backends take turns, in alternating order."""
    samples: dict[str, dict[str, list[float]]] = {backend: {op: [] for op in OPS} for backend in states}
    order = list(states)
    for i in range(iterations):
        for backend in order if i % 2 == 0 else order[::-1]:
            state = states[backend]
            with label(f"setup: {backend} make_room"):
                state.make_room()
            with label(f"timed: {backend} update_block_table"):
                samples[backend]["update_block_table"].append(_timed(state.step, state.manager))
            pack = lambda: state.manager.pack_flash_attn_metadata(state.first)  # noqa: E731
            with label(f"timed: {backend} pack_flash_attn_metadata"):
                samples[backend]["pack_flash_attn_metadata"].append(_timed(pack, state.manager))
    return samples


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }

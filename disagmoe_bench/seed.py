"""The seed's table, on the serving harness: one decode step of B requests holding L tokens,
its first-layer `update_block_table` and its `pack_flash_attn_metadata` timed apart, each
call until the device is done (`python -m disagmoe_bench` without `--workload`, and the
asv suite's time_ and ratio classes through `benchmarks/common.workloads`).

The workload is the serving decode (`DecodeWorkload`, two layers, lengths="cycle": the
requests are rebuilt at L every `DECODE_STEPS` steps, so lengths stay within [L, L +
16]); managers are sized by `variants.make_manager`; the equivalence check compares
snapshots as `points.check_variants` does; each call is timed by `timing.timed_call`.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Callable, Sequence

import torch

from disagmoe.batch import BatchMetadata
from disagmoe.block_manager import DESIGNS as REGISTRY
from disagmoe.block_manager import BlockManager
from disagmoe.block_manager import design as design_of
from disagmoe_bench.points import VariantMismatch, same, snapshot
from disagmoe_bench.timing import default_device, device_name, limit_cpu_threads, timed_call
from disagmoe_bench.variants import Variant
from disagmoe_bench.variants import make_manager as make_variant_manager
from disagmoe_bench.workloads import CYCLE_STEPS, DecodeWorkload

DESIGNS = tuple(REGISTRY)  # the registry's order: cpu and gpu (the seed's table), then the others
BATCH_SIZES = (16, 32, 64, 128, 256)
SEQ_LENS = (128, 256, 512, 1024)
QUICK_BATCH_SIZES = (16, 256)
QUICK_SEQ_LENS = (128, 1024)
CHECK_BLOCK_SIZE = 16  # every design hands out the same block ids at this block size
DECODE_STEPS = CYCLE_STEPS  # first-layer steps a decode state takes before it is rebuilt (untimed)
FIRST_LAYER, LATER_LAYER = 0, 1
OPS = ("update_block_table", "pack_flash_attn_metadata")

__all__ = [
    "BATCH_SIZES",
    "CHECK_BLOCK_SIZE",
    "DECODE_STEPS",
    "DESIGNS",
    "FIRST_LAYER",
    "LATER_LAYER",
    "OPS",
    "QUICK_BATCH_SIZES",
    "QUICK_SEQ_LENS",
    "SEQ_LENS",
    "DecodeState",
    "VariantMismatch",
    "check_equivalent",
    "decode_batch",
    "decode_state",
    "default_device",
    "device_name",
    "limit_cpu_threads",
    "make_manager",
    "no_label",
    "prefill_batch",
    "summarize",
    "time_decode_steps",
    "workload",
]


def workload(batch_size: int, seq_len: int) -> DecodeWorkload:
    """The seed's decode: B requests at L tokens, two layers, rebuilt every DECODE_STEPS steps."""
    return DecodeWorkload(batch_size, seq_len, num_layers=2, lengths="cycle")


def make_manager(
    name: str, batch_size: int, seq_len: int, device: torch.device | str | None = None, block_size: int | None = None
) -> BlockManager:
    """A manager of the design `name`, sized for B requests of up to `seq_len + DECODE_STEPS` tokens.

    `block_size=None` takes the design's default (16 for each).
    """
    size = block_size or design_of(name).default_block_size
    return make_variant_manager(Variant(name, size), workload(batch_size, seq_len), DECODE_STEPS, device)


def prefill_batch(batch_size: int, seq_len: int) -> BatchMetadata:
    return BatchMetadata(FIRST_LAYER, list(range(batch_size)), batch_size, [seq_len] * batch_size)


def decode_batch(batch_size: int, layer_id: int = FIRST_LAYER) -> BatchMetadata:
    return BatchMetadata(layer_id, list(range(batch_size)), 0, [])


class DecodeState:
    """B requests that each hold `seq_len` tokens, and the batches of their decode step.

    `make_room()` rebuilds the state (the workload's start: reset + prefill) once
    `DECODE_STEPS` first-layer steps were taken, so lengths stay within [L, L +
    DECODE_STEPS] and a block-size-16 manager allocates on one step in 16.
    """

    def __init__(self, manager: BlockManager, batch_size: int, seq_len: int) -> None:
        self.manager = manager
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = manager.device
        self.workload = workload(batch_size, seq_len)
        self.first, self.later = self.workload.step.layers
        self.rebuild()

    def rebuild(self) -> None:
        """The workload's start: reset, prefill, the device synchronised (deferred work
        included: the next timed call starts clean)."""
        self.workload.start(self.manager)
        self.steps = 0

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
    design: str, batch_size: int, seq_len: int, device: torch.device | str | None = None, block_size: int | None = None
) -> DecodeState:
    """A warmed-up decode state on a fresh manager."""
    state = DecodeState(make_manager(design, batch_size, seq_len, device, block_size), batch_size, seq_len)
    state.warm_up()
    return state


# -- equivalence ----------------------------------------------------------------------------


def _trace(design: str, batch_size: int, seq_len: int, device, block_size: int) -> dict[str, dict]:
    """What a prefill step, then a decode step at the first and a later layer, produce."""
    manager = make_manager(design, batch_size, seq_len, device, block_size)
    prefill, first, later = (
        prefill_batch(batch_size, seq_len),
        decode_batch(batch_size),
        decode_batch(batch_size, LATER_LAYER),
    )
    manager.update_block_table(prefill)
    trace = {"prefill pack": snapshot(manager.pack_flash_attn_metadata(prefill))}
    manager.update_block_table(first)
    trace["decode pack"] = snapshot(manager.pack_flash_attn_metadata(first))
    manager.update_block_table(later)
    trace["decode update"] = {"seq_lens (first layer)": first.seq_lens, "seq_lens (later layer)": later.seq_lens}
    manager.check_integrity()
    return trace


def check_equivalent(
    batch_size: int,
    seq_len: int,
    device: torch.device | str | None = None,
    block_size: int = CHECK_BLOCK_SIZE,
    designs: Sequence[str] = DESIGNS,
) -> None:
    """Raises VariantMismatch unless every design, at the same block size, produces the
    metadata (every field) and lengths of the first for the grid point's workloads."""
    designs = tuple(designs)
    if not designs:
        raise ValueError("designs=(): name at least one design to check")
    expected = _trace(designs[0], batch_size, seq_len, device, block_size)
    for design in designs[1:]:
        got = _trace(design, batch_size, seq_len, device, block_size)
        for step, fields in expected.items():
            for name, value in fields.items():
                if not same(value, got[step][name]):
                    raise VariantMismatch(
                        f"batch_size={batch_size} seq_len={seq_len} block_size={block_size}: {step}: {name} "
                        f"differs: {designs[0]} {value!r:.200} != {design} {got[step][name]!r:.200}"
                    )


# -- side-by-side timing --------------------------------------------------------------------


def no_label(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def time_decode_steps(
    states: dict[str, DecodeState],
    iterations: int,
    label: Callable[[str], contextlib.AbstractContextManager] = no_label,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of `iterations` decode steps of each state: the first-layer
    `update_block_table`, then `pack_flash_attn_metadata`, each call ending with the
    device synchronised (`timing.timed_call`). States take turns, in alternating order.
    A state is anything with `make_room`, `step`, `first` and a `manager` that packs and
    synchronises (the asv suite's reference work is one)."""
    samples: dict[str, dict[str, list[float]]] = {name: {op: [] for op in OPS} for name in states}
    order = list(states)
    for i in range(iterations):
        for name in order if i % 2 == 0 else order[::-1]:
            state = states[name]
            with label(f"setup: {name} make_room"):
                state.make_room()
            synchronize = state.manager.synchronize
            with label(f"timed: {name} update_block_table"):
                samples[name]["update_block_table"].append(timed_call(synchronize, state.step)[0])
            with label(f"timed: {name} pack_flash_attn_metadata"):
                pack = state.manager.pack_flash_attn_metadata
                samples[name]["pack_flash_attn_metadata"].append(timed_call(synchronize, pack, state.first)[0])
    return samples


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }

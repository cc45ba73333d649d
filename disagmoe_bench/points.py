"""The serving grid, and one grid point measured: the variants checked against each other,
then timed side by side in each timing mode."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Sequence

import torch

from disagmoe_bench.timing import Forward, Replay, measure, steps_needed
from disagmoe_bench.variants import BASELINE, Variant, make_manager
from disagmoe_bench.workloads import DecodeWorkload, TraceConfig, TraceWorkload

BATCH_SIZES = (16, 64, 256, 1024)
CONTEXTS = (1024, 8192, 65536)
TRACE_RUNNING = (64, 256, 1024)
TRACE_PROMPTS = (2048, 16384, 65536)
QUICK_BATCH_SIZES = (16, 64)
QUICK_CONTEXTS = (1024, 8192)
QUICK_TRACE_RUNNING = (64, 256)
QUICK_TRACE_PROMPTS = (2048, 16384)

PRIMARY = {"synced": "wall_us", "pipelined": "wall_us", "busy": "added_us"}
"""The figure each mode's speedups and maps compare."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long each mode runs: `warmup` untimed steps, then `windows` windows of `window` steps."""

    window: int = 48
    windows: int = 5
    warmup: int = 16
    forward_us: float = 300.0

    @property
    def num_steps(self) -> int:
        return steps_needed(self.window, self.windows, self.warmup)


QUICK_TIMING = Timing(window=8, windows=3, warmup=4)


class VariantMismatch(AssertionError):
    """Two variants disagree on a workload's metadata."""


def decode_point(batch_size: int, context: int, num_layers: int = 1, lengths: str = "grow") -> Callable:
    """A factory of the decode workload of one grid point: `factory(num_steps)`."""
    return lambda num_steps: DecodeWorkload(batch_size, context, num_layers, lengths)


def trace_point(config: TraceConfig) -> Callable:
    return lambda num_steps: TraceWorkload(config, num_steps)


def snapshot(metadata, tables: bool = True) -> dict:
    """Every field of a FlashAttentionMetadata, tensors cloned (block tables, slots and the
    block size left out unless `tables`: variants of other block sizes differ there)."""
    out = {}
    for field in dataclasses.fields(metadata):
        value = getattr(metadata, field.name)
        if field.name in ("block_tables", "slot_mapping", "block_size") and not tables:
            continue
        out[field.name] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


def same(a, b) -> bool:
    """Equal values; tensors of one dtype and shape, equal element by element."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b.to(a.device)))
        )
    return a == b


def metadata_bytes(metadata) -> int:
    """Bytes of a FlashAttentionMetadata's tensors (what the cpu design copies per pack)."""
    values = (getattr(metadata, field.name) for field in dataclasses.fields(metadata))
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def check_variants(replays: dict[str, Replay], variants: dict[str, Variant], steps: int = 2) -> dict[str, int]:
    """Raises VariantMismatch unless, over the workload's first `steps` steps, every
    variant gives the same lengths and metadata, block tables and slots included
    between variants of the same block size (they hand out the same blocks).
    Returns each variant's metadata bytes of its last first-layer pack."""
    sizes = [v.block_size for v in variants.values()]
    seen: dict[str, list] = {}
    nbytes: dict[str, int] = {}
    for name, replay in replays.items():
        tables = sizes.count(variants[name].block_size) > 1
        replay.start()
        packs = []
        for _ in range(steps):
            step = replay.workload.step_at(replay.position)
            if step.release:
                replay.manager.release_seqs(step.release)
            for match in step.matches:
                match.run(replay.manager)
            for k, batch in enumerate(step.layers):
                replay.manager.update_block_table(batch)
                metadata = replay.manager.pack_flash_attn_metadata(batch)
                if k == 0:
                    nbytes[name] = metadata_bytes(metadata)
                packs.append(snapshot(metadata, tables))
            replay.position += 1
        replay.manager.check_integrity()
        seen[name] = packs
    names = list(seen)
    for name in names[1:]:
        for other in names[: names.index(name)]:
            for k, (a, b) in enumerate(zip(seen[other], seen[name])):
                for field in a.keys() & b.keys():
                    if not same(a[field], b[field]):
                        raise VariantMismatch(
                            f"{replays[name].workload.label()}: pack {k}: {field} differs: "
                            f"{other} {a[field]!r:.200} != {name} {b[field]!r:.200}"
                        )
    return nbytes


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_point(
    factory: Callable,
    variants: Sequence[Variant],
    modes: Sequence[str],
    timing: Timing,
    device: torch.device,
    forward: Forward | None = None,
    on_window: Callable[[], None] | None = None,
    check: bool = True,
) -> list[dict]:
    """One grid point in every mode: a list of one result per mode (see `measure`), each
    with the workload's description, the variants' medians of their windows, the
    distribution of their steps' host times ("host_step_us": p50, p90, p99, max) and the
    speedups over the baseline (cpu-bs16): its figure over the variant's, > 1 where the
    variant is faster."""
    workload = factory(timing.num_steps)
    by_name = {v.name: v for v in variants}
    replays = {v.name: Replay(make_manager(v, workload, timing.num_steps, device), workload) for v in variants}
    nbytes = check_variants(replays, by_name) if check else {}
    results = []
    for mode in modes:
        measured = measure(replays, mode, timing.window, timing.windows, timing.warmup, forward, on_window)
        result = {
            "workload": workload.describe(),
            "mode": mode,
            **dataclasses.asdict(timing),
            "steps_per_window": measured["steps_per_window"],
            "primary": PRIMARY[mode],
            "metadata_bytes": nbytes,
            "variants": {},
        }
        if mode == "busy":
            result["forward_us"] = measured["forward_us"]
            result["forward_host_us"] = measured["forward_host_us"]
            result["forward_median_us"] = median(measured["forward_us"])
        for name, samples in measured["runners"].items():
            v = by_name[name]
            result["variants"][name] = {
                "design": v.design,
                "block_size": v.block_size,
                **samples,
                "median": {key: median(values) for key, values in samples.items() if key != "host_step_us"},
            }
        baseline = result["variants"].get(BASELINE.name)
        if baseline is not None:
            key = PRIMARY[mode]
            result["speedup"] = {
                name: _ratio(baseline["median"][key], r["median"][key])
                for name, r in result["variants"].items()
                if name != BASELINE.name
            }
        results.append(result)
    for replay in replays.values():
        replay.manager.reset_state()
    return results


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None

"""The variants the serving benchmarks compare: each a design at a block size, as the
registry lists them (`disagmoe.block_manager.registry`: every design at each of its
benchmark block sizes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disagmoe.block_manager import DESIGNS, BlockManager, design
from disagmoe.config import CacheConfig, ModelConfig


@dataclass(frozen=True)
class Variant:
    """The design `design` at `block_size`, named e.g. "gpu-bs16"."""

    design: str
    block_size: int

    @property
    def name(self) -> str:
        return f"{self.design}-bs{self.block_size}"


# The registry's designs at their benchmark block sizes: the cpu design at its block size,
# the gpu design token level (SGLang's way) and paged at the same block size, and the
# hybrid design: a same-block-size comparison of all three designs always stands beside
# the token-level one. The first is the baseline every speedup divides.
VARIANTS = tuple(Variant(d.name, size) for d in DESIGNS.values() for size in d.block_sizes)
BASELINE = VARIANTS[0]
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def variant(name: str) -> Variant:
    """The variant named `name` ("<design>-bs<block size>", any design and block size)."""
    prefix, sep, size = name.rpartition("-bs")
    if not sep or prefix not in DESIGNS or not size.isdigit() or int(size) < 1:
        raise ValueError(
            f"variant {name!r} is not <design>-bs<block size> with a design of "
            f"{list(DESIGNS)}, e.g. {', '.join(VARIANT_NAMES)}"
        )
    return Variant(prefix, int(size))


def make_manager(v: Variant, workload, num_steps: int, device: torch.device | str | None) -> BlockManager:
    """A manager sized for `num_steps` steps of `workload`: every request may reach
    max_seq_len at once (no step of the workload exhausts the pool); a workload that names
    its pool (`pool_blocks`: a replay with a prefix cache, whose evictions are its
    scheduler's) gets exactly that pool, at the scheduler's block size only (ValueError
    naming the variant otherwise)."""
    max_seq_len, max_reqs = workload.sizes(num_steps)
    model = ModelConfig(layer_ids=workload.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_reqs)
    num_blocks = max_reqs * -(-max_seq_len // v.block_size)
    pool_blocks = getattr(workload, "pool_blocks", None)
    if pool_blocks is not None:
        if v.block_size != workload.config.block_size:
            raise ValueError(
                f"variant {v.name}: a replay with a prefix cache runs at its scheduler's block size "
                f"{workload.config.block_size} (the cache's matches and evictions are counted in its blocks)"
            )
        num_blocks = pool_blocks
    return design(v.design).cls(model, CacheConfig(v.block_size, num_blocks), max_reqs, device=device)

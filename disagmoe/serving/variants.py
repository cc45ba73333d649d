"""The designs the serving benchmarks compare, each a backend at a block size."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disagmoe.block_manager import BACKENDS
from disagmoe.block_manager.base import BlockManager
from disagmoe.config import CacheConfig, ModelConfig


@dataclass(frozen=True)
class Variant:
    """`backend` at `block_size`, named e.g. "gpu-bs16"."""

    backend: str
    block_size: int

    @property
    def name(self) -> str:
        return f"{self.backend}-bs{self.block_size}"


# The cpu backend at its block size, the gpu backend token level (SGLang's way) and paged
# at the same block size, and the hybrid backend: a same-block-size comparison of all
# three designs always stands beside the token-level one.
VARIANTS = (Variant("cpu", 16), Variant("gpu", 1), Variant("gpu", 16), Variant("hybrid", 16))
BASELINE = VARIANTS[0]
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def variant(name: str) -> Variant:
    """The variant named `name` ("<backend>-bs<block size>", any backend and block size)."""
    backend, sep, size = name.rpartition("-bs")
    if not sep or backend not in BACKENDS or not size.isdigit() or int(size) < 1:
        raise ValueError(
            f"variant {name!r} is not <backend>-bs<block size> with a backend of "
            f"{sorted(BACKENDS)}, e.g. {', '.join(VARIANT_NAMES)}"
        )
    return Variant(backend, int(size))


def make_manager(v: Variant, workload, num_steps: int, device: torch.device | str | None) -> BlockManager:
    """A manager sized for `num_steps` steps of `workload`: every request may reach
    max_seq_len at once (no step of the workload exhausts the pool)."""
    max_seq_len, max_reqs = workload.sizes(num_steps)
    model = ModelConfig(layer_ids=workload.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_reqs)
    num_blocks = max_reqs * -(-max_seq_len // v.block_size)
    return BACKENDS[v.backend](model, CacheConfig(v.block_size, num_blocks), max_reqs, device=device)

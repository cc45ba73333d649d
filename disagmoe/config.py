"""Model and cache configuration: only the fields the block managers read are required."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """The attention worker's view of the model.

    `layer_ids` are the attention layers this worker serves; the first one is
    where each step reserves KV-cache slots. `max_seq_len` bounds every
    request's length; `max_batch_size_attn` bounds the tokens-per-step batch
    the worker is sized for.
    """

    layer_ids: tuple[int, ...]
    max_seq_len: int
    max_batch_size_attn: int
    num_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
        if not self.layer_ids:
            raise ValueError("ModelConfig: layer_ids is empty")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError(f"ModelConfig: layer_ids={self.layer_ids} repeats a layer")
        for name in ("max_seq_len", "max_batch_size_attn", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig: {name}={getattr(self, name)} must be >= 1")


@dataclass(frozen=True)
class CacheConfig:
    """The KV-cache pool: `num_gpu_blocks` blocks of `block_size` slots.

    `block_size=None` takes the backend's default (16 for `cpu`, 1 for `gpu`).
    """

    block_size: int | None
    num_gpu_blocks: int

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"CacheConfig: block_size={self.block_size} must be >= 1")
        if self.num_gpu_blocks < 1:
            raise ValueError(f"CacheConfig: num_gpu_blocks={self.num_gpu_blocks} must be >= 1")

"""Model and cache configuration: only the fields the block managers read.

Every size is checked here, before any manager allocates anything: an int (a
numpy int or a 0-d integer tensor will do; a bool, a float or a str will not),
within the int32 range that rows, lengths, block ids and slots have everywhere.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

MAX_INT32 = 2**31 - 1
"""The largest count or slot: rows, lengths, block ids and slots are int32 everywhere."""


def describe(value: object) -> str:
    """repr(value), cut to 80 characters; never raises."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 (a hostile __repr__)
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def checked_int(owner: str, name: str, value: object, low: int = 1, high: int = MAX_INT32) -> int:
    """`value` as an int in [low, high]; TypeError or ValueError naming it otherwise."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("torch.bool", "bool"):
        raise TypeError(f"{owner}: {name}={describe(value)} is a bool, not an int")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 (whatever __index__ raises)
        raise TypeError(f"{owner}: {name}={describe(value)} is not an int") from exc
    if not low <= number <= high:
        raise ValueError(f"{owner}: {name}={number} must be in [{low}, {high}]")
    return number


def checked_slots(
    owner: str, num_blocks: int, block_size: int, names: tuple[str, str] = ("num_gpu_blocks", "block_size")
) -> int:
    """num_blocks * block_size, or ValueError when the slots pass the int32 range."""
    capacity = num_blocks * block_size
    if capacity > MAX_INT32:
        raise ValueError(
            f"{owner}: {names[0]}={num_blocks} x {names[1]}={block_size} = "
            f"{capacity} slots, past the int32 range of slots ({MAX_INT32})"
        )
    return capacity


def checked_layer_ids(owner: str, value: object) -> tuple[int, ...]:
    """`value` as a non-empty tuple of distinct int64 layer ids; TypeError or ValueError
    naming layer_ids otherwise."""
    try:
        items: tuple = tuple(value)  # type: ignore[call-overload, arg-type]
    except Exception as exc:  # noqa: BLE001 (not iterable, or its iterator raised)
        raise TypeError(f"{owner}: layer_ids={describe(value)} is not a sequence of ints") from exc
    layer_ids = tuple(checked_int(owner, f"layer_ids[{i}]", item, -(2**63), 2**63 - 1) for i, item in enumerate(items))
    if not layer_ids:
        raise ValueError(f"{owner}: layer_ids is empty")
    if len(set(layer_ids)) != len(layer_ids):
        repeated = next(layer for k, layer in enumerate(layer_ids) if layer in layer_ids[:k])
        raise ValueError(f"{owner}: layer_ids={describe(layer_ids)} repeats layer {repeated}")
    return layer_ids


@dataclass(frozen=True)
class ModelConfig:
    """The attention worker's view of the model.

    `layer_ids` are the attention layers this worker serves; the first one is
    where each step reserves KV-cache slots. `max_seq_len` bounds every
    request's length. `max_batch_size_attn` is the batch the worker is sized
    for in DisagMoE's interface; the block managers do not read it.
    """

    layer_ids: tuple[int, ...]
    max_seq_len: int
    max_batch_size_attn: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_ids", checked_layer_ids("ModelConfig", self.layer_ids))
        for name in ("max_seq_len", "max_batch_size_attn"):
            object.__setattr__(self, name, checked_int("ModelConfig", name, getattr(self, name)))


@dataclass(frozen=True)
class CacheConfig:
    """The KV-cache pool: `num_gpu_blocks` blocks of `block_size` slots, at most
    2**31 - 1 slots in all.

    `block_size=None` takes the design's default (16 for every design).
    """

    block_size: int | None
    num_gpu_blocks: int

    def __post_init__(self) -> None:
        if self.block_size is not None:
            object.__setattr__(self, "block_size", checked_int("CacheConfig", "block_size", self.block_size))
        num_blocks = checked_int("CacheConfig", "num_gpu_blocks", self.num_gpu_blocks)
        object.__setattr__(self, "num_gpu_blocks", num_blocks)
        if self.block_size is not None:
            checked_slots("CacheConfig", num_blocks, self.block_size)

"""FlashAttention metadata, and the views of the buffer every design writes it into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from disagmoe import _C

PAD_BLOCK_ID: int = _C.PAD_BLOCK_ID
"""Block id in `block_tables` past each row's last block."""


@dataclass(slots=True)
class FlashAttentionMetadata:
    """One step's attention metadata, with vLLM's field names.

    Tensors live on the manager's device and are views of its persistent
    metadata buffer: they stay valid until the next `pack_flash_attn_metadata`
    call on the same manager (clone them to keep them longer). Each pack returns
    an object and tensors of its own; what a caller changes in them (a field, a
    list, a tensor's shape) reaches nothing of the manager. Writes into the
    tensors' data are seen by the packs of the same batch at later layers of the
    step, which return the same memory.
    """

    num_prefills: int
    num_prefill_tokens: int
    num_decode_tokens: int
    seq_lens: list[int]
    seq_lens_tensor: torch.Tensor  # int32 [P+D]
    context_lens_tensor: torch.Tensor  # int32 [P+D]
    query_start_loc: torch.Tensor  # int32 [P+D+1]
    seq_start_loc: torch.Tensor  # int32 [P+D+1]
    max_query_len: int
    max_prefill_seq_len: int
    max_decode_seq_len: int
    max_decode_query_len: int
    block_tables: torch.Tensor  # int32 [P+D, W], padded with PAD_BLOCK_ID
    slot_mapping: torch.Tensor  # int64 [num tokens]
    block_size: int


class PackedOffsets(NamedTuple):
    """Byte offsets of each field in a packed metadata buffer, and its size (the order of
    `_C.metadata_layout`'s tuple)."""

    block_tables: int
    slot_mapping: int
    seq_lens: int
    context_lens: int
    query_start_loc: int
    seq_start_loc: int
    nbytes: int


class LengthViews(NamedTuple):
    """The four length fields of a packed buffer, as tensors viewing it."""

    seq_lens: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    seq_start_loc: torch.Tensor


class MetadataViews(NamedTuple):
    """Every tensor field of a packed buffer, as tensors viewing it."""

    seq_lens: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    seq_start_loc: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor


def packed_offsets(batch_size: int, width: int, num_tokens: int) -> PackedOffsets:
    """Byte offsets of block_tables, slot_mapping, seq_lens, context_lens, query_start_loc and
    seq_start_loc, and nbytes, as `_C.metadata_layout` lays them out: the lengths back to
    back from byte 0, then slot_mapping, then the table (16-byte aligned). The same
    arithmetic without a call (tests/test_core.py checks the two agree)."""
    b = batch_size
    slots = 16 * b + 8
    tables = (slots + 8 * num_tokens + 15) & ~15
    return PackedOffsets(tables, slots, 0, 4 * b, 8 * b, 12 * b + 4, (tables + 4 * b * width + 7) & ~7)


def length_views(int32: torch.Tensor, batch_size: int) -> LengthViews:
    """seq_lens, context_lens, query_start_loc and seq_start_loc of a batch of `batch_size`
    entries in a buffer laid out by `packed_offsets` (where they lie depends on nothing
    else)."""
    b = batch_size
    return LengthViews(
        int32.as_strided((b,), (1,), 0),
        int32.as_strided((b,), (1,), b),
        int32.as_strided((b + 1,), (1,), 2 * b),
        int32.as_strided((b + 1,), (1,), 3 * b + 1),
    )


def slot_view(int64: torch.Tensor, batch_size: int, num_tokens: int) -> torch.Tensor:
    return int64.as_strided((num_tokens,), (1,), 2 * batch_size + 1)


def table_view(int32: torch.Tensor, batch_size: int, width: int, num_tokens: int) -> torch.Tensor:
    tables = packed_offsets(batch_size, width, num_tokens).block_tables
    return int32.as_strided((batch_size, width), (width, 1), tables // 4)


def metadata_views(
    int32: torch.Tensor, int64: torch.Tensor, batch_size: int, width: int, num_tokens: int
) -> MetadataViews:
    """The metadata tensors of a batch in a buffer laid out by `packed_offsets` (`int32`
    and `int64` are views of its storage from byte 0)."""
    return MetadataViews(
        *length_views(int32, batch_size),
        table_view(int32, batch_size, width, num_tokens),
        slot_view(int64, batch_size, num_tokens),
    )

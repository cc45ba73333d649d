"""FlashAttention metadata, and the views of the persistent buffers the backends write it into."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disagmoe import _C

PAD_BLOCK_ID: int = _C.PAD_BLOCK_ID
"""Block id in `block_tables` past each row's last block."""


@dataclass(slots=True)
class FlashAttentionMetadata:
    """One step's attention metadata, with vLLM's field names.

    Tensors live on the manager's device and are views of its persistent
    metadata buffer: they stay valid until the next `pack_flash_attn_metadata`
    call on the same manager (clone them to keep them longer).
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

    @classmethod
    def from_step(cls, stats: _C.BatchStats, seq_lens: list[int], views: tuple,
                  block_size: int) -> FlashAttentionMetadata:
        """A batch's metadata from the batch stats that the C++ core checked and computed
        and its filled tensors, `views` = (seq_lens, context_lens, query_start_loc,
        seq_start_loc, block_tables, slot_mapping)."""
        seq, ctx, qsl, ssl, tables, slots = views
        return cls(stats.num_prefills, stats.num_prefill_tokens, stats.num_decode_tokens, seq_lens,
                   seq, ctx, qsl, ssl, stats.max_query_len, stats.max_prefill_seq_len,
                   stats.max_decode_seq_len, stats.max_decode_query_len, tables, slots, block_size)

    def sharing_tensors(self) -> FlashAttentionMetadata:
        """The same metadata with a seq_lens list of its own (the tensors are shared)."""
        return FlashAttentionMetadata(
            self.num_prefills, self.num_prefill_tokens, self.num_decode_tokens, list(self.seq_lens),
            self.seq_lens_tensor, self.context_lens_tensor, self.query_start_loc, self.seq_start_loc,
            self.max_query_len, self.max_prefill_seq_len, self.max_decode_seq_len,
            self.max_decode_query_len, self.block_tables, self.slot_mapping, self.block_size)


def packed_offsets(batch_size: int, width: int, num_tokens: int) -> tuple[int, int, int, int, int, int, int]:
    """Byte offsets of block_tables, slot_mapping, seq_lens, context_lens, query_start_loc and
    seq_start_loc, and nbytes, as `_C.metadata_layout` lays them out (the C++ core writes
    that layout; this is the same arithmetic without a call and nine attribute reads a
    pack, and tests/test_core.py checks the two agree)."""
    slots = (4 * batch_size * width + 7) & ~7
    seq = slots + 8 * num_tokens
    ctx = seq + 4 * batch_size
    qsl = ctx + 4 * batch_size
    ssl = qsl + 4 * (batch_size + 1)
    return 0, slots, seq, ctx, qsl, ssl, (ssl + 4 * (batch_size + 1) + 7) & ~7


def metadata_views(int32: torch.Tensor, int64: torch.Tensor, lengths: int, tables: int, slots: int,
                   batch_size: int, width: int, num_tokens: int) -> tuple:
    """The metadata tensors of a batch in a buffer (`int32` and `int64`, views of its
    storage from offset 0): seq_lens, context_lens, query_start_loc and seq_start_loc back
    to back from int32 word `lengths`, the [B, W] block table from word `tables`,
    slot_mapping from int64 word `slots`. One split, one strided view and one slice,
    whatever the shape (seven slices cost twice as much)."""
    b = batch_size
    seq, ctx, qsl, ssl = int32[lengths:lengths + 4 * b + 2].split_with_sizes((b, b, b + 1, b + 1))
    return (seq, ctx, qsl, ssl, int32.as_strided((b, width), (width, 1), tables),
            int64[slots:slots + num_tokens])


def packed_views(int32: torch.Tensor, int64: torch.Tensor, batch_size: int, width: int,
                 num_tokens: int) -> tuple:
    """The metadata tensors in a buffer laid out by `packed_offsets`: (seq_lens,
    context_lens, query_start_loc, seq_start_loc, block_tables, slot_mapping)."""
    _, slots, seq, _, _, _, _ = packed_offsets(batch_size, width, num_tokens)
    return metadata_views(int32, int64, seq // 4, 0, slots // 8, batch_size, width, num_tokens)

"""FlashAttention metadata and the persistent buffer both backends write it into."""

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


def packed_views(buffer: torch.Tensor, layout: _C.MetadataLayout) -> tuple:
    """The metadata tensors in a byte buffer laid out by `layout` (`_C.metadata_layout`):
    (seq_lens, context_lens, query_start_loc, seq_start_loc, block_tables, slot_mapping)."""
    b, w, t = layout.batch_size, layout.width, layout.num_tokens
    i32, i64 = buffer.view(torch.int32), buffer.view(torch.int64)
    seq, ctx = layout.seq_lens // 4, layout.context_lens // 4
    qsl, ssl, bt, slots = layout.query_start_loc // 4, layout.seq_start_loc // 4, layout.block_tables // 4, \
        layout.slot_mapping // 8
    return (i32[seq:seq + b], i32[ctx:ctx + b], i32[qsl:qsl + b + 1], i32[ssl:ssl + b + 1],
            i32[bt:bt + b * w].view(b, w), i64[slots:slots + t])

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
        """Assembles a batch's metadata from the batch stats that the C++ core
        checked and computed, and the filled `MetadataBuffer.views`."""
        _, slots, seq, ctx, qsl, ssl, tables, _ = views
        return cls(
            num_prefills=stats.num_prefills,
            num_prefill_tokens=stats.num_prefill_tokens,
            num_decode_tokens=stats.num_decode_tokens,
            seq_lens=seq_lens,
            seq_lens_tensor=seq,
            context_lens_tensor=ctx,
            query_start_loc=qsl,
            seq_start_loc=ssl,
            max_query_len=stats.max_query_len,
            max_prefill_seq_len=stats.max_prefill_seq_len,
            max_decode_seq_len=stats.max_decode_seq_len,
            max_decode_query_len=stats.max_decode_query_len,
            block_tables=tables,
            slot_mapping=slots,
            block_size=block_size,
        )


class MetadataBuffer:
    """A byte buffer holding the metadata arrays as `_C.metadata_layout` lays them out.

    Views are cached per (batch size, width, token count), so a step whose shape
    was seen before builds no tensor. The buffer grows on demand; growing drops
    the cached views (and is the only allocation on the step path).
    """

    _MAX_CACHED_SHAPES = 256

    def __init__(self, nbytes: int, device: torch.device, pin_memory: bool = False) -> None:
        self.device = device
        self.pin_memory = pin_memory
        self._allocate(nbytes)

    def _allocate(self, nbytes: int) -> None:
        nbytes = (max(nbytes, 64) + 7) // 8 * 8
        self.bytes = torch.empty(nbytes, dtype=torch.uint8, device=self.device,
                                 pin_memory=self.pin_memory)
        self.int32 = self.bytes.view(torch.int32)
        self.int64 = self.bytes.view(torch.int64)
        self._views: dict[tuple[int, int, int], tuple] = {}

    @property
    def nbytes(self) -> int:
        return self.bytes.numel()

    def reserve(self, nbytes: int) -> bool:
        """Makes room for `nbytes`; True when the buffer was replaced."""
        if nbytes <= self.nbytes:
            return False
        self._allocate(nbytes + nbytes // 2)
        return True

    def views(self, batch_size: int, width: int, num_tokens: int) -> tuple:
        """(layout, slot_mapping, seq_lens, context_lens, query_start_loc, seq_start_loc,
        block_tables, used) where `used` is the buffer's first layout-nbytes bytes."""
        key = (batch_size, width, num_tokens)
        cached = self._views.get(key)
        if cached is None:
            cached = self._make_views(*key)
            if len(self._views) >= self._MAX_CACHED_SHAPES:
                self._views.clear()
            self._views[key] = cached
        return cached

    def _make_views(self, batch_size: int, width: int, num_tokens: int) -> tuple:
        layout = _C.metadata_layout(batch_size, width, num_tokens)
        self.reserve(layout.nbytes)
        i32 = self.int32
        slots, seq, ctx = layout.slot_mapping // 8, layout.seq_lens // 4, layout.context_lens // 4
        qsl, ssl, bt = layout.query_start_loc // 4, layout.seq_start_loc // 4, layout.block_tables // 4
        return (
            layout,
            self.int64[slots: slots + num_tokens],
            i32[seq: seq + batch_size],
            i32[ctx: ctx + batch_size],
            i32[qsl: qsl + batch_size + 1],
            i32[ssl: ssl + batch_size + 1],
            i32[bt: bt + batch_size * width].view(batch_size, width),
            self.bytes[:layout.nbytes],
        )

"""One attention step's batch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BatchMetadata:
    """The requests of one step, in batch order.

    The first `num_prefill_seqs` entries of `req_ids` are prefill entries adding
    `init_prefill_lens[i]` tokens each; the rest are decode entries adding one
    token each. `update_block_table` fills `seq_lens` (lengths after the step).
    """

    layer_id: int
    req_ids: list[int]
    num_prefill_seqs: int
    init_prefill_lens: list[int]
    seq_lens: list[int] | None = None

    @property
    def num_prefill_tokens(self) -> int:
        return sum(self.init_prefill_lens)

    @property
    def num_decode_tokens(self) -> int:
        return len(self.req_ids) - self.num_prefill_seqs

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

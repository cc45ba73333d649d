"""The tests' oracle: a pure-Python model of the contract in disagmoe/block_manager/base.py.

It keeps only what the contract fixes: each running request's length, how many
blocks it holds, and how many blocks and request rows are free. It does not pick
block ids; the tests check the designs' slots through invariants instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from disagmoe import BatchMetadata, KVCacheExhausted


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class RefMetadata:
    """What `pack_flash_attn_metadata` must return, as host values."""

    num_prefills: int
    num_prefill_tokens: int
    num_decode_tokens: int
    seq_lens: list[int]
    context_lens: list[int]
    query_lens: list[int]
    query_start_loc: list[int]
    seq_start_loc: list[int]
    max_query_len: int
    max_prefill_seq_len: int
    max_decode_seq_len: int
    max_decode_query_len: int
    width: int

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc[-1]


def prefix_sums(values: list[int]) -> list[int]:
    out = [0]
    for v in values:
        out.append(out[-1] + v)
    return out


class RefManager:
    """The contract's allocation rules and errors over plain dicts and ints."""

    def __init__(
        self, layer_ids: tuple[int, ...], max_seq_len: int, block_size: int, num_blocks: int, max_reqs: int
    ) -> None:
        self.layer_ids = tuple(layer_ids)
        self.max_seq_len = max_seq_len
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.max_reqs = max_reqs
        self.seq_lens: dict[int, int] = {}

    @classmethod
    def like(cls, manager) -> RefManager:
        return cls(
            manager.model_config.layer_ids,
            manager.max_seq_len,
            manager.block_size,
            manager.num_blocks,
            manager.max_running_reqs,
        )

    @property
    def capacity(self) -> int:
        return self.num_blocks * self.block_size

    def num_free_blocks(self) -> int:
        return self.num_blocks - sum(cdiv(n, self.block_size) for n in self.seq_lens.values())

    def num_free_slots(self) -> int:
        return self.num_free_blocks() * self.block_size

    # -- checks, in the order of the contract's error table ----------------------

    def _check_shape(self, batch: BatchMetadata) -> list[int]:
        """The query length of every entry; raises on a malformed batch."""
        for value in [*batch.req_ids, *batch.init_prefill_lens]:
            if not isinstance(value, int):
                raise TypeError(f"{value!r} is not an int")
        if batch.layer_id not in self.layer_ids:
            raise ValueError(f"layer_id={batch.layer_id}")
        if not 0 <= batch.num_prefill_seqs <= len(batch.req_ids):
            raise ValueError(f"num_prefill_seqs={batch.num_prefill_seqs}")
        if len(batch.init_prefill_lens) != batch.num_prefill_seqs:
            raise ValueError(f"len(init_prefill_lens)={len(batch.init_prefill_lens)}")
        for n in batch.init_prefill_lens:
            if n < 1:
                raise ValueError(f"prefill length {n}")
        if len(set(batch.req_ids)) != len(batch.req_ids):
            raise ValueError(f"duplicate ids in {batch.req_ids}")
        num_decodes = len(batch.req_ids) - batch.num_prefill_seqs
        return list(batch.init_prefill_lens) + [1] * num_decodes

    def _lookup(self, batch: BatchMetadata, query_lens: list[int]) -> list[int]:
        """Lengths of a batch of running requests (any layer's read)."""
        for req_id, q in zip(batch.req_ids, query_lens):
            if req_id not in self.seq_lens:
                raise KeyError(req_id)
            if q > self.seq_lens[req_id]:
                raise ValueError(f"request {req_id} queries {q} of {self.seq_lens[req_id]} tokens")
        return [self.seq_lens[r] for r in batch.req_ids]

    # -- the contract's operations ------------------------------------------------

    def update(self, batch: BatchMetadata) -> list[int]:
        """Lengths after the step; changes nothing when it raises."""
        query_lens = self._check_shape(batch)
        if batch.layer_id != self.layer_ids[0]:
            return self._lookup(batch, query_lens)
        new_lens, new_blocks, num_new_reqs = [], 0, 0
        for i, (req_id, q) in enumerate(zip(batch.req_ids, query_lens)):
            if req_id not in self.seq_lens and i >= batch.num_prefill_seqs:
                raise KeyError(req_id)
            old = self.seq_lens.get(req_id, 0)
            num_new_reqs += req_id not in self.seq_lens
            new_lens.append(old + q)
            new_blocks += cdiv(old + q, self.block_size) - cdiv(old, self.block_size)
        if max(new_lens, default=0) > self.max_seq_len:
            raise KVCacheExhausted(f"max_seq_len: over {self.max_seq_len}")
        if num_new_reqs > self.max_reqs - len(self.seq_lens):
            raise KVCacheExhausted(f"rows: {num_new_reqs} new requests")
        if new_blocks > self.num_free_blocks():
            raise KVCacheExhausted(f"pool: {new_blocks} blocks needed")
        self.seq_lens.update(zip(batch.req_ids, new_lens))
        return new_lens

    def pack(self, batch: BatchMetadata) -> RefMetadata:
        query_lens = self._check_shape(batch)
        seq_lens = self._lookup(batch, query_lens)
        p = batch.num_prefill_seqs
        return RefMetadata(
            num_prefills=p,
            num_prefill_tokens=sum(query_lens[:p]),
            num_decode_tokens=len(query_lens) - p,
            seq_lens=seq_lens,
            context_lens=[s - q for s, q in zip(seq_lens, query_lens)],
            query_lens=query_lens,
            query_start_loc=prefix_sums(query_lens),
            seq_start_loc=prefix_sums(seq_lens),
            max_query_len=max(query_lens, default=0),
            max_prefill_seq_len=max(seq_lens[:p], default=0),
            max_decode_seq_len=max(seq_lens[p:], default=0),
            max_decode_query_len=1 if len(query_lens) > p else 0,
            width=cdiv(max(seq_lens, default=0), self.block_size),
        )

    def release(self, req_ids: list[int]) -> None:
        for req_id in req_ids:
            if not isinstance(req_id, int):
                raise TypeError(f"{req_id!r} is not an int")
            if req_id not in self.seq_lens:
                raise KeyError(req_id)
        if len(set(req_ids)) != len(req_ids):
            raise ValueError(f"duplicate ids in {req_ids}")
        for req_id in req_ids:
            del self.seq_lens[req_id]

    def reset(self) -> None:
        self.seq_lens.clear()

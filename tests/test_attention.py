"""The contract's attention check: attention computed through the metadata over a
paged KV cache equals dense attention over each sequence's own contiguous K/V."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import Harness, HostMetadata

HEADS, DIM = 3, 8


class PagedKV:
    """A KV cache of [capacity, heads, dim] slots, and each sequence's K/V kept densely."""

    def __init__(self, capacity: int, device: torch.device, gen: torch.Generator) -> None:
        self.k = torch.full((capacity, HEADS, DIM), float("nan"), dtype=torch.float64, device=device)
        self.v = self.k.clone()
        self.dense: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.gen = gen

    def random(self, n: int) -> torch.Tensor:
        return torch.randn(n, HEADS, DIM, dtype=torch.float64, generator=self.gen).to(self.k.device)

    def write_step(self, md: HostMetadata, req_ids: list[int]) -> None:
        """New K/V for every query token: into the cache at slot_mapping, and densely."""
        num_tokens = len(md.slot_mapping)
        k, v = self.random(num_tokens), self.random(num_tokens)
        slots = torch.tensor(md.slot_mapping, dtype=torch.int64, device=self.k.device)
        self.k[slots], self.v[slots] = k, v
        for i, req_id in enumerate(req_ids):
            start, end = md.query_start_loc[i], md.query_start_loc[i + 1]
            if md.context_lens_tensor[i] == 0:
                self.dense[req_id] = (k[:0], v[:0])
            old_k, old_v = self.dense[req_id]
            assert len(old_k) == md.context_lens_tensor[i]
            self.dense[req_id] = (torch.cat([old_k, k[start:end]]), torch.cat([old_v, v[start:end]]))


def paged_attention(q: torch.Tensor, cache: PagedKV, md: HostMetadata) -> torch.Tensor:
    """Each query token attends to its sequence's positions <= its own, read through
    block_tables and seq_lens only."""
    bs, device = md.block_size, q.device
    tables = torch.tensor(md.block_tables, dtype=torch.int64, device=device).view(-1, md.width)
    out = torch.empty_like(q)
    for i, seq_len in enumerate(md.seq_lens_tensor):
        start, end = md.query_start_loc[i], md.query_start_loc[i + 1]
        pos = torch.arange(seq_len, device=device)
        slots = tables[i, pos // bs] * bs + pos % bs
        k, v = cache.k[slots], cache.v[slots]  # [seq, heads, dim]
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k) / math.sqrt(DIM)
        q_pos = md.context_lens_tensor[i] + torch.arange(end - start, device=device)
        scores = scores.masked_fill(pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def dense_attention(
    q: torch.Tensor,
    cache: PagedKV,
    md: HostMetadata,
    req_ids: list[int],
) -> torch.Tensor:
    out = torch.empty_like(q)
    for i, req_id in enumerate(req_ids):
        start, end = md.query_start_loc[i], md.query_start_loc[i + 1]
        k, v = cache.dense[req_id]
        n, s = end - start, len(k)
        mask = torch.ones(n, s, dtype=torch.bool, device=q.device).tril(s - n)  # causal, offset
        out[start:end] = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=mask,
        ).transpose(0, 1)
    return out


def run_and_check(h: Harness, cache: PagedKV, batch) -> None:
    md = h.step(batch)
    if batch.layer_id == h.first_layer:
        cache.write_step(md, batch.req_ids)
    q = cache.random(len(md.slot_mapping))
    torch.testing.assert_close(paged_attention(q, cache, md), dense_attention(q, cache, md, batch.req_ids))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("block_size", [1, 5, 16])
def test_paged_attention_equals_dense(make_manager, block_size, seed):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    manager = make_manager(block_size=block_size, num_blocks=256 // block_size, max_running_reqs=4, max_seq_len=64)
    h, cache = Harness(manager), PagedKV(manager.capacity, manager.device, gen)

    def lens(n: int, high: int) -> list[int]:
        return rng.integers(1, high, size=n).tolist()

    run_and_check(h, cache, h.batch([1, 2], lens(2, 20)))  # prefill
    run_and_check(h, cache, h.batch([1, 3, 2], lens(2, 12)))  # chunked prefill + new + decode
    for _ in range(3):
        run_and_check(h, cache, h.batch([3, 2, 1]))  # decodes
    h.release([2])
    run_and_check(h, cache, h.batch([4, 1, 3], lens(1, 20)))  # reuses request 2's blocks
    run_and_check(h, cache, h.batch([1, 3, 4]))
    # A later layer reads without writing: request 4 queried whole, request 3 as a decode.
    run_and_check(h, cache, h.batch([4, 3], [h.ref.seq_lens[4]], layer=h.ref.layer_ids[1]))

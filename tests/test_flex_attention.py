"""A real attention kernel reads the metadata: PyTorch's FlexAttention over a paged KV cache.

Each step writes its new tokens' K/V into the cache at `slot_mapping` (as a serving
engine's cache write does) and into each sequence's own dense history. FlexAttention then
runs over the whole physical cache: its block mask maps every physical slot back to its
sequence and position through `block_tables` (the inverse page table of FlexAttention's
paged attention), and each query token, placed by `query_start_loc` and
`context_lens_tensor`, attends to its own sequence's positions up to its own. The result
must equal dense causal attention over each sequence's contiguous K/V, for every design's
metadata, block sizes 1 and 16, mixed prefill + decode batches included. On torch's CPU
device FlexAttention runs eagerly; on CUDA it runs compiled. A corrupted block table, or
corrupted query positions, must make the check fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from harness import Harness

HEADS, DIM = 2, 16
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
_compiled = None


def flex(device: torch.device):
    """flex_attention eagerly on the CPU, compiled on CUDA."""
    global _compiled
    if device.type != "cuda":
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention)
    return _compiled


def dtype_of(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cuda" else torch.float64


def paged_block_mask(
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    block_size: int,
    capacity: int,
) -> BlockMask:
    """Query token t (of entry i, at position p) may read physical slot s when the block of s
    is one of entry i's in `block_tables` (row i, column j, a column that holds one of its
    blocks) and s's position in the sequence, j * block_size + s % block_size, is <= p."""
    device = block_tables.device
    tables, lens = block_tables.long(), seq_lens.long()
    starts = query_start_loc.long()
    num_tokens = int(starts[-1])
    token = torch.arange(num_tokens, device=device)
    q_entry = torch.searchsorted(starts[1:], token, right=True)
    q_pos = context_lens.long()[q_entry] + token - starts[q_entry]
    cols = torch.arange(tables.shape[1], device=device)
    held = cols[None, :] * block_size < lens[:, None]  # the columns that hold a block
    owner = torch.full((capacity // block_size,), -1, dtype=torch.long, device=device)
    column = torch.zeros_like(owner)
    entries = torch.arange(tables.shape[0], device=device)[:, None].expand_as(tables)
    owner[tables[held]] = entries[held]
    column[tables[held]] = cols[None, :].expand_as(tables)[held]

    def mask_mod(b, h, q_idx, kv_idx):
        block = kv_idx // block_size
        pos = column[block] * block_size + kv_idx % block_size
        entry = q_entry[q_idx]
        return (owner[block] == entry) & (pos <= q_pos[q_idx]) & (pos < lens[entry])

    return create_block_mask(mask_mod, None, None, num_tokens, capacity, device=device)


class Cache:
    """The paged K/V cache ([capacity, heads, dim] slots) and each sequence's dense K/V."""

    def __init__(self, capacity: int, device: torch.device, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype_of(device)
        self.k = torch.zeros(capacity, HEADS, DIM, dtype=self.dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.dense: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def random(self, n: int) -> torch.Tensor:
        return torch.randn(n, HEADS, DIM, generator=self.gen, dtype=torch.float64).to(self.k.device, self.dtype)

    def write(self, md, req_ids: list[int]) -> None:
        """The step's new K/V: into the cache at slot_mapping, and after each sequence's."""
        n = md.slot_mapping.numel()
        k, v = self.random(n), self.random(n)
        self.k[md.slot_mapping], self.v[md.slot_mapping] = k, v
        starts = md.query_start_loc.tolist()
        for i, req_id in enumerate(req_ids):
            old_k, old_v = self.dense.get(req_id, (k[:0], v[:0]))
            if int(md.context_lens_tensor[i]) == 0:
                old_k, old_v = k[:0], v[:0]
            self.dense[req_id] = (
                torch.cat([old_k, k[starts[i] : starts[i + 1]]]),
                torch.cat([old_v, v[starts[i] : starts[i + 1]]]),
            )


def paged_attention(q: torch.Tensor, cache: Cache, block_mask: BlockMask) -> torch.Tensor:
    run = flex(q.device)
    out = run(
        q.transpose(0, 1)[None],
        cache.k.transpose(0, 1)[None],
        cache.v.transpose(0, 1)[None],
        block_mask=block_mask,
        scale=1 / math.sqrt(DIM),
    )
    return out[0].transpose(0, 1)


def dense_attention(q: torch.Tensor, cache: Cache, md, req_ids: list[int]) -> torch.Tensor:
    out = torch.empty_like(q)
    starts = md.query_start_loc.tolist()
    for i, req_id in enumerate(req_ids):
        k, v = cache.dense[req_id]
        n, s = starts[i + 1] - starts[i], len(k)
        mask = torch.ones(n, s, dtype=torch.bool, device=q.device).tril(s - n)  # causal, offset
        out[starts[i] : starts[i + 1]] = F.scaled_dot_product_attention(
            q[starts[i] : starts[i + 1]].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
        ).transpose(0, 1)
    return out


def mask_of(md, capacity: int, **override) -> BlockMask:
    fields = dict(
        block_tables=md.block_tables,
        seq_lens=md.seq_lens_tensor,
        context_lens=md.context_lens_tensor,
        query_start_loc=md.query_start_loc,
    )
    return paged_block_mask(**{**fields, **override}, block_size=md.block_size, capacity=capacity)


def step(h: Harness, cache: Cache, batch) -> tuple:
    """A step through the harness (which checks the metadata); then both attentions."""
    h.step(batch)
    md = h.manager.pack_flash_attn_metadata(batch)  # the device tensors (to_host copied them)
    if batch.layer_id == h.first_layer:
        cache.write(md, batch.req_ids)
    q = cache.random(md.slot_mapping.numel())
    return md, q, dense_attention(q, cache, md, batch.req_ids)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-9 if a.dtype == torch.float64 else 1e-4
    return torch.allclose(a, b, rtol=tol, atol=tol)


def steps(h: Harness):
    """Prefill; chunked prefill + new + decode; decodes; a release and a prefill that reuses
    its blocks; a later layer that queries one request whole and one as a decode."""
    yield h.batch([1, 2], [9, 20])
    yield h.batch([1, 3, 2], [7, 18])
    for _ in range(2):
        yield h.batch([3, 2, 1])
    h.release([2])
    yield h.batch([4, 1, 3], [17])
    yield h.batch([4, 3], [h.ref.seq_lens[4]], layer=h.ref.layer_ids[1])


@pytest.mark.parametrize("block_size", [1, 16])
def test_flex_attention_over_the_metadata_equals_dense(make_manager, block_size):
    manager = make_manager(block_size=block_size, num_blocks=256 // block_size, max_running_reqs=4, max_seq_len=80)
    h, cache = Harness(manager), Cache(manager.capacity, manager.device, seed=block_size)
    for batch in steps(h):
        md, q, want = step(h, cache, batch)
        got = paged_attention(q, cache, mask_of(md, manager.capacity))
        assert close(got, want), (batch, (got - want).abs().max())


@pytest.mark.parametrize("block_size", [1, 16])
def test_corrupted_metadata_fails_the_check(make_manager, block_size):
    """The check can fail: one request's first block swapped for another's, or a query
    placed one position late, gives attention that is not the dense one."""
    manager = make_manager(block_size=block_size, num_blocks=256 // block_size, max_running_reqs=4, max_seq_len=80)
    h, cache = Harness(manager), Cache(manager.capacity, manager.device, seed=7)
    md, q, want = step(h, cache, h.batch([1, 2], [9, 20]))
    md, q, want = step(h, cache, h.batch([3, 1, 2], [17]))  # 3 prefills, 1 and 2 decode
    assert close(paged_attention(q, cache, mask_of(md, manager.capacity)), want)
    tables = md.block_tables.clone()
    tables[0, 0] = md.block_tables[1, 0]  # request 3 reads request 1's first block
    assert not close(paged_attention(q, cache, mask_of(md, manager.capacity, block_tables=tables)), want)
    late = md.context_lens_tensor.clone()
    late[0] += 1  # request 3's tokens placed one later: each sees one more position
    assert not close(paged_attention(q, cache, mask_of(md, manager.capacity, context_lens=late)), want)

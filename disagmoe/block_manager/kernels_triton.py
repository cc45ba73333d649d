"""The device-table designs' step kernels in Triton.

Three kernels, launched in this order when a launch holds them (`launch`): release
(gpu: push each released request's blocks onto the free stack), update (write each
entry's new block ids into its row of the block table: from the free stack on `gpu`, from
the staged ids on `hybrid`) and pack (the FlashAttention metadata from the block table).
When the update is of the pack's own batch (a first-layer step) the pack kernel does
both: it reads the new blocks from their source and writes them into the rows, one
kernel fewer on the device.
Every per-step value (sizes, width, where each region and each array lies) is read from
the staged header on the device, never passed as an argument (`layout.py` names the
words), so a launch can be captured in a CUDA graph and replayed for any batch up to its
grid, and no batch compiles a new kernel. Programs past a kernel's entries do nothing.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from disagmoe import _C
from disagmoe.block_manager import layout as L
from disagmoe.metadata import PAD_BLOCK_ID


@triton.jit
def _release_kernel(
    staged_ptr,
    req_to_block_ptr,
    r2b_row_stride,
    free_blocks_ptr,
    BLOCK_SIZE: tl.constexpr,
    CHUNK: tl.constexpr,
    RELEASE_SIZE: tl.constexpr,
    RELEASE_HEIGHT: tl.constexpr,
    RELEASE_AT: tl.constexpr,
    RELEASE_STRIDE: tl.constexpr,
):
    i = tl.program_id(0)
    count = tl.load(staged_ptr + RELEASE_SIZE)
    valid = i < count
    height = tl.load(staged_ptr + RELEASE_HEIGHT)
    stride = tl.load(staged_ptr + RELEASE_STRIDE)
    columns = staged_ptr + tl.load(staged_ptr + RELEASE_AT)
    row = tl.load(columns + i, mask=valid, other=0)
    length = tl.load(columns + stride + i, mask=valid, other=0)
    offset = tl.load(columns + 2 * stride + i, mask=valid, other=0)
    num_blocks = (length + BLOCK_SIZE - 1) // BLOCK_SIZE
    row_ptr = req_to_block_ptr + row.to(tl.int64) * r2b_row_stride
    for start in range(0, num_blocks, CHUNK):
        k = start + tl.arange(0, CHUNK)
        mask = k < num_blocks
        blocks = tl.load(row_ptr + k, mask=mask, other=0)
        tl.store(free_blocks_ptr + height + offset + k, blocks, mask=mask)


@triton.jit
def _update_kernel(
    staged_ptr,
    blocks_ptr,
    req_to_block_ptr,
    r2b_row_stride,
    FROM_STACK: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    CHUNK: tl.constexpr,
    UPDATE_SIZE: tl.constexpr,
    HEIGHT: tl.constexpr,
    PLAN_AT: tl.constexpr,
    PLAN_STRIDE: tl.constexpr,
    IDS_AT: tl.constexpr,
):
    i = tl.program_id(0)
    count = tl.load(staged_ptr + UPDATE_SIZE)
    valid = i < count
    stride = tl.load(staged_ptr + PLAN_STRIDE)
    plan = staged_ptr + tl.load(staged_ptr + PLAN_AT)
    row = tl.load(plan + i, mask=valid, other=0)
    old = tl.load(plan + stride + i, mask=valid, other=0)
    new = tl.load(plan + 2 * stride + i, mask=valid, other=0)
    offset = tl.load(plan + 3 * stride + i, mask=valid, other=0)
    first_new = (old + BLOCK_SIZE - 1) // BLOCK_SIZE
    last = (new + BLOCK_SIZE - 1) // BLOCK_SIZE
    row_ptr = req_to_block_ptr + row.to(tl.int64) * r2b_row_stride
    if FROM_STACK:  # the m-th block taken is the m-th from the top of the stack
        source = blocks_ptr + (tl.load(staged_ptr + HEIGHT) - 1)
    else:  # the m-th staged block id
        source = staged_ptr + tl.load(staged_ptr + IDS_AT)
    for start in range(first_new, last, CHUNK):
        k = start + tl.arange(0, CHUNK)
        mask = k < last
        rank = offset + k - first_new  # among the blocks this step adds
        if FROM_STACK:
            blocks = tl.load(source - rank, mask=mask, other=0)
        else:
            blocks = tl.load(source + rank, mask=mask, other=0)
        tl.store(row_ptr + k, blocks, mask=mask)


@triton.jit
def _pack_kernel(
    staged_ptr,
    blocks_ptr,
    req_to_block_ptr,
    r2b_row_stride,
    out32_ptr,
    out64_ptr,
    BLOCK_SIZE: tl.constexpr,
    PAD: tl.constexpr,
    CHUNK_W: tl.constexpr,
    CHUNK_T: tl.constexpr,
    FUSED: tl.constexpr,
    FROM_STACK: tl.constexpr,
    PACK_SIZE: tl.constexpr,
    WIDTH: tl.constexpr,
    NUM_TOKENS: tl.constexpr,
    LOOKUP_AT: tl.constexpr,
    LOOKUP_STRIDE: tl.constexpr,
    SLOTS_AT: tl.constexpr,
    SEQ_LENS_AT: tl.constexpr,
    TABLE_AT: tl.constexpr,
    UPDATE_SIZE: tl.constexpr,
    HEIGHT: tl.constexpr,
    PLAN_AT: tl.constexpr,
    PLAN_STRIDE: tl.constexpr,
    IDS_AT: tl.constexpr,
):
    # Programs (i, j): entry i; its block-table columns and slots are shared out among
    # the j = 0 .. num_programs(1) - 1 programs of the entry, chunk by chunk. FUSED: the
    # update staged with this pack is of the same batch (entry i of both is the same
    # request): the blocks this step adds come from their source (the free stack, or the
    # staged ids) instead of the row, which this kernel then writes them into.
    i = tl.program_id(0)
    j = tl.program_id(1)
    parts = tl.num_programs(1)
    batch_size = tl.load(staged_ptr + PACK_SIZE)
    width = tl.load(staged_ptr + WIDTH)
    stride = tl.load(staged_ptr + LOOKUP_STRIDE)
    columns = staged_ptr + tl.load(staged_ptr + LOOKUP_AT)
    slots_ptr = out64_ptr + tl.load(staged_ptr + SLOTS_AT)
    # seq_lens, context_lens, query_start_loc, seq_start_loc back to back
    seq_ptr = out32_ptr + tl.load(staged_ptr + SEQ_LENS_AT)
    ctx_ptr = seq_ptr + batch_size
    qsl_ptr = seq_ptr + 2 * batch_size
    ssl_ptr = seq_ptr + 3 * batch_size + 1
    valid = i < batch_size
    row = tl.load(columns + i, mask=valid, other=0)
    seq = tl.load(columns + stride + i, mask=valid, other=0)
    query = tl.load(columns + 2 * stride + i, mask=valid, other=0)
    q_start = tl.load(columns + 3 * stride + i, mask=valid, other=0)
    s_start = tl.load(columns + 4 * stride + i, mask=valid, other=0)
    context = seq - query
    origin = (i == 0) & (j == 0)  # the sums start at 0, also for an empty batch
    tl.store(qsl_ptr, 0, mask=origin)
    tl.store(ssl_ptr, 0, mask=origin)
    first = valid & (j == 0)
    tl.store(seq_ptr + i, seq, mask=first)
    tl.store(ctx_ptr + i, context, mask=first)
    tl.store(qsl_ptr + i, q_start, mask=first)
    tl.store(ssl_ptr + i, s_start, mask=first)
    last = first & (i == batch_size - 1)
    tl.store(qsl_ptr + batch_size, q_start + query, mask=last)
    tl.store(ssl_ptr + batch_size, s_start + seq, mask=last)

    row_ptr = req_to_block_ptr + row.to(tl.int64) * r2b_row_stride
    num_blocks = (seq + BLOCK_SIZE - 1) // BLOCK_SIZE
    first_new = (context + BLOCK_SIZE - 1) // BLOCK_SIZE
    offset = 0
    if FUSED:
        # The update's first staged block: from its planned old length, which is the
        # context but for a matched request's first update (staged from block 0, hybrid).
        plan = staged_ptr + tl.load(staged_ptr + PLAN_AT)
        plan_stride = tl.load(staged_ptr + PLAN_STRIDE)
        old = tl.load(plan + plan_stride + i, mask=valid, other=0)
        first_new = (old + BLOCK_SIZE - 1) // BLOCK_SIZE
        offset = tl.load(plan + 3 * plan_stride + i, mask=valid, other=0)
        if FROM_STACK:  # the m-th block taken is the m-th from the top of the stack
            source = blocks_ptr + (tl.load(staged_ptr + HEIGHT) - 1)
        else:  # the m-th staged block id
            source = staged_ptr + tl.load(staged_ptr + IDS_AT)
    table_row = out32_ptr + tl.load(staged_ptr + TABLE_AT).to(tl.int64) + i.to(tl.int64) * width
    for c in range(j * CHUNK_W, tl.where(valid, width, 0), parts * CHUNK_W):
        cols = c + tl.arange(0, CHUNK_W)
        owned = cols < num_blocks
        if FUSED:
            new = owned & (cols >= first_new)
            rank = offset + cols - first_new
            if FROM_STACK:
                added = tl.load(source - rank, mask=new, other=0)
            else:
                added = tl.load(source + rank, mask=new, other=0)
            blocks = tl.where(new, added, tl.load(row_ptr + cols, mask=owned & (cols < first_new), other=0))
            tl.store(row_ptr + cols, blocks, mask=new)
        else:
            blocks = tl.load(row_ptr + cols, mask=owned, other=0)
        tl.store(table_row + cols, tl.where(owned, blocks, PAD), mask=cols < width)
    for t in range(j * CHUNK_T, query, parts * CHUNK_T):
        ts = t + tl.arange(0, CHUNK_T)
        mask = ts < query
        pos = context + ts
        block = pos // BLOCK_SIZE
        if FUSED:
            new = mask & (block >= first_new)
            rank = offset + block - first_new
            if FROM_STACK:
                added = tl.load(source - rank, mask=new, other=0)
            else:
                added = tl.load(source + rank, mask=new, other=0)
            blocks = tl.where(new, added, tl.load(row_ptr + block, mask=mask & (block < first_new), other=0))
        else:
            blocks = tl.load(row_ptr + block, mask=mask, other=0)
        slots = blocks.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
        tl.store(slots_ptr + q_start + ts, slots, mask=mask)


@triton.jit
def _moves_kernel(
    staged_ptr,
    req_to_block_ptr,
    r2b_row_stride,
    free_blocks_ptr,
    entry_block_ptr,
    CHUNK: tl.constexpr,
    SIZE: tl.constexpr,
    AT: tl.constexpr,
    MOVE_WORDS: tl.constexpr,
):
    # The prefix cache's moves of one region (layout.MOVE_*: (op, a, b, c)), shared out
    # among the programs chunk by chunk; no op of a region reads what another writes.
    count = tl.load(staged_ptr + SIZE)
    moves = staged_ptr + tl.load(staged_ptr + AT)
    for start in range(tl.program_id(0) * CHUNK, count, tl.num_programs(0) * CHUNK):
        j = start + tl.arange(0, CHUNK)
        mask = j < count
        op = tl.load(moves + MOVE_WORDS * j, mask=mask, other=-1)
        a = tl.load(moves + MOVE_WORDS * j + 1, mask=mask, other=0)
        b = tl.load(moves + MOVE_WORDS * j + 2, mask=mask, other=0)
        c = tl.load(moves + MOVE_WORDS * j + 3, mask=mask, other=0)
        from_row = (op == 0) | (op == 3)  # MOVE_PUSH_ROW reads req_to_block[b, c], MOVE_INDEX [a, b]
        row = tl.where(op == 0, b, a)
        col = tl.where(op == 0, c, b)
        in_row = tl.load(req_to_block_ptr + row.to(tl.int64) * r2b_row_stride + col, mask=from_row, other=0)
        in_entry = tl.load(entry_block_ptr + c, mask=(op == 1) | (op == 2), other=0)
        block = tl.where(from_row, in_row, in_entry)
        tl.store(free_blocks_ptr + a, block, mask=(op == 0) | (op == 2))
        tl.store(req_to_block_ptr + a.to(tl.int64) * r2b_row_stride + b, block, mask=op == 1)
        tl.store(entry_block_ptr + c, block, mask=op == 3)


KERNELS = (_release_kernel, _update_kernel, _pack_kernel, _moves_kernel)


def compiled() -> int:
    """Kernels of this module compiled in this process so far, on every device (Triton's
    in-memory caches: a compile adds one; loading from its disk cache counts too)."""
    return sum(len(caches[0]) for kernel in KERNELS for caches in kernel.device_caches.values())


@dataclasses.dataclass(frozen=True)
class PackLaunch:
    """How the pack kernel is launched: `parts` programs per batch entry, each
    taking every parts-th chunk of `block_w` block-table columns (and of
    `block_t` slots), with `num_warps` warps a program. (`block_w`, `block_t`:
    the kernel's CHUNK_W and CHUNK_T, in Triton's sense of a block of a program's
    work, not a KV block; named as the probes that set them name them.)

    The default was chosen with scripts/probes/pack_sweep.py on an H100
    (docs/performance.md): four programs an entry cut one replay of the pack's graph
    from about 11 to 9 us (grid mean) against one program looping over 128-column
    chunks; wider chunks or more warps did as well, within the machine's noise."""

    block_w: int = 128
    block_t: int = 128
    parts: int = 4
    num_warps: int = 4


@dataclasses.dataclass(frozen=True)
class Kernels:
    """What one manager's launches read and write (fixed until a buffer is replaced, so
    that graphs can capture them)."""

    req_to_block: torch.Tensor  # int32 [rows, blocks]
    free_blocks: torch.Tensor | None  # int32, the device's free stack (DEVICE_STACK), else None
    block_source: _C.BlockSource  # where an update's new blocks come from
    out32: torch.Tensor  # the metadata buffer as int32 words
    out64: torch.Tensor  # the same buffer as int64 words
    block_size: int
    launch: PackLaunch = PackLaunch()
    entry_block: torch.Tensor | None = None  # int32, each prefix-cache entry's block (DEVICE_STACK)
    from_stack: bool = dataclasses.field(init=False)  # block_source, read once

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_stack", self.block_source == L.DEVICE_STACK)


def launch(k: Kernels, staged: torch.Tensor, grid: int, flags: int) -> None:
    """The kernels of `flags` (layout.RELEASE | UPDATE | PACK | FUSED), in order, each over
    `grid` programs; `staged` is the device copy of the int32 staged words. FUSED: no
    update kernel, the pack writes the new blocks."""
    r2b, row_stride = k.req_to_block, k.req_to_block.stride(0)
    from_stack = k.from_stack
    blocks = k.free_blocks if from_stack else staged
    fused = bool(flags & L.FUSED)
    if flags & L.RELEASE:
        _release_kernel[(grid,)](
            staged, r2b, row_stride, k.free_blocks, BLOCK_SIZE=k.block_size, CHUNK=256, **L.RELEASE_WORDS
        )
    if flags & L.PREFIX:
        _moves_kernel[(grid,)](staged, r2b, row_stride, k.free_blocks, k.entry_block, CHUNK=256, **L.PRE_WORDS)
    if flags & L.UPDATE and not fused:
        _update_kernel[(grid,)](
            staged, blocks, r2b, row_stride, FROM_STACK=from_stack, BLOCK_SIZE=k.block_size, CHUNK=256, **L.UPDATE_WORDS
        )
    if flags & L.PACK:
        p = k.launch
        _pack_kernel[(grid, p.parts)](
            staged,
            blocks,
            r2b,
            row_stride,
            k.out32,
            k.out64,
            BLOCK_SIZE=k.block_size,
            PAD=PAD_BLOCK_ID,
            CHUNK_W=p.block_w,
            CHUNK_T=p.block_t,
            FUSED=fused,
            FROM_STACK=from_stack,
            num_warps=p.num_warps,
            **L.PACK_WORDS,
            **L.UPDATE_WORDS,
        )
    if flags & L.PREFIX:
        _moves_kernel[(grid,)](staged, r2b, row_stride, k.free_blocks, k.entry_block, CHUNK=256, **L.POST_WORDS)

"""Attention in the loop: each replayed step's metadata feeds PyTorch's FlexAttention over a
paged KV pool, and the bookkeeping is weighed against it.

A serving engine's attention layer reads what a step packs: it writes the step's new K/V
at `slot_mapping`, then each query token attends to its own sequence's positions up to its
own, found through `block_tables`. `PagedAttention` does that at a model layer's shape
(`AttentionShape`: 32 query heads, 8 KV heads, head dim 128, bf16 by default) over a pool
of the scheduler's KV blocks:

- the block mask is made from `block_tables` itself, one FlexAttention KV block per
  KV-cache block: a sequence's `kv_indices` are its row of the table and its
  `kv_num_blocks` the blocks it holds (for a prefill chunk, per block of 128 queries, the
  blocks up to its last query's position); a mask function places each physical slot at
  its position in its sequence (the column of its block in the table, scattered once a
  step into `column`) and keeps the positions at or before the query's;
- the entries with one query token (decodes) are one call, one entry per batch element
  and the query heads that share a KV head folded into rows (grouped-query attention);
  each entry with more queries (a prefill chunk) is a call of its own;
- compiled on CUDA (`torch.compile`, dynamic shapes, at start-up: `warm` runs every step
  once untimed, and the compiles of the timed pass are counted and reported), eagerly on
  torch's CPU device at a tiny shape (`CPU_SHAPE`), where CI exercises it.

`measure` replays a window of a trace: the step's calls on a manager of the baseline
design sized as the scheduler's pool (every design hands out the same blocks: the serving
benchmarks check their metadata equal first), then one layer of attention on the step's
metadata. On CUDA a layer's device time is read with CUDA events behind a spin of the GPU
twice as long as the host's time to launch that step's layer (measured in a pass of its
own: the device is busy while the host launches, so the events hold the kernels' time
alone; a launch that outlasts its spin is counted and reported); on the CPU it is the
call's time. The host's time to launch a layer is reported beside it: FlexAttention's
Python side (the block mask, the compiled function's guards) is not free either. Sampled
steps are checked against dense attention over each sequence's contiguous K/V (`check`).

The share: bookkeeping runs once a step (the step's calls, as the replay makes them),
attention once per layer of the model (`AttentionShape.model_layers`), so a step costs
b + model_layers * a, with b the design's pipelined wall time per step (the median of its
windows) and a the mean over the same steps of one layer's attention; the bookkeeping's
share is b / (b + model_layers * a). FlexAttention with KV blocks of 16 tokens is not the
fastest paged kernel (FlashAttention's or FlashInfer's decode kernels are), so `a` is an
upper bound of what a tuned engine spends and the share a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from disagmoe.block_manager.base import BlockManager
from disagmoe_bench.text import duration

Q_BLOCK = 128  # FlexAttention's query block: the mask's rows
DECODE_OPTIONS = {"BLOCK_M": 16, "BLOCK_N": 16}  # KV blocks of 16 tokens: the kernel's tile must divide them
PREFILL_OPTIONS = {"BLOCK_M": 64, "BLOCK_N": 16}
SPIN_US = 2000.0  # the device's least spin before a timed layer (else twice the host's time to launch it)


@dataclass(frozen=True)
class AttentionShape:
    """One attention layer of the model, and how many layers a step runs."""

    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    model_layers: int = 32

    def __post_init__(self) -> None:
        for name in ("q_heads", "kv_heads", "head_dim", "model_layers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"AttentionShape: {name}={value!r} is not an int >= 1")
        if self.q_heads % self.kv_heads:
            raise ValueError(f"AttentionShape: q_heads={self.q_heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.head_dim < 16:
            raise ValueError(f"AttentionShape: head_dim={self.head_dim} < 16 (FlexAttention's least)")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"AttentionShape: dtype={self.dtype!r} is not a torch dtype")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


CPU_SHAPE = AttentionShape(q_heads=4, kv_heads=2, head_dim=16, dtype="float32")


@dataclass(frozen=True)
class StepPlan:
    """What the host knows of a step's first-layer batch before anything runs: its query
    tokens, the entries with one query (`decodes`: entry indices and their token's
    index, on the device), the prefill chunks (entry, first token, queries) and their
    entries on the device (`prefill_entries`: copied from, device to device, where
    writing a Python int would wait for the device)."""

    num_tokens: int
    decodes: torch.Tensor
    decode_tokens: torch.Tensor
    prefills: tuple[tuple[int, int, int], ...]
    prefill_entries: torch.Tensor


def plan_step(batch, device: torch.device) -> StepPlan:
    """The plan of `batch` (a `BatchMetadata`): prefills first, then decodes, as packed."""
    lens = list(batch.init_prefill_lens) + [1] * (len(batch.req_ids) - batch.num_prefill_seqs)
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    ones = [i for i, n in enumerate(lens) if n == 1]
    prefills = tuple((i, starts[i], n) for i, n in enumerate(lens) if n > 1)
    return StepPlan(
        starts[-1],
        torch.tensor(ones, dtype=torch.int64, device=device),
        torch.tensor([starts[i] for i in ones], dtype=torch.int64, device=device),
        prefills,
        torch.tensor([i for i, _, _ in prefills], dtype=torch.int32, device=device),
    )


def _flex(device: torch.device) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if device.type == "cuda":
        return torch.compile(flex_attention, dynamic=True)

    def eager(*args, **kwargs):
        with warnings.catch_warnings():  # eager on purpose: the CPU's tiny shape, for CI
            warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)

    return eager


class PagedAttention:
    """One attention layer over a paged KV pool of `num_blocks` blocks of `block_size`
    tokens (see the module docstring)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        max_tokens: int,
        shape: AttentionShape,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.shape, self.device, self.block_size = shape, device, block_size
        self.num_slots = num_blocks * block_size
        gen = torch.Generator(device=device).manual_seed(seed)
        kv = (1, shape.kv_heads, self.num_slots, shape.head_dim)
        dtype = shape.torch_dtype
        self.k = torch.randn(kv, generator=gen, device=device, dtype=dtype)
        self.v = torch.randn(kv, generator=gen, device=device, dtype=dtype)
        self.new_k = torch.randn(
            (shape.kv_heads, max_tokens, shape.head_dim), generator=gen, device=device, dtype=dtype
        )
        self.new_v = torch.randn_like(self.new_k)
        self.queries = torch.randn(
            (max_tokens, shape.q_heads, shape.head_dim), generator=gen, device=device, dtype=dtype
        )
        # each block's column in its sequence's row and that row (the entry); the last: a dump
        self.column = torch.zeros(num_blocks + 1, dtype=torch.int32, device=device)
        self.owner = torch.full((num_blocks + 1,), -1, dtype=torch.int32, device=device)
        self.decode_entry = torch.zeros(max_tokens, dtype=torch.int32, device=device)
        self.decode_ctx = torch.zeros(max_tokens, dtype=torch.int32, device=device)
        self.prefill_at = torch.zeros(2, dtype=torch.int32, device=device)  # the chunk's entry and context
        self.positions = torch.arange(max(max_tokens, 1) + Q_BLOCK, dtype=torch.int32, device=device)
        self.scale = 1 / math.sqrt(shape.head_dim)
        self._flex = _flex(device)
        column, owner, bs = self.column, self.owner, block_size
        decode_entry, decode_ctx, prefill_at = self.decode_entry, self.decode_ctx, self.prefill_at

        # A slot is seen when its block is the entry's and its position is at or before the
        # query's (the kernel visits only the blocks of the mask; the owner test makes the
        # function right on its own, as the eager path evaluates it over the whole pool).
        def decode_mask(b, h, q, kv):  # every row of batch element b is its entry's one query
            block = kv // bs
            return (owner[block] == decode_entry[b]) & (column[block] * bs + kv % bs <= decode_ctx[b])

        def prefill_mask(b, h, q, kv):  # query q of the chunk is at position ctx + q
            block = kv // bs
            return (owner[block] == prefill_at[0]) & (column[block] * bs + kv % bs <= prefill_at[1] + q)

        self._decode_mask, self._prefill_mask = decode_mask, prefill_mask

    def scatter_columns(self, md) -> None:
        """Once a step: each held block's column in its sequence's row of the table."""
        tables = md.block_tables
        width = tables.shape[1]
        cols = self.positions[:width]
        held = cols[None, :] < (md.seq_lens_tensor[:, None] + self.block_size - 1) // self.block_size
        dump = self.column.shape[0] - 1
        index = torch.where(held, tables.long(), dump).reshape(-1)
        self.column.scatter_(0, index, cols.expand_as(tables).reshape(-1))
        self.owner.fill_(-1)
        rows = self.positions[: tables.shape[0], None].expand_as(tables).reshape(-1)
        self.owner.scatter_(0, index, rows)

    def write(self, md, plan: StepPlan) -> None:
        """The step's new K/V into the pool at `slot_mapping` (a layer's cache write)."""
        slots = md.slot_mapping
        self.k[0].index_copy_(1, slots, self.new_k[:, : plan.num_tokens])
        self.v[0].index_copy_(1, slots, self.new_v[:, : plan.num_tokens])

    def layer(self, md, plan: StepPlan) -> torch.Tensor:
        """One layer: the cache write, then attention of every query token; returns the
        output [num_tokens, q_heads, head_dim]."""
        from torch.nn.attention.flex_attention import BlockMask

        shape, bs = self.shape, self.block_size
        group = shape.q_heads // shape.kv_heads
        self.write(md, plan)
        out = torch.empty((plan.num_tokens, shape.q_heads, shape.head_dim), dtype=self.k.dtype, device=self.device)
        tables = md.block_tables
        width = tables.shape[1]
        blocks = (md.seq_lens_tensor + bs - 1) // bs
        n = plan.decodes.numel()
        if n:
            torch.index_select(md.context_lens_tensor, 0, plan.decodes, out=self.decode_ctx[:n])
            self.decode_entry[:n].copy_(plan.decodes)
            mask = BlockMask.from_kv_blocks(
                blocks.index_select(0, plan.decodes).view(n, 1, 1),
                tables.index_select(0, plan.decodes).view(n, 1, 1, width),
                BLOCK_SIZE=(Q_BLOCK, bs),
                mask_mod=self._decode_mask,
                seq_lengths=(group, self.num_slots),
                compute_q_blocks=False,
            )
            q = self.queries.index_select(0, plan.decode_tokens).view(n, shape.kv_heads, group, shape.head_dim)
            o = self._flex(q, self.k, self.v, block_mask=mask, scale=self.scale, kernel_options=DECODE_OPTIONS)
            out.index_copy_(0, plan.decode_tokens, o.reshape(n, shape.q_heads, shape.head_dim))
        for j, (entry, first, num) in enumerate(plan.prefills):
            rows = -(-num // Q_BLOCK)
            self.prefill_at[:1].copy_(plan.prefill_entries[j : j + 1])
            self.prefill_at[1:].copy_(md.context_lens_tensor[entry : entry + 1])
            last = self.prefill_at[1] + self.positions[1 : rows + 1] * Q_BLOCK  # past each query block's last position
            reach = torch.minimum((last + bs - 1) // bs, blocks[entry : entry + 1])
            mask = BlockMask.from_kv_blocks(
                reach.view(1, 1, rows),
                tables[entry : entry + 1].view(1, 1, 1, width).expand(1, 1, rows, width),
                BLOCK_SIZE=(Q_BLOCK, bs),
                mask_mod=self._prefill_mask,
                seq_lengths=(num, self.num_slots),
                compute_q_blocks=False,
            )
            q = self.queries[first : first + num].transpose(0, 1)[None]
            o = self._flex(
                q, self.k, self.v, block_mask=mask, scale=self.scale, enable_gqa=True, kernel_options=PREFILL_OPTIONS
            )
            out[first : first + num] = o[0].transpose(0, 1)
        return out

    def dense(self, md, plan: StepPlan) -> torch.Tensor:
        """The same layer's attention (after its cache write) by dense attention over each
        sequence's contiguous K/V, gathered through the table; float32."""
        shape, bs = self.shape, self.block_size
        group = shape.q_heads // shape.kv_heads
        seq_lens = md.seq_lens_tensor.tolist()
        starts = md.query_start_loc.tolist()
        tables = md.block_tables.long()
        out = torch.empty((plan.num_tokens, shape.q_heads, shape.head_dim), dtype=torch.float32, device=self.device)
        offsets = torch.arange(bs, device=self.device)
        for i, seq_len in enumerate(seq_lens):
            slots = (tables[i, : -(-seq_len // bs)][:, None] * bs + offsets).reshape(-1)[:seq_len]
            k = self.k[0][:, slots].float().repeat_interleave(group, 0)
            v = self.v[0][:, slots].float().repeat_interleave(group, 0)
            q = self.queries[starts[i] : starts[i + 1]].float().transpose(0, 1)
            num = starts[i + 1] - starts[i]
            allowed = torch.ones(num, seq_len, dtype=torch.bool, device=self.device).tril(seq_len - num)
            out[starts[i] : starts[i + 1]] = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, scale=self.scale
            ).transpose(0, 1)
        return out


class AttentionMismatch(AssertionError):
    """FlexAttention over the metadata differs from dense attention."""


def check(attention: PagedAttention, md, plan: StepPlan, step: int) -> float:
    """One layer's output against dense attention (the cache write done once, for both);
    raises AttentionMismatch naming the step. Returns the largest difference."""
    got = attention.layer(md, plan).float()
    want = attention.dense(md, plan)
    tol = 1e-4 if attention.shape.torch_dtype == torch.float32 else 3e-2
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    if not diff <= tol:
        raise AttentionMismatch(
            f"step {step}: FlexAttention over the metadata differs from dense attention by "
            f"{diff:.3g} (tolerance {tol:g})"
        )
    return diff


def _compiles() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["stats"].values())) if "stats" in counters else 0


def passes(device: torch.device) -> int:
    """How many times `measure` replays the window: warm, host times, and on CUDA device times."""
    return 3 if device.type == "cuda" else 2


def measure(
    workload,
    manager,
    shape: AttentionShape,
    device: torch.device,
    checks: int = 3,
    on_step: Callable[[], None] | None = None,
) -> dict:
    """One layer's attention on every step of `workload` (a `TraceReplay`), its metadata
    made by `manager` (sized as the scheduler's pool); see the module docstring.

    Returns {"shape", "layer_us": [per step], "layer_p50_us", "layer_p99_us",
    "layer_mean_us", "layer_host_us": [per step], "layer_host_p50_us", "layer_host_p99_us",
    "checked_steps", "max_abs_diff", "compiles_timed", "late_launches"}: on CUDA the layer's
    device time (events behind a spin of at least twice the host's time to launch that
    step's layer, measured in a pass of its own) and that host time; on the CPU both are
    the call's time. `on_step()` is called after each step of each pass (`passes`)."""
    from disagmoe_bench.timing import Forward, tail
    from disagmoe_bench.workloads import Step

    steps: list[Step] = [workload.step_at(k) for k in range(workload.num_steps)]
    plans = [plan_step(step.layers[0], device) for step in steps]
    max_tokens = max((p.num_tokens for p in plans), default=1)
    attention = PagedAttention(manager.num_blocks, manager.block_size, max_tokens, shape, device)
    cuda = device.type == "cuda"
    sample = {round(k * (len(steps) - 1) / max(checks - 1, 1)) for k in range(checks)} if checks else set()

    def replay(each: Callable[[int, object, StepPlan], None]) -> None:
        workload.start(manager)
        for k, (step, plan) in enumerate(zip(steps, plans)):
            md = step.run(manager)
            attention.scatter_columns(md)
            each(k, md, plan)
            if on_step is not None:
                on_step()

    diffs: list[float] = []

    def warm(k: int, md, plan: StepPlan) -> None:
        if k in sample:
            diffs.append(check(attention, md, plan, k))
        else:
            attention.layer(md, plan)

    replay(warm)  # compiles every shape the window asks for (start-up), checks the sampled steps
    compiled = _compiles()
    host: list[float] = []

    def launch(k: int, md, plan: StepPlan) -> None:
        start = time.perf_counter()
        attention.layer(md, plan)
        host.append((time.perf_counter() - start) * 1e6)
        if cuda:
            torch.cuda.synchronize(device)

    replay(launch)  # each layer's host time: on the CPU its whole time, on CUDA the spin's length
    times, late = host, 0
    if cuda:
        calibrated = Forward(SPIN_US, device)
        cycles_per_us = calibrated.cycles / calibrated.us
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in steps]

        def timed(k: int, md, plan: StepPlan) -> None:
            nonlocal late
            spin_us = max(SPIN_US, 2 * host[k])
            torch.cuda._sleep(int(spin_us * cycles_per_us))
            start = time.perf_counter()
            events[k][0].record()
            attention.layer(md, plan)
            events[k][1].record()
            late += (time.perf_counter() - start) * 1e6 > spin_us
            torch.cuda.synchronize(device)  # one step at a time: the next spin starts on an idle device

        replay(timed)
        times = [a.elapsed_time(b) * 1e3 for a, b in events]
    spread, launched = tail(times), tail(host)
    return {
        "shape": dataclasses.asdict(shape),
        "timed": "device" if cuda else "CPU",
        "layer_us": times,
        "layer_mean_us": sum(times) / max(len(times), 1),
        "layer_p50_us": spread["p50"],
        "layer_p99_us": spread["p99"],
        "layer_host_us": host,
        "layer_host_p50_us": launched["p50"],
        "layer_host_p99_us": launched["p99"],
        "checked_steps": sorted(sample),
        "max_abs_diff": max(diffs, default=0.0),
        "compiles_timed": _compiles() - compiled,
        "late_launches": late,
    }


def share(bookkeeping_us: float, layer_us: float, model_layers: int) -> float:
    """The bookkeeping's share of a step: b / (b + model_layers * a)."""
    total = bookkeeping_us + model_layers * layer_us
    return bookkeeping_us / total if total > 0 else 0.0


def pool_manager(workload, device: torch.device, name: str = "cpu") -> BlockManager:
    """A manager of the design `name` with the scheduler's pool (`workload.config`: its blocks and
    block size) and the window's sizes: the pool the attention's KV lives in."""
    from disagmoe.block_manager import design
    from disagmoe.config import CacheConfig, ModelConfig

    config = workload.config
    max_seq_len, max_reqs = workload.sizes(workload.num_steps)
    model = ModelConfig(layer_ids=workload.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_reqs)
    return design(name).cls(model, CacheConfig(config.block_size, config.num_blocks), max_reqs, device=device)


CPU_MASK_EVALUATIONS = 1 << 27
"""On torch's CPU device FlexAttention runs eagerly, evaluating the mask over every slot of
the pool for every query: past this many evaluations a layer, a replay's attention is
left out (a smaller `--pool-blocks` brings it back)."""


def report(
    results: list[dict],
    factory: Callable,
    num_steps: int,
    device: torch.device,
    model_layers: int,
    on_step: Callable[[], None] | None = None,
) -> dict:
    """Attention in the loop for one replayed grid point: `measure` on the same steps the
    variants were timed on (`factory(num_steps)`), and each variant's bookkeeping share
    (its pipelined wall time per step, else its synced one). Returns the JSON record,
    with "skipped" and the reason instead where the CPU's eager attention would take too
    long (and "pool_blocks_that_run_it": the largest pool that runs it, 0 for none)."""
    workload = factory(num_steps)
    shape = dataclasses.replace(AttentionShape() if device.type == "cuda" else CPU_SHAPE, model_layers=model_layers)
    slots = workload.config.num_blocks * workload.config.block_size
    if device.type != "cuda" and slots * workload.max_step_tokens > CPU_MASK_EVALUATIONS:
        fits = CPU_MASK_EVALUATIONS // workload.max_step_tokens // workload.config.block_size
        return {
            "skipped": f"eager FlexAttention on the CPU over {slots} slots x {workload.max_step_tokens} "
            f"queries a layer; "
            + (f"--pool-blocks {fits} or fewer runs it" if fits else "no pool runs it at this step's size"),
            "pool_blocks_that_run_it": fits,
        }
    pool_bytes = 2 * slots * shape.kv_heads * shape.head_dim * shape.torch_dtype.itemsize
    if device.type == "cuda" and pool_bytes > torch.cuda.get_device_properties(device).total_memory // 2:
        return {
            "skipped": f"a KV pool of {slots} slots at this layer shape takes {pool_bytes / 2**30:.1f} GiB, "
            f"past half the device's memory"
        }
    manager = pool_manager(workload, device)
    measured = measure(workload, manager, shape, device, on_step=on_step)
    manager.reset_state()
    by_mode = {r["mode"]: r for r in results}
    timed = by_mode.get("pipelined") or by_mode.get("synced")
    measured["bookkeeping_mode"] = timed["mode"] if timed else None
    variants = timed["variants"].items() if timed else ()
    measured["bookkeeping_us"] = {name: v["median"]["wall_us"] for name, v in variants}
    measured["share"] = {
        name: share(us, measured["layer_mean_us"], model_layers) for name, us in measured["bookkeeping_us"].items()
    }
    return measured


def report_lines(point: dict, record: dict) -> list[str]:
    """A replayed point's attention and each variant's share, as lines to print."""
    label = " ".join(f"{k}={v}" for k, v in point.items())
    if "skipped" in record:
        return [f"  {label}: attention left out ({record['skipped']})"]
    s = record["shape"]
    lines = [
        f"  {label}: one layer of attention ({s['q_heads']} query heads, {s['kv_heads']} KV heads, "
        f"dim {s['head_dim']}, {s['dtype']})",
        f"    {record['timed']} time a layer: mean {duration(record['layer_mean_us'])}, p50 "
        f"{duration(record['layer_p50_us'])}, p99 {duration(record['layer_p99_us'])}; host time to launch it p50 "
        f"{duration(record['layer_host_p50_us'])}, p99 {duration(record['layer_host_p99_us'])}",
        f"    steps {record['checked_steps']} equal to dense attention (largest difference "
        f"{record['max_abs_diff']:.2g}); compiles while timed {record['compiles_timed']}"
        + (f"; {record['late_launches']} launches outlasted their spin" if record["late_launches"] else ""),
    ]
    for name, fraction in record["share"].items():
        lines.append(
            f"    {name:<14} bookkeeping {duration(record['bookkeeping_us'][name]):>9} a step "
            f"({record['bookkeeping_mode']}): {100 * fraction:.3g}% of a step with {s['model_layers']} layers"
        )
    return lines

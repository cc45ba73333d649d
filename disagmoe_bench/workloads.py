"""What a serving engine asks of a block manager, step after step.

A step is the first layer (release of the requests that finished, the prefix
matches of the requests it admits (`Match`: replays with a prefix cache only), then
`update_block_table` and `pack_flash_attn_metadata`) followed by the same batch
at every later layer (update + pack). Two workloads produce steps:

- `DecodeWorkload`: B requests of context L decode one token each step. With
  `lengths="grow"` the lengths grow by one every step for the whole run, as in a
  real decode (the block-table width grows with them); with `lengths="cycle"`
  (the seed suite's way) the state is rebuilt untimed every `CYCLE_STEPS` steps,
  so lengths stay within [L, L + 16].
- `TraceWorkload`: a seeded continuous-batching trace (see `TraceConfig`).

Both are pure host data, built before anything is timed, so every design
replays exactly the same steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from disagmoe.batch import BatchMetadata
from disagmoe.block_manager.base import BlockManager
from disagmoe.config import checked_int
from disagmoe.metadata import FlashAttentionMetadata
from disagmoe_bench.inputs import MAX_LAYERS

CYCLE_STEPS = 16  # steps between rebuilds with lengths="cycle" (the seed suite's DECODE_STEPS)
LENGTHS = ("grow", "cycle")


class PrefixMismatch(RuntimeError):
    """A manager's `match_prefix` returned another length than the scheduler's model predicted."""


def design_name(manager: BlockManager) -> str:
    """The registry's name of the manager's design (its class name if unregistered)."""
    from disagmoe.block_manager import DESIGNS

    return next((d.name for d in DESIGNS.values() if type(manager) is d.cls), type(manager).__name__)


@dataclass(frozen=True)
class Match:
    """A prefix match a step makes before its first-layer update: request `req_id` with its
    prompt's `block_hashes`, of which the scheduler's model predicts `cached_tokens` cached."""

    req_id: int
    block_hashes: tuple[int, ...]
    cached_tokens: int

    def run(self, manager: BlockManager) -> None:
        """`manager.match_prefix`; PrefixMismatch naming the request, the design and both
        lengths unless it returns the predicted one."""
        got = manager.match_prefix(self.req_id, self.block_hashes)  # type: ignore[attr-defined]
        if got != self.cached_tokens:
            raise PrefixMismatch(
                f"request {self.req_id}: the {design_name(manager)} design's match_prefix returned "
                f"{got} cached tokens of {len(self.block_hashes)} blocks; the scheduler's model "
                f"predicted {self.cached_tokens}"
            )


@dataclass(frozen=True)
class Step:
    """One engine step: `release` at the first layer, then the `matches` of the requests it
    admits, then one batch per layer."""

    release: tuple[int, ...]
    layers: tuple[BatchMetadata, ...]
    matches: tuple[Match, ...] = ()

    def run(self, manager: BlockManager) -> FlashAttentionMetadata | None:
        """Every call of the step, back to back (nothing waits for the device); returns the
        first layer's metadata (what an attention layer of the step reads)."""
        if self.release:
            manager.release_seqs(self.release)
        for match in self.matches:
            match.run(manager)
        first = None
        for batch in self.layers:
            manager.update_block_table(batch)
            packed = manager.pack_flash_attn_metadata(batch)
            if first is None:
                first = packed
        return first

    def calls(self, manager: BlockManager) -> Iterator[tuple]:
        """(method, argument) of every call of the step, in order."""
        if self.release:
            yield manager.release_seqs, self.release
        for match in self.matches:
            yield match.run, manager
        for batch in self.layers:
            yield manager.update_block_table, batch
            yield manager.pack_flash_attn_metadata, batch


def layer_batches(layer_ids: tuple[int, ...], req_ids: list[int], prefill_lens: list[int]) -> tuple[BatchMetadata, ...]:
    """The same batch at each layer; the first `len(prefill_lens)` entries are prefill entries."""
    return tuple(BatchMetadata(layer, req_ids, len(prefill_lens), prefill_lens) for layer in layer_ids)


def prefill(manager: BlockManager, layer_id: int, lengths: list[tuple[int, int]], max_tokens: int = 1 << 22) -> None:
    """Registers requests (id, length) at the first layer, in batches of at most
    `max_tokens` tokens, untimed; ends with the device synchronised."""
    start = 0
    while start < len(lengths):
        end, tokens = start, 0
        while end < len(lengths) and (end == start or tokens + lengths[end][1] <= max_tokens):
            tokens += lengths[end][1]
            end += 1
        chunk = lengths[start:end]
        manager.update_block_table(BatchMetadata(layer_id, [i for i, _ in chunk], len(chunk), [n for _, n in chunk]))
        start = end
    manager.synchronize()


class DecodeWorkload:
    """B requests holding L tokens each, decoding one token a step at every layer."""

    name = "decode"

    def __init__(self, batch_size: int, context: int, num_layers: int = 1, lengths: str = "grow") -> None:
        self.batch_size = checked_int("DecodeWorkload", "batch_size", batch_size)
        self.context = checked_int("DecodeWorkload", "context", context)
        self.num_layers = checked_int("DecodeWorkload", "num_layers", num_layers, high=MAX_LAYERS)
        if lengths not in LENGTHS:
            raise ValueError(f"DecodeWorkload: lengths={lengths!r:.80} is not one of {LENGTHS}")
        self.lengths = lengths
        self.layer_ids = tuple(range(self.num_layers))
        # With lengths="cycle" no window may span a rebuild (see timing.Replay).
        self.max_window = CYCLE_STEPS if lengths == "cycle" else None

    @functools.cached_property
    def step(self) -> Step:
        """The one decode step of every request (made on first use: a manager sized from
        `sizes` refuses a batch too large for it by arithmetic before this list exists)."""
        return Step((), layer_batches(self.layer_ids, list(range(self.batch_size)), []))

    def describe(self) -> dict:
        return {
            "workload": self.name,
            "batch_size": self.batch_size,
            "context": self.context,
            "num_layers": self.num_layers,
            "lengths": self.lengths,
        }

    def label(self) -> str:
        return f"B={self.batch_size} L={self.context}"

    def sizes(self, num_steps: int) -> tuple[int, int]:
        """(max_seq_len, max_running_reqs) for a run of `num_steps` steps."""
        grown = CYCLE_STEPS if self.lengths == "cycle" else num_steps
        return self.context + grown, self.batch_size

    @property
    def max_step_tokens(self) -> int:
        """Query tokens of the largest step (what a manager is warmed up for)."""
        return self.batch_size

    def start(self, manager: BlockManager) -> None:
        """Empties the manager and registers the B requests at length L (untimed)."""
        manager.reset_state()
        prefill(manager, self.layer_ids[0], [(i, self.context) for i in range(self.batch_size)])

    def step_at(self, position: int) -> Step:
        return self.step


@dataclass(frozen=True)
class TraceConfig:
    """A continuous-batching trace of `running` requests (R).

    Every request has a prompt length drawn log-uniform on [min(16, P), P] (as
    many prompts of 16-160 tokens as of 1.6K-16K: a long tail of long prompts;
    P = `max_prompt`) and an output length drawn log-uniform on
    [min(16, O), O] (O = `max_output`). The trace starts in a steady state: R
    requests already prefilled, each part-way through its output (uniform). Each
    step, requests that finished their output in the previous step are released
    at the first layer and replaced by new ones (R stays constant); new
    requests are prefilled first come first served in chunks sharing a budget
    of `chunk` tokens a step (C, chunked prefill: a long prompt spans several
    steps, a request waiting for budget is not in that step's batch); every
    request whose prompt is done decodes one token a step. Batches put the
    prefill chunks first, then the decodes, in admission order.
    """

    running: int
    max_prompt: int
    chunk: int = 8192
    max_output: int = 2048
    num_layers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("running", "max_prompt", "chunk", "max_output", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"TraceConfig: {name}={getattr(self, name)} must be >= 1")


def log_uniform(rng: np.random.Generator, high: int, low: int = 16) -> int:
    low = min(low, high)
    return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))


class TraceWorkload:
    """`TraceConfig`'s trace, generated once for `num_steps` steps."""

    name = "trace"
    max_window = None

    def __init__(self, config: TraceConfig, num_steps: int) -> None:
        self.config = config
        self.num_layers = config.num_layers
        self.layer_ids = tuple(range(config.num_layers))
        self.initial, self.steps = _generate(config, num_steps, self.layer_ids)

    def describe(self) -> dict:
        return {"workload": self.name, **dataclasses.asdict(self.config), "steps": self.stats()}

    def label(self) -> str:
        return f"R={self.config.running} P={self.config.max_prompt}"

    def sizes(self, num_steps: int) -> tuple[int, int]:
        """(max_seq_len, max_running_reqs): every request may reach P + O tokens."""
        return self.config.max_prompt + self.config.max_output, self.config.running

    @property
    def max_step_tokens(self) -> int:
        """Query tokens of the largest step: a chunk of prefill and a decode of every request."""
        return self.config.chunk + self.config.running

    def start(self, manager: BlockManager) -> None:
        manager.reset_state()
        prefill(manager, self.layer_ids[0], self.initial)

    def step_at(self, position: int) -> Step:
        if position >= len(self.steps):
            raise IndexError(f"the trace holds {len(self.steps)} steps; step {position} was asked for")
        return self.steps[position]

    def stats(self) -> dict:
        """Means per step over the trace: entries, tokens, releases, widest row."""
        first = [s.layers[0] for s in self.steps]
        return {
            "num_steps": len(self.steps),
            "mean_decode_entries": _mean(b.num_decode_tokens for b in first),
            "mean_prefill_entries": _mean(b.num_prefill_seqs for b in first),
            "mean_prefill_tokens": _mean(b.num_prefill_tokens for b in first),
            "mean_released": _mean(len(s.release) for s in self.steps),
            "steps_with_prefill": _mean(b.num_prefill_seqs > 0 for b in first),
        }


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


@dataclass
class _Request:
    id: int
    prompt: int
    output: int
    prefilled: int = 0
    decoded: int = 0


def _generate(
    config: TraceConfig, num_steps: int, layer_ids: tuple[int, ...]
) -> tuple[list[tuple[int, int]], list[Step]]:
    rng = np.random.default_rng(config.seed)
    next_id = 0

    def new_request() -> _Request:
        nonlocal next_id
        request = _Request(next_id, log_uniform(rng, config.max_prompt), log_uniform(rng, config.max_output))
        next_id += 1
        return request

    decoding: list[_Request] = []
    for _ in range(config.running):
        request = new_request()
        request.prefilled = request.prompt
        request.decoded = int(rng.integers(0, request.output))
        decoding.append(request)
    initial = [(r.id, r.prompt + r.decoded) for r in decoding]
    waiting: deque[_Request] = deque()
    finished: list[_Request] = []
    steps = []
    for _ in range(num_steps):
        release = tuple(r.id for r in finished)
        waiting.extend(new_request() for _ in finished)
        budget, chunks = config.chunk, []
        for request in waiting:
            if budget == 0:
                break
            n = min(request.prompt - request.prefilled, budget)
            chunks.append((request, n))
            budget -= n
        batch_decodes = list(decoding)
        req_ids = [r.id for r, _ in chunks] + [r.id for r in batch_decodes]
        steps.append(Step(release, layer_batches(layer_ids, req_ids, [n for _, n in chunks])))
        for request, n in chunks:
            request.prefilled += n
        while waiting and waiting[0].prefilled == waiting[0].prompt:
            decoding.append(waiting.popleft())
        finished = []
        for request in batch_decodes:
            request.decoded += 1
            if request.decoded == request.output:
                finished.append(request)
        if finished:
            done = {r.id for r in finished}
            decoding = [r for r in decoding if r.id not in done]
    return initial, steps

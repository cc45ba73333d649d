"""A deterministic continuous-batching scheduler: a trace's arrivals as engine steps.

`Scheduler` plays a serving engine's loop over `TraceRequest`s as vLLM's and SGLang's
schedulers do; `TraceReplay` is a window of its steps with the interface of
`workloads.TraceWorkload`: pure host data, built before anything is timed, the same
for the same inputs.

Time: step k happens at time k * `step_seconds`, whatever its work. A request arriving
at t seconds (the trace's time divided by `rate_scale`: 2 plays the trace at twice its
rate) joins the back of the waiting queue at the first step whose time is >= t (to
within a millionth of a step).

Each step, in order:
1. `release`: the requests that finished in the step before, then the ones this step
   preempts (below), newest first;
2. the arrivals join the waiting queue;
3. every running request whose prefill is done decodes one token (they run already);
4. prefill, first come first served, from the token budget the decodes left: the partly
   prefilled request (at most one: the newest running request), then the waiting queue
   front to back, each a chunk of min(what is left of its prefill, the budget, what the
   pool holds) tokens (chunked prefill: a long prompt spans several steps). A waiting
   request is admitted only while fewer than `max_running` run and only when the pool
   keeps 1% of its blocks free after the chunk (vLLM's watermark), and not in a step
   that preempted (as vLLM); the queue stops at the first request that gets nothing.
Batches hold the prefill chunks first, in that order, then the decodes in admission order.

KV pool: a request holding n tokens holds ceil(n / block_size) blocks, at most
`num_blocks` in all after any step. When the decodes of step 3 need more blocks than
are free, the newest running request is preempted until they fit: released at that
step and put back at the front of the waiting queue, it is prefilled again from scratch
when readmitted, its prompt and the tokens it had generated (recomputation).

Request ids: every admission takes a new id, 0, 1, 2, ... in admission order, so a
readmitted request has an id that was never used before (`Scheduler.admissions` maps
each id to its trace request); ids are never reused.

First token: the step that completes a request's prefill produces its first output
token; each decode feeds the newest token and produces the next. A request of P prompt
and O output tokens thus ends holding P + O - 1 tokens, in the step that produces its
O-th token, and is released at the start of the next step. A request whose P + O - 1
tokens exceed the pool never fits: it is left out (`Scheduler.rejected`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from statistics import fmean
from typing import Sequence

import numpy as np

from disagmoe.block_manager.base import BlockManager
from disagmoe_bench.traces import TraceRequest
from disagmoe_bench.workloads import Step, layer_batches, prefill

WATERMARK = 0.01
"""Share of the pool an admission leaves free (vLLM's default watermark)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """Token budget a step (prefill and decode tokens), running requests at most, the KV
    pool (`num_blocks` of `block_size` tokens), the time a step stands for, the arrival
    rate's factor, and the attention layers of each step."""

    token_budget: int = 8192
    max_running: int = 256
    num_blocks: int = 32768
    block_size: int = 16
    step_seconds: float = 0.02
    rate_scale: float = 1.0
    num_layers: int = 2

    def __post_init__(self) -> None:
        for name in ("token_budget", "max_running", "num_blocks", "block_size", "num_layers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"SchedulerConfig: {name}={value!r} is not an int >= 1")
        for name in ("step_seconds", "rate_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"SchedulerConfig: {name}={value!r} is not a number > 0")
        if self.max_running > self.token_budget:
            raise ValueError(
                f"SchedulerConfig: max_running={self.max_running} > token_budget="
                f"{self.token_budget}: every running request must be able to decode"
            )

    def arrival_step(self, arrival_s: float) -> int:
        """The first step whose time is >= the arrival (scaled by `rate_scale`)."""
        return max(0, math.ceil(round(arrival_s / self.rate_scale / self.step_seconds, 6)))


@dataclass(frozen=True)
class Admission:
    """What an id stands for: the trace's request `index`, admitted at `step` to prefill
    `prefill_tokens` (its prompt and the output tokens it had before a preemption)."""

    index: int
    step: int
    prefill_tokens: int


@dataclass(frozen=True)
class Scheduled:
    """One step: ids released, prefill entries (id, tokens), decode ids, and counts after it."""

    release: tuple[int, ...]
    prefills: tuple[tuple[int, int], ...]
    decodes: tuple[int, ...]
    preempted: int
    finished: int
    holding: int  # requests holding KV (finished ones until their release)
    used_blocks: int
    waiting: int


@dataclass(eq=False)
class _Running:
    id: int
    index: int
    target: int  # tokens of the prefill
    held: int = 0


class Scheduler:
    """The scheduler's state over `requests` (sorted by arrival); `run()` plays one step."""

    def __init__(self, requests: Sequence[TraceRequest], config: SchedulerConfig) -> None:
        self.requests, self.config = requests, config
        for i, r in enumerate(requests):
            if (
                type(r.prompt_tokens) is not int
                or type(r.output_tokens) is not int
                or min(r.prompt_tokens, r.output_tokens) < 1
            ):
                raise ValueError(f"request {i}: {r} needs int lengths >= 1")
            if i and r.arrival_s < requests[i - 1].arrival_s:
                raise ValueError(f"request {i} arrives before request {i - 1}: sort the requests by arrival")
        capacity = config.num_blocks * config.block_size
        self.rejected = frozenset(i for i, r in enumerate(requests) if r.prompt_tokens + r.output_tokens - 1 > capacity)
        self.arrivals = [config.arrival_step(r.arrival_s) for r in requests]
        self.step = 0
        self.generated = [0] * len(requests)
        self.admissions: dict[int, Admission] = {}
        self._next = 0  # the next request to arrive
        self._waiting: deque[int] = deque()
        self._running: list[_Running] = []
        self._finished: list[_Running] = []
        self._used = 0
        self._reserve = int(WATERMARK * config.num_blocks)

    def holding(self) -> list[tuple[int, int]]:
        """(id, tokens) of every request holding KV (finished ones until released), by id."""
        return sorted((r.id, r.held) for r in self._running + self._finished)

    def skip_to(self, step: int) -> None:
        """Plays the steps before `step`, jumping over idle stretches."""
        while self.step < step:
            if not (self._running or self._finished or self._waiting):
                upcoming = self.arrivals[self._next] if self._next < len(self.arrivals) else step
                if upcoming > self.step:
                    self.step = min(step, upcoming)
                    continue
            self.run()

    def run(self) -> Scheduled:
        """Plans and plays the next step."""
        config, bs, running, waiting = self.config, self.config.block_size, self._running, self._waiting
        release = [r.id for r in self._finished]
        self._used -= sum(_blocks(r.held, bs) for r in self._finished)
        while self._next < len(self.arrivals) and self.arrivals[self._next] <= self.step:
            if self._next not in self.rejected:
                waiting.append(self._next)
            self._next += 1
        free = config.num_blocks - self._used
        need = sum(1 for r in running if r.held >= r.target and r.held % bs == 0)
        preempted = 0
        while need > free:
            victim = running.pop()
            free += _blocks(victim.held, bs)
            need -= victim.held >= victim.target and victim.held % bs == 0
            release.append(victim.id)
            waiting.appendleft(victim.index)
            preempted += 1
        decodes = [r for r in running if r.held >= r.target]
        budget, free = config.token_budget - len(decodes), free - need
        chunks: list[tuple[_Running, int]] = []
        blocked = False
        for r in running:
            if r.held < r.target:
                n = min(r.target - r.held, budget, _blocks(r.held, bs) * bs - r.held + free * bs)
                if n == 0:
                    blocked = True
                    break
                chunks.append((r, n))
                budget -= n
                free -= _blocks(r.held + n, bs) - _blocks(r.held, bs)
        while not (blocked or preempted) and waiting and budget and len(running) < config.max_running:
            index = waiting[0]
            target = self.requests[index].prompt_tokens + self.generated[index]
            n = min(target, budget, (free - self._reserve) * bs)
            if n <= 0:
                break
            waiting.popleft()
            r = _Running(len(self.admissions), index, target)
            self.admissions[r.id] = Admission(index, self.step, target)
            running.append(r)
            chunks.append((r, n))
            budget -= n
            free -= _blocks(n, bs)
        self._used = config.num_blocks - free
        for r, n in chunks:
            r.held += n
        for r in decodes:
            r.held += 1
        generated, requests = self.generated, self.requests
        for r in decodes + [r for r, _ in chunks if r.held == r.target]:
            generated[r.index] += 1
        self._finished = [r for r in running if generated[r.index] == requests[r.index].output_tokens]
        if self._finished:
            self._running = [r for r in running if generated[r.index] < requests[r.index].output_tokens]
        self.step += 1
        return Scheduled(
            tuple(release),
            tuple((r.id, n) for r, n in chunks),
            tuple(r.id for r in decodes),
            preempted,
            len(self._finished),
            len(running),
            self._used,
            len(waiting),
        )


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def busiest_window(requests: Sequence[TraceRequest], config: SchedulerConfig, num_steps: int) -> int:
    """The first step of the window of `num_steps` steps whose arrivals bring the most
    tokens (prompt and output), the earliest of equals: the trace's busiest stretch."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    if not requests:
        return 0
    steps = np.array([config.arrival_step(r.arrival_s) for r in requests])
    tokens = np.bincount(steps, weights=[r.prompt_tokens + r.output_tokens for r in requests]).astype(np.int64)
    totals = np.concatenate(([0], np.cumsum(tokens)))
    width = min(num_steps, len(tokens))
    return int(np.argmax(totals[width:] - totals[: len(totals) - width]))


class TraceReplay:
    """Steps [start, start + num_steps) of `Scheduler` over `requests`, with the interface
    of `workloads.TraceWorkload`: `start(manager)` registers the requests holding KV when
    the window opens, then `step_at(k)` is the window's k-th step."""

    name = "replay"
    max_window = None

    def __init__(
        self,
        requests: Sequence[TraceRequest],
        config: SchedulerConfig = SchedulerConfig(),
        start: int = 0,
        num_steps: int = 1000,
        source: str = "trace",
    ) -> None:
        if start < 0 or num_steps < 1:
            raise ValueError(f"start={start} must be >= 0 and num_steps={num_steps} >= 1")
        self.config, self.source = config, source
        self.first_step, self.num_steps = start, num_steps
        self.num_layers = config.num_layers
        self.layer_ids = tuple(range(config.num_layers))
        self.scheduler = scheduler = Scheduler(requests, config)
        scheduler.skip_to(start)
        self.initial = scheduler.holding()
        self.scheduled = [scheduler.run() for _ in range(num_steps)]
        self.steps = [
            Step(
                s.release,
                layer_batches(self.layer_ids, [i for i, _ in s.prefills] + list(s.decodes), [n for _, n in s.prefills]),
            )
            for s in self.scheduled
        ]
        ids = {i for i, _ in self.initial} | {i for s in self.scheduled for i, _ in s.prefills}
        indices = {scheduler.admissions[i].index for i in ids}
        self._max_seq_len = max((requests[i].prompt_tokens + requests[i].output_tokens for i in indices), default=1)
        self._max_running = max([len(self.initial)] + [s.holding for s in self.scheduled] + [1])
        self._max_step_tokens = max(max(sum(n for _, n in s.prefills) + len(s.decodes) for s in self.scheduled), 1)
        self._arrived = sum(start <= step < start + num_steps for step in scheduler.arrivals)

    def describe(self) -> dict:
        return {
            "workload": self.name,
            "source": self.source,
            **dataclasses.asdict(self.config),
            "start": self.first_step,
            "steps": self.stats(),
        }

    def label(self) -> str:
        return f"{self.source} steps {self.first_step}-{self.first_step + self.num_steps}"

    def sizes(self, num_steps: int) -> tuple[int, int]:
        """(max_seq_len, max_running_reqs) of the window: its longest request (prompt and
        output) and its most requests holding KV at once."""
        return self._max_seq_len, self._max_running

    @property
    def max_step_tokens(self) -> int:
        """Query tokens of the window's largest step."""
        return self._max_step_tokens

    def start(self, manager: BlockManager) -> None:
        """Empties the manager and registers the requests holding KV when the window opens."""
        manager.reset_state()
        prefill(manager, self.layer_ids[0], self.initial)

    def step_at(self, position: int) -> Step:
        if not 0 <= position < len(self.steps):
            raise IndexError(f"the window holds {len(self.steps)} steps; step {position} was asked for")
        return self.steps[position]

    def stats(self) -> dict:
        """The window's steps: requests holding KV, waiting and the pool's share in use
        (means and peaks), prefill and decode tokens (means), preemptions, arrivals and
        requests finished; requests the pool can never hold, over the whole trace."""
        scheduled, blocks = self.scheduled, self.config.num_blocks
        return {
            "num_steps": len(scheduled),
            "running_mean": fmean(s.holding for s in scheduled),
            "running_peak": max(s.holding for s in scheduled),
            "waiting_mean": fmean(s.waiting for s in scheduled),
            "waiting_peak": max(s.waiting for s in scheduled),
            "pool_mean": fmean(s.used_blocks / blocks for s in scheduled),
            "pool_peak": max(s.used_blocks for s in scheduled) / blocks,
            "prefill_tokens_mean": fmean(sum(n for _, n in s.prefills) for s in scheduled),
            "decode_tokens_mean": fmean(len(s.decodes) for s in scheduled),
            "preemptions": sum(s.preempted for s in scheduled),
            "arrived": self._arrived,
            "finished": sum(s.finished for s in scheduled),
            "rejected": len(self.scheduler.rejected),
        }

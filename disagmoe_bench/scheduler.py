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

Prefix cache (`prefix_cache`, docs/prefix-caching.md): "off" is the above. In "on" and
"miss" the scheduler keeps the cache's model (`prefix_model.PrefixModel`): a block is
free, held (by one request or shared) or evictable, and "free" above counts free plus
evictable blocks, as the managers do. Each admission first matches its prompt's block
hashes (`prefix_hashes.BlockHashes`; in "miss" as many hashes, each unique to the
admission: the cost of the cache at a 0% hit rate): its matched tokens are held at once
and shorten its prefill, which starts there, as in an engine; a matched evictable block
leaves what the pool offers, and the admission's chunk is sized from the rest. A
preempted request's release leaves its indexed blocks evictable, and its readmission
matches again. Each step lists its matches (`workloads.Match`: id, hashes, the cached
length the model predicts), which a replay makes before the step's first-layer update.

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
from disagmoe_bench.prefix_hashes import BlockHashes
from disagmoe_bench.prefix_model import PrefixModel
from disagmoe_bench.traces import TraceRequest
from disagmoe_bench.workloads import Match, Step, layer_batches, prefill

WATERMARK = 0.01
"""Share of the pool an admission leaves free (vLLM's default watermark)."""
PREFIX_MODES = ("off", "miss", "on")
MAX_COUNT = 2**31 - 1
"""The largest token budget, running cap, pool or block size: the managers' counts are int32."""
STEP_SECONDS = (1e-6, 3600.0)
"""The range of `step_seconds`: a microsecond to an hour."""
RATE_SCALES = (1e-6, 1e6)
"""The range of `rate_scale`."""
LAST_STEP = 2**53
"""The latest step an arrival or a window may fall on (steps stay exact in a float)."""
MAX_WINDOW = 10_000_000
"""The most steps a `TraceReplay` holds (each is built before anything is timed)."""


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
            if type(value) is not int:
                raise TypeError(f"SchedulerConfig: {name}={value!r:.40} is not an int")
            if not 1 <= value <= MAX_COUNT:
                raise ValueError(f"SchedulerConfig: {name}={value!r:.40} is not in [1, {MAX_COUNT}]")
        for name, (low, high) in (("step_seconds", STEP_SECONDS), ("rate_scale", RATE_SCALES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"SchedulerConfig: {name}={value!r:.40} is not a number")
            if not low <= value <= high:  # (NaN too)
                raise ValueError(f"SchedulerConfig: {name}={value!r:.40} is not a number in [{low:g}, {high:g}]")
        if self.max_running > self.token_budget:
            raise ValueError(
                f"SchedulerConfig: max_running={self.max_running} > token_budget="
                f"{self.token_budget}: every running request must be able to decode"
            )

    def arrival_step(self, arrival_s: float) -> int:
        """The first step whose time is >= the arrival (scaled by `rate_scale`); ValueError
        for an arrival that is no finite number or falls past `LAST_STEP`."""
        if isinstance(arrival_s, bool) or not isinstance(arrival_s, (int, float)) or not math.isfinite(arrival_s):
            raise ValueError(f"an arrival at {arrival_s!r:.40} s is not a finite number of seconds")
        steps = arrival_s / self.rate_scale / self.step_seconds
        if not steps <= LAST_STEP:  # (an overflow to infinity too)
            raise ValueError(
                f"an arrival at {arrival_s:g} s falls on step {steps:.3g} at rate_scale={self.rate_scale:g} and "
                f"step_seconds={self.step_seconds:g}, past step {LAST_STEP} (2**53)"
            )
        return max(0, math.ceil(round(steps, 6)))


@dataclass(frozen=True)
class Admission:
    """What an id stands for: the trace's request `index`, admitted at `step` to prefill
    `prefill_tokens` (its prompt and the output tokens it had before a preemption), of which
    `cached_tokens` came from the prefix cache."""

    index: int
    step: int
    prefill_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Scheduled:
    """One step: ids released, prefill entries (id, tokens), decode ids, and counts after it;
    with a prefix cache, its matches, the blocks its update evicts and those left evictable."""

    release: tuple[int, ...]
    prefills: tuple[tuple[int, int], ...]
    decodes: tuple[int, ...]
    preempted: int
    finished: int
    holding: int  # requests holding KV (finished ones until their release)
    used_blocks: int
    waiting: int
    matches: tuple[Match, ...] = ()
    evicted_blocks: int = 0
    evictable_blocks: int = 0


@dataclass(eq=False)
class _Running:
    id: int
    index: int
    target: int  # tokens of the prefill
    held: int = 0


class Scheduler:
    """The scheduler's state over `requests` (sorted by arrival); `run()` plays one step.
    With `prefix_cache` "miss" or "on", `cache` is its model of the managers' prefix cache
    and `hashes` the requests' block hashes (ValueError for a trace without any)."""

    def __init__(self, requests: Sequence[TraceRequest], config: SchedulerConfig, prefix_cache: str = "off") -> None:
        if prefix_cache not in PREFIX_MODES:
            raise ValueError(f"prefix_cache={prefix_cache!r} is not one of {PREFIX_MODES}")
        self.requests, self.config, self.prefix_cache = requests, config, prefix_cache
        self.arrivals = []
        for i, r in enumerate(requests):
            if (
                type(r.prompt_tokens) is not int
                or type(r.output_tokens) is not int
                or not 1 <= min(r.prompt_tokens, r.output_tokens) <= max(r.prompt_tokens, r.output_tokens) <= MAX_COUNT
            ):
                raise ValueError(f"request {i}: {r!r:.200} needs int lengths in [1, {MAX_COUNT}]")
            try:
                self.arrivals.append(config.arrival_step(r.arrival_s))
            except ValueError as err:
                raise ValueError(f"request {i}: {err}") from None
            if i and r.arrival_s < requests[i - 1].arrival_s:
                raise ValueError(f"request {i} arrives before request {i - 1}: sort the requests by arrival")
        capacity = config.num_blocks * config.block_size
        self.rejected = frozenset(i for i, r in enumerate(requests) if r.prompt_tokens + r.output_tokens - 1 > capacity)
        self.step = 0
        self.generated = [0] * len(requests)
        self.admissions: dict[int, Admission] = {}
        self._next = 0  # the next request to arrive
        self._waiting: deque[int] = deque()
        self._running: list[_Running] = []
        self._finished: list[_Running] = []
        self._used = 0
        self._reserve = int(WATERMARK * config.num_blocks)
        self.cache: PrefixModel | None = None
        self.hashes: BlockHashes | None = None
        if prefix_cache != "off":
            self.hashes = BlockHashes(requests, config.block_size)
            if not self.hashes.any:
                raise ValueError(
                    f"prefix_cache={prefix_cache!r}: the trace has no prefix hashes, so every "
                    "match is empty and the cache is never used; replay it with prefix_cache='off'"
                )
            self.cache = PrefixModel(config.num_blocks, config.block_size)
        self._next_miss = 0  # the next hash unique to an admission ("miss")
        self.ghost_tokens = 0  # the longest ghost of `warm_start` (0: none; else a request row more)
        self._front: tuple[int, tuple[int, ...]] = (-1, ())  # the last hashes computed ("on")

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

    def warm_start(self) -> list[Step]:
        """Steps that rebuild the cache's state now on an empty manager (first layer only), and
        the scheduler's model made the rebuilt one, so that the steps after are planned on
        exactly what a manager holds after these.

        First the requests holding KV, by id: each matches its hashes (those past its length
        left out where the match would pass it: the partly prefilled one) and is prefilled
        to its length; then the evictable blocks not indexed by then, oldest first: ghost
        requests (ids -1, -2, ...) fill them under their hashes and are released, their
        blocks last to first, so that the LRU holds them in the same order. Where two of the
        requests held copies of a block, the rebuilt ones may share it: the rebuilt state
        holds at most the blocks the scheduler's does, and the same evictable ones."""
        cache, bs = self.cache, self.config.block_size
        if cache is None:
            raise ValueError("warm_start: the scheduler keeps no prefix cache (prefix_cache='off')")
        rebuilt, steps = PrefixModel(self.config.num_blocks, bs), []
        for r in sorted(self._running + self._finished, key=lambda r: r.id):
            hashes = cache.block_hashes(r.id)
            if rebuilt.cached_prefix(hashes).num_blocks * bs > r.held:
                hashes = hashes[: r.held // bs]
            cached = rebuilt.match_prefix(r.id, hashes)
            if r.held > cached:
                rebuilt.update([(r.id, r.held - cached)])
            steps.append(_setup_step((r.id, hashes, cached), r.held - cached))
        evictable = [h for h in cache.evictable_hashes() if not rebuilt.is_cached(h)]
        longest = max((self.requests[a.index].prompt_tokens for a in self.admissions.values()), default=1)
        per_ghost = max(1, (longest - 1) // bs)
        for ghost, start in enumerate(range(0, len(evictable), per_ghost), 1):
            hashes = tuple(reversed(evictable[start : start + per_ghost]))
            rebuilt.match_prefix(-ghost, hashes)
            rebuilt.update([(-ghost, len(hashes) * bs)])
            rebuilt.release_seqs([-ghost])
            steps += [_setup_step((-ghost, hashes, 0), len(hashes) * bs), Step((-ghost,), ())]
        self.cache, self._used = rebuilt, self.config.num_blocks - rebuilt.num_available
        self.ghost_tokens = per_ghost * bs if evictable else 0
        return steps

    def run(self) -> Scheduled:
        """Plans and plays the next step."""
        config, bs, running, waiting = self.config, self.config.block_size, self._running, self._waiting
        cache = self.cache
        release = [r.id for r in self._finished]
        self._release(self._finished)
        while self._next < len(self.arrivals) and self.arrivals[self._next] <= self.step:
            if self._next not in self.rejected:
                waiting.append(self._next)
            self._next += 1
        free = config.num_blocks - self._used
        need = sum(1 for r in running if r.held >= r.target and r.held % bs == 0)
        preempted = 0
        while need > free:
            victim = running.pop()
            free += self._release([victim])
            need -= victim.held >= victim.target and victim.held % bs == 0
            release.append(victim.id)
            waiting.appendleft(victim.index)
            preempted += 1
        decodes = [r for r in running if r.held >= r.target]
        budget, free = config.token_budget - len(decodes), free - need
        chunks: list[tuple[_Running, int]] = []
        matches: list[Match] = []
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
            hashes = self._hashes_of(index)
            cached, revived = cache.cached_prefix(hashes) if cache is not None else (0, 0)
            n = min(target - cached * bs, budget, (free - revived - self._reserve) * bs)
            if n <= 0:
                break
            waiting.popleft()
            r = _Running(len(self.admissions), index, target)
            if cache is not None:
                if self.prefix_cache == "miss":
                    hashes = self._unique_hashes(index)
                r.held = cache.match_prefix(r.id, hashes)
                matches.append(Match(r.id, hashes, r.held))
            self.admissions[r.id] = Admission(index, self.step, target, r.held)
            running.append(r)
            chunks.append((r, n))
            budget -= n
            free -= revived + _blocks(n, bs)
        self._used = config.num_blocks - free
        for r, n in chunks:
            r.held += n
        for r in decodes:
            r.held += 1
        evicted = self._allocate(chunks, decodes)
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
            tuple(matches),
            evicted,
            cache.prefix_cache_stats().evictable_blocks if cache is not None else 0,
        )

    def _hashes_of(self, index: int) -> tuple[int, ...]:
        """The block hashes the admission of request `index` would match ("on"; none else)."""
        if self.prefix_cache != "on" or self.hashes is None:
            return ()
        if self._front[0] != index:  # (a request blocked at the front is asked for again)
            self._front = (index, self.hashes(index))
        return self._front[1]

    def _unique_hashes(self, index: int) -> tuple[int, ...]:
        """As many hashes as request `index` has, none of them ever given before ("miss")."""
        count = self.hashes.count(index) if self.hashes is not None else 0
        self._next_miss += count
        return tuple(range(self._next_miss - count, self._next_miss))

    def _release(self, released: list[_Running]) -> int:
        """Releases the requests (in order); returns the blocks that became free or evictable."""
        if self.cache is not None:
            blocks = self.cache.release_seqs([r.id for r in released])
        else:
            blocks = sum(_blocks(r.held, self.config.block_size) for r in released)
        self._used -= blocks
        return blocks

    def _allocate(self, chunks: list[tuple[_Running, int]], decodes: list[_Running]) -> int:
        """The step's first-layer update on the cache's model (in batch order); returns the
        blocks it evicted."""
        cache = self.cache
        if cache is None:
            return 0
        evicted = cache.prefix_cache_stats().evicted_blocks
        cache.update([(r.id, n) for r, n in chunks] + [(r.id, 1) for r in decodes])
        if cache.num_available != self.config.num_blocks - self._used:
            raise RuntimeError(
                f"step {self.step}: the scheduler counts {self.config.num_blocks - self._used} blocks free or "
                f"evictable, its cache model {cache.num_available}"
            )
        return cache.prefix_cache_stats().evicted_blocks - evicted


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def _setup_step(match: tuple[int, tuple[int, ...], int], tokens: int) -> Step:
    """A step of `warm_start`: the match (id, hashes, cached tokens), then `tokens` of prefill
    at the first layer (none: no update)."""
    req_id = match[0]
    return Step((), layer_batches((0,), [req_id], [tokens]) if tokens else (), (Match(*match),))


def busiest_window(requests: Sequence[TraceRequest], config: SchedulerConfig, num_steps: int) -> int:
    """The first step of the window of `num_steps` steps whose arrivals bring the most
    tokens (prompt and output), the earliest of equals: the trace's busiest stretch (of
    the windows within [0, the last arrival's step], if it is shorter than `num_steps`).
    A request the pool can never hold (`Scheduler.rejected`) brings nothing: it never runs."""
    _check_steps("num_steps", num_steps, 1)
    if not requests:
        return 0
    steps = np.array([config.arrival_step(r.arrival_s) for r in requests], dtype=np.int64)
    order = np.argsort(steps, kind="stable")
    steps = steps[order]
    capacity = config.num_blocks * config.block_size
    tokens = [r.prompt_tokens + r.output_tokens for r in requests]
    weights = np.array([n if n - 1 <= capacity else 0 for n in tokens], dtype=np.int64)[order]
    totals = np.concatenate(([0], np.cumsum(weights)))
    last = int(steps[-1])
    width = min(num_steps, last + 1)
    # The earliest best window starts at 0 or ends on an arrival: only those are summed.
    starts = np.unique(np.concatenate(([0], np.clip(steps - (width - 1), 0, last + 1 - width))))
    inside = totals[np.searchsorted(steps, starts + width)] - totals[np.searchsorted(steps, starts)]
    return int(starts[np.argmax(inside)])


def _check_steps(name: str, value: object, low: int) -> None:
    """`value` (argument `name`) is an int in [low, LAST_STEP]."""
    if type(value) is not int:
        raise TypeError(f"{name}={value!r:.40} is not an int")
    if not low <= value <= LAST_STEP:
        raise ValueError(f"{name}={value!r:.40} is not in [{low}, {LAST_STEP}]")


class TraceReplay:
    """Steps [start, start + num_steps) of `Scheduler` over `requests`, with the interface
    of `workloads.TraceWorkload`: `start(manager)` registers the requests holding KV when
    the window opens, then `step_at(k)` is the window's k-th step.

    With a prefix cache ("miss", "on") the window opens on the scheduler's `warm_start`
    (the requests holding KV and the evictable blocks, rebuilt through the contract's calls)
    and a manager must have the scheduler's pool (`pool_blocks` blocks of its block size):
    then every `match_prefix` of the window returns what the model predicts."""

    name = "replay"
    max_window = None

    def __init__(
        self,
        requests: Sequence[TraceRequest],
        config: SchedulerConfig = SchedulerConfig(),
        start: int = 0,
        num_steps: int = 1000,
        source: str = "trace",
        prefix_cache: str = "off",
    ) -> None:
        _check_steps("start", start, 0)
        _check_steps("num_steps", num_steps, 1)
        if num_steps > MAX_WINDOW:
            raise ValueError(f"num_steps={num_steps} is past {MAX_WINDOW}: every step of a window is built first")
        self.config, self.source, self.prefix_cache = config, source, prefix_cache
        self.first_step, self.num_steps = start, num_steps
        self.num_layers = config.num_layers
        self.layer_ids = tuple(range(config.num_layers))
        self.scheduler = scheduler = Scheduler(requests, config, prefix_cache)
        scheduler.skip_to(start)
        self.initial = scheduler.holding()
        self.setup = scheduler.warm_start() if prefix_cache != "off" else []
        self.scheduled = [scheduler.run() for _ in range(num_steps)]
        self.steps = [
            Step(
                s.release,
                layer_batches(self.layer_ids, [i for i, _ in s.prefills] + list(s.decodes), [n for _, n in s.prefills]),
                s.matches,
            )
            for s in self.scheduled
        ]
        ids = {i for i, _ in self.initial} | {i for s in self.scheduled for i, _ in s.prefills}
        indices = {scheduler.admissions[i].index for i in ids}
        self._max_seq_len = max(
            [requests[i].prompt_tokens + requests[i].output_tokens for i in indices] + [scheduler.ghost_tokens + 1]
        )
        self._max_running = max(
            [len(self.initial) + (scheduler.ghost_tokens > 0)] + [s.holding for s in self.scheduled] + [1]
        )
        self._max_step_tokens = max(max(sum(n for _, n in s.prefills) + len(s.decodes) for s in self.scheduled), 1)
        self._arrived = sum(start <= step < start + num_steps for step in scheduler.arrivals)

    @property
    def pool_blocks(self) -> int | None:
        """The blocks a manager's pool must have (of the scheduler's block size) for the
        replay to hold: the scheduler's pool with a prefix cache (its evictions are the
        model's), None without (`variants.make_manager` sizes it)."""
        return self.config.num_blocks if self.prefix_cache != "off" else None

    def describe(self) -> dict:
        described = {
            "workload": self.name,
            "source": self.source,
            **dataclasses.asdict(self.config),
            "start": self.first_step,
            "prefix_cache": self.prefix_cache,
            "steps": self.stats(),
        }
        if self.prefix_cache != "off":
            described["prefix"] = self.prefix_stats()
        return described

    def label(self) -> str:
        return f"{self.source} steps {self.first_step}-{self.first_step + self.num_steps}"

    def sizes(self, num_steps: int) -> tuple[int, int]:
        """(max_seq_len, max_running_reqs) of the window: its longest request (prompt and
        output) and its most requests holding KV at once (and the warm start's)."""
        return self._max_seq_len, self._max_running

    @property
    def max_step_tokens(self) -> int:
        """Query tokens of the window's largest step."""
        return self._max_step_tokens

    def start(self, manager: BlockManager) -> None:
        """Empties the manager and registers the requests holding KV when the window opens
        (with a prefix cache: plays the warm start's steps at the first layer)."""
        manager.reset_state()
        if self.prefix_cache == "off":
            prefill(manager, self.layer_ids[0], self.initial)
            return
        for step in self.setup:
            if step.release:
                manager.release_seqs(step.release)
            for match in step.matches:
                match.run(manager)
            for batch in step.layers:
                manager.update_block_table(batch)
        manager.synchronize()

    def step_at(self, position: int) -> Step:
        if not 0 <= position < len(self.steps):
            raise IndexError(f"the window holds {len(self.steps)} steps; step {position} was asked for")
        return self.steps[position]

    def stats(self) -> dict:
        """The window's steps: requests holding KV, waiting and the pool's share in use
        (means and peaks), prefill and decode tokens (means), preemptions, arrivals and
        requests admitted (readmissions after a preemption too) and finished; requests the pool
        can never hold, over the whole trace."""
        scheduled, blocks = self.scheduled, self.config.num_blocks
        end = self.first_step + self.num_steps
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
            "admitted": sum(self.first_step <= a.step < end for a in self.scheduler.admissions.values()),
            "finished": sum(s.finished for s in scheduled),
            "rejected": len(self.scheduler.rejected),
        }

    def prefix_stats(self) -> dict:
        """The window's prefix cache ("miss", "on"): `hit_rate`, the prompt tokens its
        admissions took from the cache over the tokens they prefill (a readmission's prompt
        holds the tokens it had generated); `bound`, what a cache that held every block of
        every earlier admission (and never evicted) would have served the same admissions;
        `trace_bound`, that of the whole trace, each request once in arrival order; the
        largest step's blocks matched and evicted, blocks evicted in all, and the pool's
        share evictable (mean and peak)."""
        scheduler, bs, blocks = self.scheduler, self.config.block_size, self.config.num_blocks
        hashes = scheduler.hashes
        if hashes is None:
            raise ValueError("prefix_stats: the replay keeps no prefix cache (prefix_cache='off')")
        admissions = [scheduler.admissions[i] for i in range(len(scheduler.admissions))]
        unbounded = list(hashes.unbounded(a.index for a in admissions))
        end = self.first_step + self.num_steps
        window = [k for k, a in enumerate(admissions) if self.first_step <= a.step < end]
        prompt = sum(admissions[k].prefill_tokens for k in window)
        scheduled = self.scheduled
        return {
            "mode": self.prefix_cache,
            "admissions": len(window),
            "prompt_tokens": prompt,
            "cached_tokens": sum(admissions[k].cached_tokens for k in window),
            "hit_rate": sum(admissions[k].cached_tokens for k in window) / prompt if prompt else 0.0,
            "bound": sum(unbounded[k] for k in window) / prompt if prompt else 0.0,
            "trace_bound": hashes.bound(),
            "largest_match_blocks": max(sum(m.cached_tokens for m in s.matches) // bs for s in scheduled),
            "largest_eviction_blocks": max(s.evicted_blocks for s in scheduled),
            "evicted_blocks": sum(s.evicted_blocks for s in scheduled),
            "evictable_mean": fmean(s.evictable_blocks / blocks for s in scheduled),
            "evictable_peak": max(s.evictable_blocks for s in scheduled) / blocks,
        }

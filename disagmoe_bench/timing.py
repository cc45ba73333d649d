"""The serving benchmarks' timing modes, one implementation for the command line and asv.

- `synced`: every call of a step (release, update, pack) timed until the device
  is done (`manager.synchronize()` after each, as the seed suite times); the
  step's time is the sum, host time the sum of the time until each call returned.
- `pipelined`: a window of N steps back to back, no synchronise inside, one at
  the end: wall time per step (to the device being done) and host time per step
  (until the last call returned), as a serving loop that never waits would see;
  each step's host time is also kept alone, for its distribution (p50, p90, p99,
  max: a step that compiles, captures or waits shows in the tail, not the median).
- `busy`: as pipelined, but every step is followed by a fixed device workload
  standing in for the model's forward (`Forward`, `torch.cuda._sleep` calibrated
  on the card): the device time the bookkeeping adds per step is the window's
  wall time minus that of the forwards alone, timed in the same round of the
  same process; host time per step as in pipelined. CUDA only.

Runners (`Replay`, or the asv suite's reference) take turns window by window,
in alternating order, so that the machine's speed of the moment touches them all.
A manager is warmed up once before its first step (`warm_up`, sized for the workload's
largest step: what a serving engine does at start-up), and the garbage collector
collects and freezes what exists before the timed windows (as an engine does once it
has started), so that its pauses scan only what the steps make.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Callable, Mapping, Protocol

import torch

from disagmoe.block_manager.base import BlockManager, resolve_device

MODES = ("synced", "pipelined", "busy")
DEFAULT_FORWARD_US = 300.0


def default_device() -> torch.device:
    """The CUDA device when there is one, else torch's CPU device (as the managers do)."""
    return resolve_device(None)


def device_name(device: torch.device) -> str:
    """The device and what it is, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cuda = "" if torch.cuda.is_available() else ", no CUDA on this machine"
    return f"{device} (torch's CPU device{cuda})"


def limit_cpu_threads(device: torch.device) -> None:
    """One intra-op thread when the managers run on torch's CPU device: their small
    torch operations gain nothing from more, and waking the thread pool made timings
    on a busy 2-core machine swing twentyfold."""
    if device.type == "cpu":
        torch.set_num_threads(1)


def timed_call(synchronize: Callable[[], None], call: Callable[..., object], *args: object) -> tuple[float, float]:
    """(wall, host) seconds of `call(*args)`: until the device is done (`synchronize()`
    inside the timed region), and until the call returned."""
    start = time.perf_counter()
    call(*args)
    returned = time.perf_counter()
    synchronize()
    return time.perf_counter() - start, returned - start


class Runner(Protocol):
    max_window: int | None

    def start(self) -> None: ...
    def before_window(self, steps: int) -> None: ...
    def step(self) -> None: ...
    def step_synced(self) -> tuple[float, float]: ...
    def synchronize(self) -> None: ...


class Replay:
    """A manager replaying a workload (`disagmoe_bench.workloads`) step by step."""

    def __init__(self, manager: BlockManager, workload) -> None:
        self.manager = manager
        self.workload = workload
        self.max_window = workload.max_window
        self.position = 0
        self._segment_start = 0
        self._warm = False

    def start(self) -> None:
        """The workload's initial state (untimed), ending with the device synchronised; the
        first time, the manager's warm-up for the workload's largest step."""
        self.workload.start(self.manager)
        if not self._warm and hasattr(self.manager, "warm_up"):  # (a commit's manager may predate it)
            self.manager.warm_up(self.workload.max_step_tokens)
        self._warm = True
        self.manager.synchronize()
        self.position = self._segment_start = 0

    def before_window(self, steps: int) -> None:
        """Untimed: a workload whose windows are bounded (lengths="cycle") starts over
        when `steps` more would pass its bound."""
        if self.max_window is not None and self.position - self._segment_start + steps > self.max_window:
            self.workload.start(self.manager)
            self.manager.synchronize()
            self._segment_start = self.position

    def step(self) -> None:
        self.workload.step_at(self.position).run(self.manager)
        self.position += 1

    def step_synced(self) -> tuple[float, float]:
        wall = host = 0.0
        manager = self.manager
        for call, argument in self.workload.step_at(self.position).calls(manager):
            w, h = timed_call(manager.synchronize, call, argument)
            wall += w
            host += h
        self.position += 1
        return wall, host

    def synchronize(self) -> None:
        self.manager.synchronize()


class BusyUnavailable(RuntimeError):
    """`busy` timing was asked for where there is no CUDA device."""


class Forward:
    """A fixed device workload of about `us` microseconds: `torch.cuda._sleep` spins for a
    number of GPU clock cycles, calibrated here against CUDA events."""

    def __init__(self, us: float = DEFAULT_FORWARD_US, device: torch.device | None = None) -> None:
        if device is None or device.type != "cuda" or not torch.cuda.is_available():
            raise BusyUnavailable(
                f"busy timing needs a CUDA device (the model's forward is a CUDA "
                f"kernel that spins on the GPU clock); this run is on {device}"
            )
        if not us > 0:
            raise ValueError(f"forward_us={us} must be > 0")
        self.us = us
        self.device = device
        with torch.cuda.device(device):
            probe = 200_000
            torch.cuda._sleep(probe)  # the first launch loads the kernel
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            rates = []
            for _ in range(5):
                start.record()
                torch.cuda._sleep(probe)
                end.record()
                end.synchronize()
                rates.append(probe / (start.elapsed_time(end) * 1e3))  # cycles per us
        self.cycles = max(1, int(us * sorted(rates)[2]))

    def __call__(self) -> None:
        torch.cuda._sleep(self.cycles)


def time_window(
    runner: Runner, mode: str, steps: int, forward: Forward | None = None, step_host: list[float] | None = None
) -> tuple[float, float]:
    """(wall, host) seconds per step over `steps` steps of `runner` in `mode`; the
    device is idle when the window starts (`before_window` and a synchronise first).
    Each step's own host time (seconds; synced: the sum of its calls') is appended to
    `step_host` when given."""
    runner.before_window(steps)
    runner.synchronize()
    keep = step_host.append if step_host is not None else None
    if mode == "synced":
        wall = host = 0.0
        for _ in range(steps):
            w, h = runner.step_synced()
            wall += w
            host += h
            if keep:
                keep(h)
        return wall / steps, host / steps
    if mode not in MODES:
        raise ValueError(f"timing mode {mode!r} is not one of {MODES}")
    if mode == "busy" and forward is None:
        raise BusyUnavailable("busy timing needs a Forward (a CUDA device)")
    clock = time.perf_counter
    step = runner.step
    start = clock()
    for _ in range(steps):
        began = clock()
        step()
        if keep:
            keep(clock() - began)
        if forward is not None and mode == "busy":
            forward()
    returned = clock()
    runner.synchronize()
    done = clock()
    return (done - start) / steps, (returned - start) / steps


def tail(samples: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of per-step times (nearest rank)."""
    ordered = sorted(samples)
    n = len(ordered)
    rank = lambda q: ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]  # noqa: E731
    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1]} if n else {}


def time_forwards(forward: Forward, steps: int) -> tuple[float, float]:
    """(wall, host) seconds per forward of `steps` forwards back to back, alone."""
    torch.cuda.synchronize(forward.device)
    start = time.perf_counter()
    for _ in range(steps):
        forward()
    returned = time.perf_counter()
    torch.cuda.synchronize(forward.device)
    done = time.perf_counter()
    return (done - start) / steps, (returned - start) / steps


def window_steps(runners: Mapping[str, Runner], window: int) -> int:
    """Steps a window may take: `window`, capped by every runner's bound."""
    caps = [r.max_window for r in runners.values() if r.max_window is not None]
    return min([window, *caps])


def measure(
    runners: Mapping[str, Runner],
    mode: str,
    window: int,
    windows: int,
    warmup: int,
    forward: Forward | None = None,
    on_window: Callable[[], None] | None = None,
) -> dict:
    """Each runner from its start: `warmup` untimed steps, then `windows` timed windows
    of `window` steps, runners taking turns in alternating order.

    Returns {"steps_per_window": n, "runners": {name: {"wall_us": [...], "host_us":
    [...], "host_step_us": {...}}}} with one value per window (microseconds per step) and
    the distribution of each step's host time over every window (`tail`); in busy mode
    each runner also has "added_us" (its wall time minus that of the forwards alone, same
    round), and "forward_us"/"forward_host_us" are the forwards' own.
    """
    if mode not in MODES:
        raise ValueError(f"timing mode {mode!r} is not one of {MODES}")
    if mode == "busy" and forward is None:
        raise BusyUnavailable("busy timing needs a Forward (a CUDA device)")
    steps = window_steps(runners, window)
    for runner in runners.values():
        runner.start()
        done = 0
        while done < warmup:
            n = min(steps, warmup - done)
            time_window(runner, "pipelined", n)
            done += n
    if forward is not None and mode == "busy":
        time_forwards(forward, steps)
    gc.collect()
    gc.freeze()
    result: dict = {"steps_per_window": steps, "runners": {name: {"wall_us": [], "host_us": []} for name in runners}}
    step_host: dict[str, list[float]] = {name: [] for name in runners}
    if mode == "busy":
        result["forward_us"], result["forward_host_us"] = [], []
        for samples in result["runners"].values():
            samples["added_us"] = []
    names = list(runners)
    for round_ in range(windows):
        if forward is not None and mode == "busy":
            fwd_wall, fwd_host = time_forwards(forward, steps)
            result["forward_us"].append(fwd_wall * 1e6)
            result["forward_host_us"].append(fwd_host * 1e6)
        for name in names if round_ % 2 == 0 else names[::-1]:
            wall, host = time_window(runners[name], mode, steps, forward, step_host[name])
            samples = result["runners"][name]
            samples["wall_us"].append(wall * 1e6)
            samples["host_us"].append(host * 1e6)
            if mode == "busy":
                samples["added_us"].append((wall - fwd_wall) * 1e6)
            if on_window is not None:
                on_window()
    gc.unfreeze()
    for name, samples in result["runners"].items():
        samples["host_step_us"] = {k: v * 1e6 for k, v in tail(step_host[name]).items()}
    return result


def steps_needed(window: int, windows: int, warmup: int) -> int:
    """Steps one runner takes in one `measure`: warm-up, then every window."""
    return warmup + window * windows

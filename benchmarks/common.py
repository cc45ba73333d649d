"""What the asv suite shares: the grid, the timing knobs and the per-process state.

asv runs the suite through its fork server (asv.conf.json: `launch_method:
forkserver`): one process imports the benchmark modules, then forks a child for
every benchmark and grid point. Importing this module imports torch and the
installed package once, in that server, so that no child pays for it (about 2 s
a process, the suite's main cost under `spawn`), and computes the hash Triton
keys its kernel cache with (`warm_triton_caches`). Nothing here touches CUDA: the
server must never initialise it, since CUDA does not survive a fork; each child
initialises its own on first use, and `check_fork_safe` turns a broken fork into
a clear error. `asv run --launch-method spawn` still works (a fresh interpreter
per benchmark, several times slower). The workloads themselves come from the
installed commit's serving harness (`harness`: the lab package `disagmoe_bench`, or
where an older commit kept it), the same ones `python -m disagmoe_bench` times.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

_CUDA_BEFORE = torch.cuda.is_initialized()  # (a test process may have initialised it already)


def env_ints(variable: str, default: list[int]) -> list[int]:
    """The integers listed in environment variable `variable` (spaces or commas), each in
    [1, 2**31 - 1], else `default`; a ValueError naming the variable and its value
    otherwise. (Here, not in the package: the suite runs against old commits too.)"""
    text = os.environ.get(variable, "")
    values = []
    for item in text.replace(",", " ").split():
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"{variable}={text!r}: {item!r} is not an integer") from None
        if not 1 <= value <= 2**31 - 1:
            raise ValueError(f"{variable}={text!r}: {value} must be in [1, {2**31 - 1}]")
        values.append(value)
    return values or default


def _grid(variable: str, default: list[int]) -> list[int]:
    """The contract's grid, or the integers listed in `variable` (a smaller grid for
    smoke runs: `DISAGMOE_BENCH_BATCH_SIZES="16 256" DISAGMOE_BENCH_SEQ_LENS="128 1024"`)."""
    return env_ints(variable, default)


# A literal, not the package's registry (disagmoe.DESIGNS): asv times this suite against old
# commits, which predate the registry, and a parameter's values must stay the same from
# commit to commit for the history to keep its lines (asv's parameter keeps its first
# name: "backend"). A new design joins here by hand once it should be in the history.
DESIGNS = ["cpu", "gpu", "hybrid"]

try:  # a skip from inside a track_ method (asv shows n/a); in setup a NotImplementedError does
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - asv_runner < 0.1
    SkipNotImplemented = NotImplementedError


def installed_designs() -> list[str]:
    """The suite's designs that the installed commit has (older commits predate hybrid)."""
    import disagmoe

    return [d for d in DESIGNS if d in getattr(disagmoe, "BACKENDS", {"cpu": None, "gpu": None})]


class Measured(dict):
    """Measurements by key, where a missing key is a skip (asv: n/a), not a failure: a
    design that the installed commit predates was not measured."""

    def __missing__(self, key):
        raise SkipNotImplemented(f"nothing measured for {key!r}: a design this commit predates")


BATCH_SIZES = _grid("DISAGMOE_BENCH_BATCH_SIZES", [16, 32, 64, 128, 256])
SEQ_LENS = _grid("DISAGMOE_BENCH_SEQ_LENS", [128, 256, 512, 1024])


class StepTiming:
    """Parameters and timing knobs of the time_ classes.

    asv_runner re-runs `setup` before every timed call (with `number = 1`,
    older asv_runner versions do too: once per sample of one call), so each
    call starts from the state `setup` leaves. Every forked child measures one
    grid point of one backend: its state warms up once (Triton kernels load,
    CUDA graphs are captured), then 50 ms of timed calls that are not kept
    (clocks of a GPU idle since the last child ramp up), then 10 to 40
    one-call samples. Two rounds: asv measures each grid point in two
    children, minutes apart, and keeps the median of both children's samples,
    so a burst of noise on a shared machine (seen lasting seconds) sways at
    most half of them.
    """

    params = (DESIGNS, BATCH_SIZES, SEQ_LENS)
    param_names = ["backend", "batch_size", "seq_len"]
    rounds = 2
    number = 1
    repeat = (10, 40, 0.25)  # at least 10 samples, at most 40, stop adding after 0.25 s
    warmup_time = 0.05
    timeout = 300  # a cold Triton cache compiles on the first call


def harness(module: str):
    """The serving harness's `module` (`seed`, `points`, `timing`, ...) of the installed
    commit, never a copy found elsewhere (an editable install of another checkout, visible
    through the system site-packages, would otherwise fill in for a commit that predates
    it). asv times this suite against old commits too, so it looks where each layout kept
    the harness: the lab package `disagmoe_bench` beside `disagmoe` (today), then
    `disagmoe.serving` (before the lab left the library). ImportError if neither has it."""
    import importlib

    import disagmoe

    site = os.path.dirname(os.path.dirname(disagmoe.__file__))
    for package, folder in (("disagmoe_bench", "disagmoe_bench"), ("disagmoe.serving", "disagmoe/serving")):
        if os.path.exists(os.path.join(site, folder, module + ".py")):
            found = importlib.import_module(f"{package}.{module}")
            if os.path.dirname(found.__file__) != os.path.join(site, folder):
                raise ImportError(
                    f"{found.__name__} comes from {found.__file__}, not from the installed "
                    f"disagmoe ({disagmoe.__file__})"
                )
            return found
    raise ImportError(f"the installed disagmoe ({disagmoe.__file__}) has no serving harness module {module!r}")


def workloads():
    """The seed's workload module of the installed commit (`decode_state`,
    `time_decode_steps`, `default_device`, `limit_cpu_threads`, `device_name`): the lab's
    `seed`, or where older layouts kept those names (`disagmoe.workloads`, and before the
    split `disagmoe.bench`)."""
    import importlib

    import disagmoe

    try:
        return harness("seed")
    except ImportError:
        pass
    package = os.path.dirname(disagmoe.__file__)
    for name in ("workloads", "bench"):
        if os.path.exists(os.path.join(package, name + ".py")):
            bench = importlib.import_module("disagmoe." + name)
            if os.path.dirname(bench.__file__) != package:
                raise ImportError(
                    f"{bench.__name__} comes from {bench.__file__}, not from the installed "
                    f"disagmoe ({disagmoe.__file__})"
                )
            return bench
    raise ImportError(f"the installed disagmoe ({disagmoe.__file__}) predates the benchmark workloads")


def check_fork_safe() -> None:
    """Raise if this process was forked from one that had initialised CUDA (the fork
    server must only import torch: a CUDA call there breaks every child)."""
    if torch.cuda._is_in_bad_fork():
        raise RuntimeError(
            "CUDA was initialised in asv's fork server before it forked this benchmark; "
            "nothing at benchmark import time may touch CUDA (or run asv with "
            "--launch-method spawn)"
        )


try:  # the server imports the package once for all children; a commit that lacks it fails later, per benchmark
    workloads()
except ImportError:
    pass
try:  # and the Triton kernels of the gpu backend (import only: compiling or launching would touch CUDA)
    import disagmoe.block_manager.kernels_triton  # noqa: F401
except ImportError:  # no Triton (a CPU-only machine), or a commit without these kernels
    pass


def warm_triton_caches() -> bool:
    """Computes once, in the fork server, what Triton would compute again in every child
    on its first kernel: `triton_key()`, the hash of Triton's own compiler, a sha256 over
    its 400 MB library (Triton 3.6), kept in a per-process cache that a forked child
    inherits. It reads files only and never touches CUDA. False where there is nothing to
    warm (no Triton, or a Triton without that function)."""
    try:
        from triton.runtime.cache import triton_key
    except ImportError:
        return False
    triton_key()
    return True


warm_triton_caches()
if torch.cuda.is_initialized() and not _CUDA_BEFORE:  # pragma: no cover - a guard on the package's import
    raise RuntimeError("importing the benchmarked package initialised CUDA: asv's fork server cannot fork that")

_states: dict = {}


def decode_state(backend: str, batch_size: int, seq_len: int, owner: str = "decode"):
    """This process's warmed-up `DecodeState` (the seed's, `workloads()`) for the grid point, built
    on first use on the default device (CUDA if any, else torch's CPU device).
    A benchmark that empties the manager passes its own `owner`."""
    key = (owner, backend, batch_size, seq_len)
    if key not in _states:
        if backend not in installed_designs():
            raise NotImplementedError(f"the installed commit has no {backend!r} design")
        check_fork_safe()
        bench = workloads()
        bench.limit_cpu_threads(bench.default_device())
        _states[key] = bench.decode_state(backend, batch_size, seq_len)
    return _states[key]


def _side_by_side(
    rounds: int, iterations: int, warmup: int, designs: list[str], reference: bool = False
) -> tuple[str, dict]:
    """Decode steps of the designs taking turns (and of `ReferenceWork` with
    `reference`), as in `python -m disagmoe_bench`, for the whole grid in one process:
    (device name, {(batch_size, seq_len): one `time_decode_steps` result per round})."""
    check_fork_safe()
    bench = workloads()
    device = bench.default_device()
    bench.limit_cpu_threads(device)
    extra = {"reference": ReferenceWork(device)} if reference else {}
    rounds_of = {}
    for batch_size in BATCH_SIZES:
        for seq_len in SEQ_LENS:
            states = {design: bench.decode_state(design, batch_size, seq_len) for design in designs}
            states.update(extra)
            bench.time_decode_steps(states, warmup)
            rounds_of[(batch_size, seq_len)] = [bench.time_decode_steps(states, iterations) for _ in range(rounds)]
    return bench.device_name(device), rounds_of


def _ratio(samples: list[float], over: list[float]) -> float:
    """Median over median, to 4 significant digits."""
    return float(f"{statistics.median(samples) / statistics.median(over):.4g}")


def measure_inverse_speedups(rounds: int = 9, iterations: int = 20, warmup: int = 5) -> dict:
    """Each design's time over the cpu design's, per decode-step operation, for the whole
    grid in one process.

    Per grid point the designs take turns as in `python -m disagmoe_bench`; each of
    `rounds` rounds of `iterations` steps gives one ratio of medians, so asv gets
    samples (and confidence intervals) rather than one number. Returns {"device",
    "ratios": {point: {(design, op): [ratio per round]}}} for gpu and hybrid (a design the
    installed commit predates is a skip)."""
    designs = installed_designs()
    device, rounds_of = _side_by_side(rounds, iterations, warmup, designs)
    ratios = {
        point: Measured(
            {
                (design, op): [_ratio(samples[design][op], samples["cpu"][op]) for samples in runs]
                for design in designs
                if design != "cpu"
                for op in runs[0]["cpu"]
            }
        )
        for point, runs in rounds_of.items()
    }
    return {"device": device, "ratios": ratios}


def measure_footprints() -> dict:
    """`memory_footprint()` of each design's manager for every grid point, once its
    decode state has run every benchmarked operation (buffers at their size)."""
    check_fork_safe()
    bench = workloads()
    device = bench.default_device()
    footprints = Measured()
    for design in installed_designs():
        for batch_size in BATCH_SIZES:
            for seq_len in SEQ_LENS:
                state = bench.decode_state(design, batch_size, seq_len)
                footprint = state.manager.memory_footprint()  # plain ints: readers skip torch
                footprints[(design, batch_size, seq_len)] = {
                    "device_bytes": footprint.device_bytes,
                    "host_bytes": footprint.host_bytes,
                }
                del state
    return {"device": bench.device_name(device), "on_cuda": device.type == "cuda", "footprints": footprints}


class ReferenceWork:
    """A fixed workload shaped like a step, timed in turn with the designs so that the
    machine's own speed of the moment divides out of the verdicts (bench_relative, and
    the serving modules' RelativeStep). It is part of the suite, not of the package, so
    every commit is measured against the same work: a numpy sort of 4096 ints and a
    Python pass over 512 (host work of a step's size) then, on CUDA, a pinned copy of
    `pinned_ints` int32 to the device and a device-to-device copy of `device_ints`.

    The seed's classes use the default (a 4 KB copy) and time it as a decode state of
    `time_decode_steps`: its "update" (`step`) and "pack" (`manager.pack_flash_attn_metadata`)
    are both that work, each ended by `synchronize()`. The serving modules use
    `ReferenceWork.serving` (16 KB and 4 MB) as a runner of the package's serving timing
    (`start`, `before_window`, `step`, `step_synced`, `synchronize`)."""

    max_window = None

    def __init__(self, device: torch.device, pinned_ints: int = 1024, device_ints: int = 0) -> None:
        self._keys = np.arange(4096, dtype=np.int32)[::-1].copy()
        self._items = list(range(512))
        self._cuda = device.type == "cuda"
        self._copies = []
        if self._cuda:
            host = torch.arange(pinned_ints, dtype=torch.int32).pin_memory()
            self._copies.append((torch.empty(pinned_ints, dtype=torch.int32, device=device), host))
            if device_ints:
                source = torch.zeros(device_ints, dtype=torch.int32, device=device)
                self._copies.append((torch.empty_like(source), source))
        self.manager = self
        self.first = None

    @classmethod
    def serving(cls, device: torch.device) -> "ReferenceWork":
        """The serving modules' reference: a 16 KB pinned copy and a 4 MB device copy."""
        return cls(device, pinned_ints=4096, device_ints=1 << 20)

    def _work(self) -> int:
        np.sort(self._keys)
        total = 0
        for item in self._items:
            total += item
        for destination, source in self._copies:
            destination.copy_(source, non_blocking=True)
        return total

    def make_room(self) -> None:
        pass

    def start(self) -> None:
        pass

    def before_window(self, steps: int) -> None:
        pass

    def step(self) -> None:
        self._work()

    def pack_flash_attn_metadata(self, batch) -> None:
        self._work()

    def step_synced(self) -> tuple[float, float]:
        start = time.perf_counter()
        self._work()
        returned = time.perf_counter()
        self.synchronize()
        return time.perf_counter() - start, returned - start

    def synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()


def measure_relative_times(rounds: int = 9, iterations: int = 20, warmup: int = 5) -> dict:
    """Each design's time for each decode-step operation over the time of `ReferenceWork`,
    for the whole grid in one process: the designs and the reference take turns, as in
    `measure_inverse_speedups`; each round gives one ratio of medians per design and
    operation, the rounds being asv's samples."""
    designs = installed_designs()
    device, rounds_of = _side_by_side(rounds, iterations, warmup, designs, reference=True)
    ratios = {
        point: Measured(
            {
                (design, op): [_ratio(samples[design][op], samples["reference"][op]) for samples in runs]
                for design in designs
                for op in runs[0][design]
            }
        )
        for point, runs in rounds_of.items()
    }
    return {"device": device, "ratios": ratios}

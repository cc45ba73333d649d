"""Which design wins where, read from one asv results file of the serving benchmarks.

The landing page of the site (scripts/landing_html.py draws it) shows, per GPU machine,
the crossover maps of its latest results: for each grid point of `bench_pipelined`
(decode: batch size x context) and `bench_trace` (trace: running requests x max prompt)
and each timing mode, the variant with the lowest median and its speedup over the
baseline (the baseline's median / the winner's); and the same for each production trace
that `bench_replay` replays (its busiest stretch), and per trace and prefix-cache mode that
`bench_prefix` replays, the hit rate and each variant's host and device time a step. Everything
here is read from the results file; nothing is measured or typed in.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
from ast import literal_eval

BASELINE = "cpu-bs16"  # benchmarks/serving.py: the variant the InverseSpeedup pages divide by
NEAR_TIE = 1.10  # a winner within this factor of the runner-up is drawn as a near tie
Point = tuple[int, int]
Values = dict[Point, dict[str, float]]  # grid point -> variant -> median


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str  # "decode"
    module: str  # its asv module
    axes: tuple[str, str]  # the asv parameter names of the rows and the columns
    labels: tuple[str, str]  # the same in words
    symbols: tuple[str, str]
    ends: tuple[str, str, str, str]  # the rows' small and large end, the columns' short and long end


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str  # the timing mode
    method: str  # the Step benchmark that holds its figure
    what: str  # the figure in words


WORKLOADS = (
    Workload(
        "decode",
        "bench_pipelined",
        ("batch_size", "context"),
        ("batch size", "context"),
        ("B", "L"),
        ("small batch", "large batch", "short context", "long context"),
    ),
    Workload(
        "trace",
        "bench_trace",
        ("running", "max_prompt"),
        ("running requests", "max prompt"),
        ("R", "P"),
        ("few requests", "many requests", "short prompts", "long prompts"),
    ),
)
MODES = (
    Mode("pipelined", "track_pipelined", "wall us per step, 32 steps back to back"),
    Mode("synced", "track_synced", "us per step, each call until the device is done"),
    Mode("busy", "track_busy_added", "device us a step adds behind a stand-in forward"),
)
HOST, HOST_P99 = "track_pipelined_host", "track_pipelined_host_p99"  # pipelined host us: median, p99
REPLAY = "bench_replay"  # its Step's parameters: (variant, trace)
TRACES = {  # bench_replay's and bench_prefix's traces, in words
    "azure-conv": "Azure LLM inference trace, conversation service",
    "mooncake": "Mooncake (Kimi) conversation trace",
    "servegen-offline": "ServeGen offline batch trace A (its head), as a burst",
    "servegen-offline-poisson": "ServeGen offline batch trace A (its head), at Poisson arrivals",
}
PREFIX = "bench_prefix"  # PrefixStep's parameters: (variant, trace, prefix_cache); Cache's: (trace, prefix_cache)
PREFIX_MODES = ("off", "miss", "on")  # benchmarks/serving.py's, in its order
P50, BUSY_ADDED = "track_pipelined_host_p50", "track_busy_added"


def step_benchmark(workload: Workload, method: str) -> str:
    return f"{workload.module}.Step.{method}"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid point of one mode: the median of each variant measured there."""

    medians: dict[str, float]

    @property
    def ranked(self) -> list[str]:
        return sorted(self.medians, key=lambda v: (self.medians[v], v))

    @property
    def winner(self) -> str:
        return self.ranked[0]

    def speedup(self, variant: str) -> float | None:
        """The baseline's median / the variant's (> 1: faster than the baseline)."""
        base = self.medians.get(BASELINE)
        mine = self.medians.get(variant)
        return base / mine if base and mine else None

    @property
    def margin(self) -> float | None:
        """The runner-up's median / the winner's (None with one variant)."""
        ranked = self.ranked
        if len(ranked) < 2 or self.medians[ranked[0]] <= 0:
            return None
        return self.medians[ranked[1]] / self.medians[ranked[0]]

    @property
    def near_tie(self) -> bool:
        return self.margin is not None and self.margin < NEAR_TIE


@dataclasses.dataclass(frozen=True)
class CrossoverMap:
    workload: Workload
    mode: Mode
    rows: tuple[int, ...]
    columns: tuple[int, ...]
    variants: tuple[str, ...]
    cells: dict[Point, Cell]  # the measured points only

    def wins(self) -> dict[str, int]:
        """Cells won per variant, most first."""
        counts: dict[str, int] = {}
        for cell in self.cells.values():
            counts[cell.winner] = counts.get(cell.winner, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclasses.dataclass(frozen=True)
class Regime:
    """A corner of a workload's grid, named in words."""

    name: str
    point: Point


@dataclasses.dataclass(frozen=True)
class PrefixRow:
    """One trace in one prefix-cache mode of bench_prefix: the window's hit rate beside its
    bound (None where not measured, as in mode "off"), and each variant's figures."""

    trace: str
    mode: str
    hit_rate: float | None
    bound: float | None
    p50: dict[str, float]  # variant -> p50 of each step's host us (pipelined)
    p99: dict[str, float]  # variant -> p99 of the same
    busy: dict[str, float]  # variant -> device us a step adds behind a forward (CUDA only)

    @property
    def host(self) -> Cell | None:
        """The variants' p50 host us: its winner is the row's (None where none was measured)."""
        return Cell(self.p50) if self.p50 else None


@dataclasses.dataclass(frozen=True)
class Run:
    """One results file of one machine, with its serving benchmarks read."""

    machine: str
    path: str
    commit: str
    commit_date: datetime.datetime
    measured: datetime.datetime | None  # when the last benchmark of the file started
    on_cuda: bool
    maps: dict[tuple[str, str], CrossoverMap]  # (workload, mode) -> map, measured ones only
    host: dict[str, Values]  # workload -> pipelined host us, median of windows
    host_p99: dict[str, Values]  # workload -> p99 of each step's host us (if measured)
    benchmarks: frozenset[str]  # the benchmarks with at least one value
    replays: dict[str, dict[str, Cell]] = dataclasses.field(default_factory=dict)  # trace -> mode -> cell
    replay_host: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)  # method -> trace
    prefix: tuple[PrefixRow, ...] = ()  # bench_prefix's rows, by trace, then mode

    @property
    def has_serving(self) -> bool:
        return bool(self.maps or self.replays or self.prefix)


def _utc(ms: int | None) -> datetime.datetime | None:
    return None if ms is None else datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)


def entries_of(data: dict) -> dict[str, dict]:
    """{benchmark: {column: value}} of a results file (asv's columns; "result" first where
    a file names none)."""
    columns = data.get("result_columns", ["result"])
    return {name: dict(zip(columns, row)) for name, row in data["results"].items()}


def _points(entries: dict[str, dict], benchmark: str, arity: int) -> tuple[tuple, list[tuple[tuple, float]]]:
    """(the values of each parameter, [(parameters, value)] of every measured point) of a
    benchmark with `arity` parameters; nothing where the results lack it or it measured
    nothing (asv writes None for a failed point, NaN for a skipped one)."""
    entry = entries.get(benchmark)
    if entry is None or not isinstance(entry.get("result"), list) or len(entry.get("params", [])) != arity:
        return ((),) * arity, []
    params = tuple(tuple(literal_eval(p) for p in values) for values in entry["params"])
    found = zip(itertools.product(*params), entry["result"])
    return params, [(point, float(value)) for point, value in found if value is not None and value == value]


def read_values(entries: dict[str, dict], benchmark: str, axes: tuple[str, str]) -> tuple[tuple, Values]:
    """((variants, rows, columns), {point: {variant: median}}) of a benchmark whose parameters
    are (variant, row, column); empty where the results lack it or it measured nothing."""
    params, points = _points(entries, benchmark, 3)
    values: Values = {}
    for (variant, row, column), value in points:
        values.setdefault((row, column), {})[variant] = value
    return params, values


def read_map(entries: dict[str, dict], workload: Workload, mode: Mode) -> CrossoverMap | None:
    (variants, rows, columns), values = read_values(entries, step_benchmark(workload, mode.method), workload.axes)
    if not values:
        return None
    return CrossoverMap(workload, mode, rows, columns, variants, {p: Cell(v) for p, v in values.items()})


def read_by_trace(entries: dict[str, dict], benchmark: str) -> dict[str, dict[str, float]]:
    """{trace: {variant: median}} of a bench_replay benchmark (parameters (variant, trace));
    empty where the results lack it or it measured nothing."""
    out: dict[str, dict[str, float]] = {}
    for (variant, trace), value in _points(entries, benchmark, 2)[1]:
        out.setdefault(trace, {})[variant] = value
    return out


def read_replays(entries: dict[str, dict]) -> dict[str, dict[str, Cell]]:
    """{trace: {mode: Cell}} of bench_replay's Step, the modes measured."""
    out: dict[str, dict[str, Cell]] = {}
    for mode in MODES:
        for trace, medians in read_by_trace(entries, f"{REPLAY}.Step.{mode.method}").items():
            out.setdefault(trace, {})[mode.name] = Cell(medians)
    return out


def read_prefix(entries: dict[str, dict]) -> tuple[PrefixRow, ...]:
    """bench_prefix's rows: one per (trace, mode) with at least one measured figure, by trace,
    then in PREFIX_MODES' order (an unknown mode last)."""
    figures: dict[str, dict[tuple[str, str], dict[str, float]]] = {}
    for method in (P50, HOST_P99, BUSY_ADDED):
        for (variant, *key), value in _points(entries, f"{PREFIX}.PrefixStep.{method}", 3)[1]:
            figures.setdefault(method, {}).setdefault(tuple(key), {})[variant] = value
    cache = {m: dict(_points(entries, f"{PREFIX}.Cache.{m}", 2)[1]) for m in ("track_hit_rate", "track_bound")}
    keys = {key for by_key in [*figures.values(), *cache.values()] for key in by_key}
    order = {mode: k for k, mode in enumerate(PREFIX_MODES)}
    return tuple(
        PrefixRow(
            trace,
            mode,
            cache["track_hit_rate"].get((trace, mode)),
            cache["track_bound"].get((trace, mode)),
            *(figures.get(m, {}).get((trace, mode), {}) for m in (P50, HOST_P99, BUSY_ADDED)),
        )
        for trace, mode in sorted(keys, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    )


def _any_value(result: object) -> bool:
    return any(v is not None for v in result) if isinstance(result, list) else result is not None


def has_value(entry: dict) -> bool:
    """A benchmark's entry of a results file holds at least one value (entries_of)."""
    return _any_value(entry.get("result"))


BUSY = (
    *(f"{module}.Step.{BUSY_ADDED}" for module in (*(w.module for w in WORKLOADS), REPLAY)),
    f"{PREFIX}.PrefixStep.{BUSY_ADDED}",
)


def ran_on_cuda(entries: dict[str, dict]) -> bool:
    """bench_memory's `Device.track_on_cuda` read 1, or, in results of the serving modules
    alone (no bench_memory), a busy figure was measured: the busy mode runs on CUDA only."""
    on_cuda = entries.get("bench_memory.Device.track_on_cuda", {}).get("result")
    if on_cuda is not None:
        return bool(on_cuda and on_cuda[0] == 1)
    return any(_any_value(entries[name].get("result")) for name in BUSY if name in entries)


def read_run(path: str, machine: str, shown: str | None = None) -> Run:
    """The results file `path` of `machine`; `shown`: the path the page names (default `path`)."""
    with open(path) as f:
        data = json.load(f)
    entries = entries_of(data)
    maps = {}
    for workload, mode in itertools.product(WORKLOADS, MODES):
        found = read_map(entries, workload, mode)
        if found is not None:
            maps[(workload.name, mode.name)] = found
    host = {w.name: read_values(entries, step_benchmark(w, HOST), w.axes)[1] for w in WORKLOADS}
    p99 = {w.name: read_values(entries, step_benchmark(w, HOST_P99), w.axes)[1] for w in WORKLOADS}
    started = [e.get("started_at") for e in entries.values() if e.get("started_at")]
    measured = frozenset(name for name, e in entries.items() if _any_value(e.get("result")))
    replay_host = {m: read_by_trace(entries, f"{REPLAY}.Step.{m}") for m in (HOST, HOST_P99)}
    return Run(
        machine,
        shown or path,
        data["commit_hash"],
        _utc(data["date"]),
        _utc(max(started)) if started else None,
        ran_on_cuda(entries),
        maps,
        {k: v for k, v in host.items() if v},
        {k: v for k, v in p99.items() if v},
        measured,
        read_replays(entries),
        {k: v for k, v in replay_host.items() if v},
        read_prefix(entries),
    )


def results_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json") and f != "machine.json")


def _commit(path: str) -> tuple[int, str]:
    """(commit date in ms, commit hash) of a results file."""
    with open(path) as f:
        data = json.load(f)
    return data["date"], data["commit_hash"]


def latest(paths: list[str]) -> str | None:
    """The file of the latest commit (by commit date, then name)."""
    return max(paths, key=lambda p: (_commit(p)[0], os.path.basename(p)), default=None)


@dataclasses.dataclass(frozen=True)
class Choice:
    path: str
    in_git: bool
    newer_not_in_git: tuple[str, ...]  # commits of later results that git does not track


def choose(paths: list[str], tracked: set[str]) -> Choice | None:
    """The latest results in git (with none in git, the latest of this clone), and the
    commits of later runs that are not in git."""
    path = latest([p for p in paths if p in tracked]) or latest(paths)
    if path is None:
        return None
    date = _commit(path)[0]
    newer = sorted(_commit(p) for p in paths if p not in tracked and _commit(p)[0] > date)
    return Choice(path, path in tracked, tuple(commit for _, commit in newer))


def regimes(grid: CrossoverMap) -> list[Regime]:
    """The four corners of the grid, named by the workload's axes, the smallest first."""
    small, large, short, long_ = grid.workload.ends
    corners = [
        (small, short, min(grid.rows), min(grid.columns)),
        (small, long_, min(grid.rows), max(grid.columns)),
        (large, short, max(grid.rows), min(grid.columns)),
        (large, long_, max(grid.rows), max(grid.columns)),
    ]
    out: list[Regime] = []
    for row_words, column_words, row, column in corners:
        if (row, column) in grid.cells and all(r.point != (row, column) for r in out):
            out.append(Regime(f"{row_words}, {column_words}", (row, column)))
    return out

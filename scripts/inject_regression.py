"""Injected regressions for scripts/check_regression.sh, and the table of what the verdicts saw.

    python3 -m scripts.inject_regression write uniform|stall [--percent P] [--every N]
                                          [--times X] REPO
    python3 -m scripts.inject_regression table [--every N] [--times X] RUN=VERDICT.json ...

`write` appends an artificial regression to every design's file in REPO
(disagmoe/block_manager/{cpu,gpu,hybrid}.py), for a throw-away commit:

- uniform: every call of a step (release_seqs, update_block_table,
  pack_flash_attn_metadata) busy-waits P% (default 10) of its own host time after it
  returns: each design's step takes P% longer on the host, and so in wall time wherever the
  host bounds the step (always on torch's CPU device);
- stall: one step in N (default 50), counted by the first layer's update_block_table,
  busy-waits X (default 2) median steps after that update; the median step is the median
  interval between the first layer's updates over the last N - 1 steps of that manager.

`table` reads the verdicts (scripts/verdict_noise.py --json) of the runs RUN=PATH (RUN:
uniform-P, stall, identical) and prints, point by point, each run's ratio and verdict; then
checks what each run must show and exits 1 where it did not:

- identical: no point slower or faster;
- uniform-P: at every point whose factor is below 1 + P% (the medians; a 10% change is
  below the tail's 1.25), "slower" or "inconclusive", and "slower" wherever the run's own
  minimum detectable change (MDC) was below P% (the MDC promised to see it);
- stall: at every tail point, "slower" or "inconclusive" (a stall in one step of N moves
  the mean by about X / N, below the medians' factor: they are shown, not judged).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

DESIGNS = {"cpu": "CPUBlockManager", "gpu": "GPUBlockManager", "hybrid": "HybridBlockManager"}
STEP_CALLS = ("release_seqs", "update_block_table", "pack_flash_attn_metadata")
RUN = re.compile(r"uniform-([1-9][0-9]*)|stall|identical")
"""The runs a table reads: a uniform slowdown of P%, the stall, the identical commit."""

_UNIFORM = """

# Artificial regression (scripts/inject_regression.py, uniform): every call of the step
# ({calls}) busy-waits {percent}% of its own host time after it returns.
import time as _injected_time  # noqa: E402


def _injected_uniform(method):
    def slowed(self, *args, **kwargs):
        start = _injected_time.perf_counter()
        result = method(self, *args, **kwargs)
        now = _injected_time.perf_counter()
        until = now + (now - start) * {fraction!r}
        while _injected_time.perf_counter() < until:
            pass
        return result

    return slowed


for _name in {calls_tuple!r}:
    setattr({cls}, _name, _injected_uniform(getattr({cls}, _name)))
"""

_STALL = """

# Artificial regression (scripts/inject_regression.py, stall): one step in {every} (counted
# by the first layer's update_block_table) busy-waits {times} median steps after that
# update; the median step is the median interval between first-layer updates over the
# last {window} steps of the manager.
import collections as _injected_collections  # noqa: E402
import statistics as _injected_statistics  # noqa: E402
import time as _injected_time  # noqa: E402

_injected_steps: dict = {{}}


def _injected_stall(method):
    def stalled(self, batch, *args, **kwargs):
        result = method(self, batch, *args, **kwargs)
        if batch.layer_id != self.model_config.layer_ids[0]:
            return result
        now = _injected_time.perf_counter()
        state = _injected_steps.setdefault(id(self), [0, None, _injected_collections.deque(maxlen={window})])
        if state[1] is not None:
            state[2].append(now - state[1])
        state[0] += 1
        if state[0] % {every} == 0 and state[2]:
            until = now + {times!r} * _injected_statistics.median(state[2])
            while _injected_time.perf_counter() < until:
                pass
        state[1] = now
        return result

    return stalled


{cls}.update_block_table = _injected_stall({cls}.update_block_table)
"""


def injected_code(kind: str, cls: str, percent: float = 10.0, every: int = 50, times: float = 2.0) -> str:
    """The Python appended to the file that defines `cls`, for one kind of regression."""
    if kind == "uniform":
        if not percent > 0:
            raise ValueError(f"percent={percent!r} must be > 0")
        return _UNIFORM.format(
            calls=", ".join(STEP_CALLS), percent=f"{percent:g}", fraction=percent / 100, calls_tuple=STEP_CALLS, cls=cls
        )
    if kind == "stall":
        if not (isinstance(every, int) and every >= 2):
            raise ValueError(f"every={every!r} must be an integer >= 2")
        if not times > 0:
            raise ValueError(f"times={times!r} must be > 0")
        return _STALL.format(every=every, times=times, window=every - 1, cls=cls)
    raise ValueError(f"kind={kind!r} is not one of uniform, stall")


def write(kind: str, repo: str, percent: float, every: int, times: float) -> None:
    for design, cls in DESIGNS.items():
        with open(f"{repo}/disagmoe/block_manager/{design}.py", "a") as f:
            f.write(injected_code(kind, cls, percent, every, times))


def is_tail(name: str) -> bool:
    return re.search(r"\.track_pipelined_host_p99$", name) is not None


def run_kind(run: str) -> tuple[str, float | None]:
    """("uniform", P) of "uniform-P"; (run, None) of "stall" and "identical"."""
    found = RUN.fullmatch(run)
    if found is None:
        raise ValueError(f"run={run!r} is not uniform-P (a whole percent), stall or identical")
    return ("uniform", float(found.group(1))) if found.group(1) else (run, None)


def expectations(run: str, entry: dict) -> tuple[bool, float | None]:
    """(is this benchmark judged in this run, the change that was injected into it if known)."""
    kind, percent = run_kind(run)
    if kind == "identical":
        return True, 1.0
    if percent is not None:
        change = 1 + percent / 100
        return entry["factor"] < change, change
    return is_tail(entry["name"]), None


def failures(run: str, verdict: dict) -> list[str]:
    """What `run` should have shown and did not (the module docstring)."""
    out = []
    for key, entry in sorted(verdict["benchmarks"].items()):
        judged, change = expectations(run, entry)
        for p in entry["points"] if judged else []:
            where = f"{key} {p['point']}: {p['ratio']:.2f}x {p['verdict']} (MDC {entry['mdc']:.0%})"
            if run == "identical":
                if p["verdict"] in ("slower", "faster"):
                    out.append(f"identical commits called {where}")
            elif p["verdict"] not in ("slower", "inconclusive"):
                out.append(f"{run} not seen: {where}")
            elif change is not None and 1 + entry["mdc"] < change and p["verdict"] != "slower":
                out.append(f"{run} missed where the MDC said it could be seen: {where}")
    return out


def _order(run: str) -> tuple[int, float]:
    kind, percent = run_kind(run)
    return ("uniform", "stall", "identical").index(kind), percent or 0.0


def table(runs: dict[str, dict], every: int, times: float) -> list[str]:
    """Markdown rows: per benchmark and point, each run's ratio, verdict and MDC."""
    order = sorted(runs, key=_order)
    titles = []
    for run in order:
        kind, percent = run_kind(run)
        titles.append(
            f"uniform {percent:g}% slower"
            if percent is not None
            else f"stall 1/{every} ({times:g} median steps)"
            if kind == "stall"
            else "identical commit"
        )
    rows = ["| benchmark | point | factor | " + " | ".join(titles) + " |", "|---|---|---:|" + "---|" * len(order)]
    keys = sorted({key for verdict in runs.values() for key in verdict["benchmarks"]})
    for key in keys:
        entries = {run: runs[run]["benchmarks"].get(key) for run in order}
        first = next(e for e in entries.values() if e)
        for point in [tuple(p["point"]) for p in first["points"]]:
            cells = []
            for run in order:
                entry = entries[run]
                found = [p for p in entry["points"] if tuple(p["point"]) == point] if entry else []
                cells.append(
                    f"{found[0]['ratio']:.2f}x {found[0]['verdict']} (MDC {entry['mdc']:.0%})" if found else "-"
                )
            rows.append(f"| {key} | {', '.join(point) or '-'} | {first['factor']:.2f} | {' | '.join(cells)} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "table"))
    parser.add_argument("args", nargs="+", help="write: KIND REPO; table: RUN=VERDICT.json ...")
    parser.add_argument("--percent", type=float, default=10.0, help="uniform: how much slower, in percent")
    parser.add_argument("--every", type=int, default=50, help="stall: one step in EVERY")
    parser.add_argument("--times", type=float, default=2.0, help="stall: its length, in median steps")
    args = parser.parse_args(argv)
    if args.action == "write":
        if len(args.args) != 2:
            parser.error("write takes KIND REPO")
        write(args.args[0], args.args[1], args.percent, args.every, args.times)
        return 0
    runs = {}
    for item in args.args:
        run, _, path = item.partition("=")
        if RUN.fullmatch(run) is None or not path:
            parser.error(f"{item!r} is not RUN=VERDICT.json with RUN one of uniform-P, stall, identical")
        with open(path) as f:
            runs[run] = json.load(f)
    print("\n".join(table(runs, args.every, args.times)))
    problems = [problem for run, verdict in runs.items() for problem in failures(run, verdict)]
    for problem in problems:
        print("FAIL: " + problem)
    print("injected regressions: " + ("FAILED" if problems else "every run shows what it must"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

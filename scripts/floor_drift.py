"""How far one timing process's medians move from the next: the floor under the suite's
spread between runs.

asv measures every grid point of a `time_` benchmark in its own forked process (two a
run, `rounds = 2`), so no such benchmark can be steadier from run to run than what one
process measures against the next. This forks `--children` processes one after
another from a process that imported torch but not CUDA, as asv's fork server does.
Each initialises CUDA, warms the decode states of both backends at one grid point, then
takes `--iterations` calls of each quantity, interleaved, each call ended by a
synchronise: host work alone (ReferenceWork without its copy, no synchronise), a bare
synchronise, one tiny kernel, a 64 KB pinned copy, the suite's `ReferenceWork`, and each
backend's first-layer update, later-layer update and pack. Per quantity, and for the
ratios the `track_` benchmarks report (each backend operation over ReferenceWork, gpu
over cpu), it prints the median of the children's medians, their coefficient of
variation and their spread ((max - min) / median), for medians of all calls and of the
first 20 (an asv child takes 10 to 40), and the spread that three asv runs would show.
`--cpu-affinity` pins every child to the CPUs named, as `asv run --cpu-affinity` does.

    python scripts/floor_drift.py --children 16 --pause 5 --batch-size 256 --seq-len 1024 --json drift.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

import torch

from asv_spread import spread  # (max - min) / median, as asv_noise.sh reports it
from perf_probe import samples_us
from phase_probe import in_forked_child  # imports benchmarks.common, as asv's fork server does
from benchmarks.common import ReferenceWork
from disagmoe.workloads import decode_state, default_device

ASV_SAMPLES = 20


def quantities(batch_size: int, seq_len: int):
    """{name: (fn, before, device, manager)} of every quantity: `samples_us`'s arguments."""
    device = default_device()
    host_only = torch.device("cpu")  # no synchronise: the host's time alone
    nothing = lambda: None  # noqa: E731
    x = torch.zeros(1, device=device)
    host = torch.zeros(16 * 1024, dtype=torch.int32, pin_memory=device.type == "cuda")
    target = torch.empty_like(host, device=device)
    found = {"host work, no device": (ReferenceWork(host_only).step, nothing, host_only, None),
             "bare synchronise": (nothing, nothing, device, None),
             "one tiny kernel": (lambda: x.add_(1), nothing, device, None),
             "64 KB pinned copy": (lambda: target.copy_(host, non_blocking=True), nothing, device, None),
             "ReferenceWork": (ReferenceWork(device).step, nothing, device, None)}
    for backend in ("cpu", "gpu"):
        state = decode_state(backend, batch_size, seq_len, device)
        state.step()
        manager = state.manager
        found[f"{backend} update, first layer"] = (state.step, state.make_room, device, manager)
        found[f"{backend} update, later layer"] = (
            lambda m=manager, s=state: m.update_block_table(s.later), nothing, device, manager)
        found[f"{backend} pack"] = (lambda m=manager, s=state: m.pack_flash_attn_metadata(s.first), nothing,
                                    device, manager)
    return found


def child(batch_size: int, seq_len: int, iterations: int, cpus: list[int] | None, forked_at: float) -> dict:
    if cpus:
        os.sched_setaffinity(0, cpus)
    found = quantities(batch_size, seq_len)
    samples = {name: [] for name in found}
    for _ in range(iterations):  # one call of each in turn: a drift within the child hits all alike
        for name, (fn, before, device, manager) in found.items():
            samples[name] += samples_us(fn, before, device, 1, manager)
    return {"started_s": forked_at,
            "all": {name: statistics.median(s) for name, s in samples.items()},
            "first": {name: statistics.median(s[:ASV_SAMPLES]) for name, s in samples.items()}}


def summary(values: list[float]) -> dict:
    middle = statistics.median(values)
    return {"median": middle, "cv_pct": 100 * statistics.pstdev(values) / middle, "spread_pct": spread(values)}


def three_runs_spread(values: list[float], children_a_run: int) -> float:
    """What `scripts/asv_noise.sh` would see: consecutive children grouped into runs (a
    `time_` benchmark measures each point in two children a run, `rounds = 2`; a `track_`
    ratio comes from one `setup_cache` child a run); a run's value is the mean of its
    children's medians; the median, over every choice of three runs, of their spread in percent."""
    n = children_a_run
    runs = [statistics.fmean(values[i:i + n]) for i in range(0, len(values) - n + 1, n)]
    if len(runs) < 3:
        return float("nan")  # too few children
    return statistics.median(spread(list(three)) for three in itertools.combinations(runs, 3))


def series(runs: list[dict], field: str) -> dict[str, list[float]]:
    """Each quantity's medians, child by child, and the ratios the suite tracks: each
    backend operation over ReferenceWork (`RelativeTime`), gpu over cpu (`InverseSpeedup`)."""
    values = {name: [run[field][name] for run in runs] for name in runs[0][field]}
    reference = values["ReferenceWork"]
    for name in [n for n in values if n.startswith(("cpu ", "gpu "))]:
        values[f"{name} / ReferenceWork"] = [a / b for a, b in zip(values[name], reference)]
    for name in [n for n in values if n.startswith("gpu ") and "/" not in n]:
        cpu = values["cpu " + name[4:]]
        values[f"{name} / cpu"] = [a / b for a, b in zip(values[name], cpu)]
    return values


def report(data: dict) -> None:
    runs = data["children"]
    pinned = f", pinned to CPUs {data['cpu_affinity']}" if data.get("cpu_affinity") else ""
    print(f"{data['device']}, B = {data['batch_size']}, L = {data['seq_len']}: {len(runs)} processes over "
          f"{runs[-1]['started_s'] - runs[0]['started_s']:.0f} s{pinned}, {data['iterations']} calls of each")
    print(f"| quantity | median | CV | spread | CV, first {ASV_SAMPLES} calls | spread | three asv runs |")
    print("|---|---|---|---|---|---|---|")
    every, first = series(runs, "all"), series(runs, "first")
    for name, values in every.items():
        a, b = summary(values), summary(first[name])
        unit = "" if "/" in name else " us"
        print(f"| {name} | {a['median']:.3g}{unit} | {a['cv_pct']:.1f}% | {a['spread_pct']:.1f}% | "
              f"{b['cv_pct']:.1f}% | {b['spread_pct']:.1f}% | "
              f"{three_runs_spread(values, 1 if '/' in name else 2):.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between children (asv's rounds "
                        "and runs are minutes apart)")
    parser.add_argument("--cpu-affinity", type=int, nargs="+", metavar="CPU",
                        help="pin every child to these CPUs (asv run --cpu-affinity does the same)")
    parser.add_argument("--json", help="write every child's medians here")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier --json, measure nothing")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            report(json.load(f))
        return
    runs = []
    for _ in range(args.children):
        runs.append(in_forked_child(child, args.batch_size, args.seq_len, args.iterations, args.cpu_affinity))
        time.sleep(args.pause)
    data = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "batch_size": args.batch_size, "seq_len": args.seq_len, "iterations": args.iterations,
            "cpu_affinity": args.cpu_affinity, "children": runs}
    report(data)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)


if __name__ == "__main__":
    main()

"""How far one timing process's medians move from the next: the floor under the suite's
spread between runs.

asv measures every grid point in its own forked process (two a run, `rounds = 2`), so no
benchmark can be steadier from run to run than what one such process measures against
the next. This forks `--children` processes one after another from a process that
imported torch but not CUDA, as asv's fork server does. Each initialises CUDA, warms the
decode states of both backends at one grid point, then takes `--iterations` calls of
each quantity, interleaved, each call ended by a synchronise: a bare synchronise, one
tiny kernel, a 64 KB pinned copy, the suite's `ReferenceWork`, and each backend's
first-layer update, later-layer update and pack. Per quantity it prints the median of
the children's medians, their coefficient of variation and their spread ((max - min) /
median), for medians of all calls and of the first 20 (an asv child takes 10 to 40).

    python scripts/floor_drift.py --children 20 --pause 6 --batch-size 256 --seq-len 1024 --json drift.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from perf_probe import samples_us
from phase_probe import in_forked_child  # imports benchmarks.common, as asv's fork server does
from benchmarks.common import ReferenceWork
from disagmoe.workloads import decode_state, default_device

ASV_SAMPLES = 20


def quantities(batch_size: int, seq_len: int):
    """{name: (fn, before, manager)} of every quantity, on this process's device."""
    device = default_device()
    nothing = lambda: None  # noqa: E731
    x = torch.zeros(1, device=device)
    host = torch.zeros(16 * 1024, dtype=torch.int32, pin_memory=device.type == "cuda")
    target = torch.empty_like(host, device=device)
    reference = ReferenceWork(device)
    found = {"bare synchronise": (nothing, nothing, None),
             "one tiny kernel": (lambda: x.add_(1), nothing, None),
             "64 KB pinned copy": (lambda: target.copy_(host, non_blocking=True), nothing, None),
             "ReferenceWork": (reference.step, nothing, None)}
    for backend in ("cpu", "gpu"):
        state = decode_state(backend, batch_size, seq_len, device)
        state.step()
        manager = state.manager
        found[f"{backend} update, first layer"] = (state.step, state.make_room, manager)
        found[f"{backend} update, later layer"] = (
            lambda m=manager, s=state: m.update_block_table(s.later), nothing, manager)
        found[f"{backend} pack"] = (lambda m=manager, s=state: m.pack_flash_attn_metadata(s.first), nothing, manager)
    return device, found


def child(batch_size: int, seq_len: int, iterations: int, forked_at: float) -> dict:
    device, found = quantities(batch_size, seq_len)
    samples = {name: [] for name in found}
    for _ in range(iterations):  # one call of each in turn: a drift within the child hits all alike
        for name, (fn, before, manager) in found.items():
            samples[name] += samples_us(fn, before, device, 1, manager)
    return {"started_s": forked_at,
            "all": {name: statistics.median(s) for name, s in samples.items()},
            "first": {name: statistics.median(s[:ASV_SAMPLES]) for name, s in samples.items()}}


def spread(values: list[float]) -> dict:
    middle = statistics.median(values)
    return {"median_us": middle, "cv_pct": 100 * statistics.pstdev(values) / middle,
            "spread_pct": 100 * (max(values) - min(values)) / middle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between children (asv's rounds "
                        "and runs are minutes apart)")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = []
    for _ in range(args.children):
        runs.append(in_forked_child(child, args.batch_size, args.seq_len, args.iterations))
        time.sleep(args.pause)
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "batch_size": args.batch_size, "seq_len": args.seq_len, "iterations": args.iterations,
              "children": runs, "quantities": {}}
    print(f"{report['device']}, B = {args.batch_size}, L = {args.seq_len}: {args.children} processes "
          f"over {runs[-1]['started_s'] - runs[0]['started_s']:.0f} s, {args.iterations} calls of each")
    print(f"| quantity | median us | CV, {args.iterations} calls | spread | CV, first {ASV_SAMPLES} | spread |")
    print("|---|---|---|---|---|---|")
    for name in runs[0]["all"]:
        every = spread([run["all"][name] for run in runs])
        first = spread([run["first"][name] for run in runs])
        report["quantities"][name] = {"all": every, "first": first}
        print(f"| {name} | {every['median_us']:.1f} | {every['cv_pct']:.1f}% | {every['spread_pct']:.1f}% "
              f"| {first['cv_pct']:.1f}% | {first['spread_pct']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

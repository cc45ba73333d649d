"""FlexAttention in the loop on its own: each bundled trace's busiest window replayed on a
manager of the scheduler's pool, one layer of attention a step (disagmoe_bench.attention):
the warm pass's time (compiles), the layer's p50/p99 and the compiles while timed.

    python3 scripts/probes/attention_probe.py [--steps N] [--running R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from disagmoe_bench import attention, traces
from disagmoe_bench.scheduler import SchedulerConfig, TraceReplay, busiest_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--running", type=int, default=256)
    parser.add_argument("--traces", nargs="+", default=["azure", "mooncake"])
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = attention.AttentionShape() if device.type == "cuda" else attention.CPU_SHAPE
    out = []
    for name in args.traces:
        requests = traces.read_trace(traces.bundled(name), name)
        config = SchedulerConfig(max_running=args.running)
        start = time.perf_counter()
        workload = TraceReplay(requests, config, busiest_window(requests, config, args.steps), args.steps, name)
        built = time.perf_counter() - start
        manager = attention.pool_manager(workload, device)
        start = time.perf_counter()
        record = attention.measure(workload, manager, shape, device)
        record.update(
            trace=name,
            steps=args.steps,
            seconds=time.perf_counter() - start,
            schedule_seconds=built,
            stats=workload.stats(),
        )
        print(
            f"{name}: schedule {built:.1f} s, measure {record['seconds']:.1f} s; layer mean "
            f"{record['layer_mean_us']:.1f} us p50 {record['layer_p50_us']:.1f} p99 {record['layer_p99_us']:.1f} "
            f"max {max(record['layer_us']):.1f}; diff {record['max_abs_diff']:.3g} at {record['checked_steps']}; "
            f"compiles timed {record['compiles_timed']}; late {record['late_launches']}",
            flush=True,
        )
        out.append(record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()

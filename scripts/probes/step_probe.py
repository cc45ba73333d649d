"""Host time of a pipelined step of each design, beside the floors of the calls such a step
cannot avoid, all timed in one process.

Written against the package's public API alone (the managers, the configs, BatchMetadata),
so that it runs on any commit: `scripts/compare_commits.sh` runs this file with two
installed versions in alternating processes. A step is update + pack of one batch at the
first layer (decode: B requests of context L, one token each; lengths grow), `--steps`
steps back to back with one synchronise at the end; each step's host time is timed
alone (the median and p99 are of those), the window's wall time too. Floors (each the
median host time of a call made back to back, timed here): a pinned non-blocking copy of
the bytes the cpu design copies, a CUDA graph replay of one tiny kernel, an event record.
Before each timed window the garbage collector collects and freezes what exists (as a
serving engine does once at start-up): its pauses then scan only what the steps made.

    python3 scripts/probes/step_probe.py --json out.json
    python3 scripts/probes/step_probe.py --designs cpu gpu --batch-sizes 16 256 --contexts 1024
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch

import disagmoe
from disagmoe import BatchMetadata, CacheConfig, ModelConfig

# A literal, not the registry (disagmoe.DESIGNS): the probe runs against old commits too
# (compare_commits.sh), which predate the registry and find designs by class name.
DESIGNS = {"cpu": "CPUBlockManager", "gpu": "GPUBlockManager", "hybrid": "HybridBlockManager"}
BLOCK_SIZE = 16


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def canary_us() -> float:
    """A fixed host-only workload: the machine's host speed of the moment."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(20000):
            total += i * i
        for _ in range(200):
            torch.empty(16)
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def floors(nbytes: int, repeats: int = 2000) -> dict:
    device = torch.device("cuda")
    src = torch.ones(max(nbytes, 8), dtype=torch.uint8, pin_memory=True)
    dst = torch.empty_like(src, device=device)
    one = torch.zeros(1, device=device)
    graph = torch.cuda.CUDAGraph()
    one.add_(1)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        one.add_(1)
    event = torch.cuda.Event()

    def host_us(call) -> float:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        return statistics.median(samples) * 1e6

    copy = host_us(lambda: dst.copy_(src, non_blocking=True))
    replay = host_us(graph.replay)
    record = host_us(event.record)
    return {
        "copy_bytes": nbytes,
        "copy_us": copy,
        "replay_us": replay,
        "record_us": record,
        "floor_us": copy + replay + record,
    }


def make(design: str, batch_size: int, max_seq_len: int, layers: int = 1):
    cls = getattr(disagmoe, DESIGNS[design])
    model = ModelConfig(layer_ids=tuple(range(layers)), max_seq_len=max_seq_len, max_batch_size_attn=batch_size)
    blocks = batch_size * -(-max_seq_len // BLOCK_SIZE)
    return cls(model, CacheConfig(block_size=BLOCK_SIZE, num_gpu_blocks=blocks), batch_size, device="cuda")


def decode(design: str, batch_size: int, context: int, steps: int, warmup: int = 50) -> dict:
    manager = make(design, batch_size, context + steps + warmup + 1)
    ids = list(range(batch_size))
    chunk = max(1, (1 << 22) // context)
    for start in range(0, batch_size, chunk):
        part = ids[start : start + chunk]
        manager.update_block_table(BatchMetadata(0, part, len(part), [context] * len(part)))
    if hasattr(manager, "warm_up"):
        manager.warm_up()
    batch = BatchMetadata(0, ids, 0, [])
    for _ in range(warmup):
        manager.update_block_table(batch)
        manager.pack_flash_attn_metadata(batch)
    manager.synchronize()
    compiles = getattr(manager, "num_compiles", 0)
    captures = getattr(manager, "num_captures", 0)
    gc.collect()
    gc.freeze()
    samples = []
    clock = time.perf_counter
    begin = clock()
    for _ in range(steps):
        start = clock()
        manager.update_block_table(batch)
        manager.pack_flash_attn_metadata(batch)
        samples.append(clock() - start)
    returned = clock()
    manager.synchronize()
    done = clock()
    us = [s * 1e6 for s in samples]
    return {
        "design": design,
        "workload": "decode",
        "batch_size": batch_size,
        "context": context,
        "steps": steps,
        "host_median_us": statistics.median(us),
        "host_p99_us": percentile(us, 0.99),
        "host_max_us": max(us),
        "host_mean_us": (returned - begin) / steps * 1e6,
        "wall_us": (done - begin) / steps * 1e6,
        "compiles": getattr(manager, "num_compiles", 0) - compiles,
        "captures": getattr(manager, "num_captures", 0) - captures,
    }


def trace(design: str, running: int, max_prompt: int, steps: int) -> dict | None:
    try:  # the lab package, or where commits before it kept the harness
        from disagmoe_bench.workloads import TraceConfig, TraceWorkload
    except ImportError:
        try:
            from disagmoe.serving.workloads import TraceConfig, TraceWorkload
        except ImportError:
            return None
    workload = TraceWorkload(TraceConfig(running=running, max_prompt=max_prompt), steps + 20)
    max_seq_len, max_reqs = workload.sizes(steps + 20)
    cls = getattr(disagmoe, DESIGNS[design])
    model = ModelConfig(layer_ids=workload.layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_reqs)
    blocks = max_reqs * -(-max_seq_len // BLOCK_SIZE)
    manager = cls(model, CacheConfig(BLOCK_SIZE, blocks), max_reqs, device="cuda")
    workload.start(manager)
    if hasattr(manager, "warm_up"):
        manager.warm_up(workload.config.chunk + running)
    for k in range(20):
        workload.step_at(k).run(manager)
    manager.synchronize()
    compiles = getattr(manager, "num_compiles", 0)
    captures = getattr(manager, "num_captures", 0)
    gc.collect()
    gc.freeze()
    samples = []
    clock = time.perf_counter
    begin = clock()
    for k in range(20, 20 + steps):
        step = workload.step_at(k)
        start = clock()
        step.run(manager)
        samples.append(clock() - start)
    manager.synchronize()
    done = clock()
    us = [s * 1e6 for s in samples]
    first = [workload.step_at(k).layers[0] for k in range(20, 20 + steps)]
    tokens = sum(b.num_tokens for b in first) / steps
    entries = sum(len(b.req_ids) for b in first) / steps
    width = -(-max_seq_len // BLOCK_SIZE)  # (an upper bound: the widest row a step can have)
    return {
        "design": design,
        "workload": "trace",
        "mean_bytes": int(4 * entries * width + 8 * tokens + 16 * entries),
        "running": running,
        "max_prompt": max_prompt,
        "steps": steps,
        "host_median_us": statistics.median(us),
        "host_p99_us": percentile(us, 0.99),
        "host_max_us": max(us),
        "wall_us": (done - begin) / steps * 1e6,
        "compiles": getattr(manager, "num_compiles", 0) - compiles,
        "captures": getattr(manager, "num_captures", 0) - captures,
    }


def cpu_bytes(batch_size: int, context: int) -> int:
    """The bytes the cpu design copies for a decode step (its metadata)."""
    width = -(-(context + 1) // BLOCK_SIZE)
    return 4 * batch_size * width + 8 * batch_size + 4 * (4 * batch_size + 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--designs", nargs="+", default=["cpu", "gpu", "hybrid"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--trace",
        type=int,
        nargs="*",
        default=[],
        metavar="R",
        help="also the trace step (release, two layers) at these running counts",
    )
    parser.add_argument("--max-prompt", type=int, default=2048)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", help="append one JSON line per result here")
    args = parser.parse_args(argv)
    results = [
        {
            "label": args.label,
            "canary_us": canary_us(),
            "torch": torch.__version__,
            "card": torch.cuda.get_device_name(),
            "package": disagmoe.__file__,
        }
    ]
    for design in args.designs:
        if not hasattr(disagmoe, DESIGNS[design]):
            print(f"{design}: not in this version", file=sys.stderr)
            continue
        for b in args.batch_sizes:
            for ctx in args.contexts:
                r = decode(design, b, ctx, args.steps)
                r["floors"] = floors(cpu_bytes(b, ctx + args.steps))
                results.append(r)
        for running in args.trace:
            r = trace(design, running, args.max_prompt, args.steps)
            if r is not None:
                r["floors"] = floors(r.pop("mean_bytes"))
                results.append(r)
    for r in results[1:]:
        where = (
            f"B={r['batch_size']} L={r['context']}"
            if r["workload"] == "decode"
            else f"R={r['running']} P={r['max_prompt']}"
        )
        f = r["floors"]
        print(
            f"{args.label:>8} {r['design']:>6} {r['workload']:>6} {where:>14}: "
            f"host median {r['host_median_us']:7.1f} p99 {r['host_p99_us']:7.1f} max {r['host_max_us']:8.1f} "
            f"wall {r['wall_us']:7.1f} us | floor "
            f"{f['floor_us']:5.1f} (copy {f['copy_us']:.1f} replay {f['replay_us']:.1f} record {f['record_us']:.1f}) "
            f"| compiles {r['compiles']} captures {r['captures']}"
        )
    print(f"{args.label:>8} canary {results[0]['canary_us']:.0f} us")
    if args.json:
        with open(args.json, "a") as out:
            for r in results:
                out.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

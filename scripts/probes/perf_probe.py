"""Floors and per-operation timings of the designs' variants, side by side in one process.

Measures the machine's floor (a bare device synchronise, one tiny kernel plus
the synchronise, pinned copies) and, for each grid point, the median of
`--iterations` calls of each case on each variant, every call ending with the
device synchronised. Each variant's manager serves the whole grid; at a grid
point, every timed decode update or step adds a token to each request (lengths
run from L to about L + 2 * iterations). Used to write docs/performance.md;
`python -m disagmoe_bench` is the user-facing table. `--report` prints a saved
run as the Markdown tables of docs/performance.md.

    python3 -m scripts.probes.perf_probe --batch-sizes 16 256 --seq-lens 1024 --json out.json
    python3 -m scripts.probes.perf_probe --report out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from disagmoe_bench.seed import DECODE_STEPS, LATER_LAYER, decode_batch, make_manager, prefill_batch
from disagmoe_bench.timing import default_device, limit_cpu_threads
from scripts.probes import rebuilt

VARIANTS = {  # name: (backend, constructor keywords)
    "cpu": ("cpu", {}),
    "gpu-triton-graphs": ("gpu", {"kernels": "triton", "cuda_graphs": True}),
    "gpu-triton": ("gpu", {"kernels": "triton", "cuda_graphs": False}),
    "gpu-torch": ("gpu", {"kernels": "torch"}),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_us(fn, before, device, iterations: int, manager=None) -> list[float]:
    """Microseconds of each of `iterations` calls of `fn`, each after `before()` and a
    synchronise (untimed), each ended by the synchronise (`manager`'s, else the device's)."""
    done = manager.synchronize if manager is not None else (lambda: sync(device))
    samples = []
    for _ in range(iterations):
        before()
        done()
        t0 = time.perf_counter()
        fn()
        done()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def median_us(fn, before, device, iterations: int, manager=None) -> float:
    return statistics.median(samples_us(fn, before, device, iterations, manager))


# Host-to-device copies of the `cpu` pack's sizes: its metadata at B = 256 is about 15 KB
# at L = 128 and 71 KB (72,712 bytes) at L = 1024 (block tables of 9 and 65 blocks a request).
COPY_KB = (4, 16, 64, 256)


def floors(device: torch.device, iterations: int) -> dict:
    x = torch.zeros(1, device=device)

    def nothing() -> None:
        pass

    result = {
        "bare_sync_us": median_us(nothing, nothing, device, iterations),
        "one_launch_us": median_us(lambda: x.add_(1), nothing, device, iterations),
        "eight_launches_us": median_us(lambda: [x.add_(1) for _ in range(8)], nothing, device, iterations),
    }
    if device.type == "cuda":  # one pinned, non-blocking copy and the synchronise, as the cpu pack does
        for kb in COPY_KB:
            host = torch.zeros(kb * 256, dtype=torch.int32, pin_memory=True)
            target = torch.empty_like(host, device=device)
            copy = lambda: target.copy_(host, non_blocking=True)  # noqa: E731
            result[f"copy_{kb}kb_us"] = median_us(copy, nothing, device, iterations)
            # As the pack does it: the host writes the buffer, then copies it at once.
            values, view = torch.arange(kb * 256, dtype=torch.int32).numpy(), host.numpy()
            write = lambda: view.__setitem__(slice(None), values)  # noqa: E731
            result[f"write_{kb}kb_us"] = median_us(write, nothing, device, iterations)
            result[f"write_copy_{kb}kb_us"] = median_us(lambda: (write(), copy()), nothing, device, iterations)
    return result


def make_variants(variants: list[str], max_reqs: int, max_seq_len: int, device) -> dict:
    """{variant: manager} for up to `max_reqs` requests of up to `max_seq_len` tokens,
    each backend sized by `make_manager` and rebuilt with the variant's keywords."""
    sized = {
        backend: make_manager(backend, max_reqs, max_seq_len - DECODE_STEPS, device)
        for backend in {VARIANTS[v][0] for v in variants}
    }
    return {v: rebuilt(sized[VARIANTS[v][0]], **VARIANTS[v][1]) for v in variants}


def time_cases(manager, device, batch_size: int, seq_len: int, iterations: int) -> dict:
    prefill = lambda: prefill_batch(batch_size, seq_len)  # noqa: E731
    decode0 = decode_batch(batch_size)
    decode1 = decode_batch(batch_size, LATER_LAYER)
    out = {}
    # Prefill: every timed call starts from an empty manager.
    out["prefill_update_us"] = median_us(
        lambda: manager.update_block_table(prefill()), manager.reset_state, device, iterations, manager
    )
    manager.reset_state()
    manager.update_block_table(prefill())
    for _ in range(3):  # warm-up: compile, capture
        manager.update_block_table(decode0)
        manager.pack_flash_attn_metadata(decode0)

    def nothing() -> None:
        pass

    timed = {
        "decode_update_us": lambda: manager.update_block_table(decode0),
        "later_layer_update_us": lambda: manager.update_block_table(decode1),
        "decode_pack_us": lambda: manager.pack_flash_attn_metadata(decode0),
        "decode_step_us": lambda: (manager.update_block_table(decode0), manager.pack_flash_attn_metadata(decode0)),
    }
    for name, fn in timed.items():
        out[name] = median_us(fn, nothing, device, iterations, manager)
    manager.reset_state()
    return out


CASES = [
    ("decode_update_us", "decode update, first layer"),
    ("prefill_update_us", "prefill update"),
    ("later_layer_update_us", "decode update, later layer"),
    ("decode_pack_us", "decode pack"),
    ("decode_step_us", "decode step (update + pack)"),
]


def floors_line(report: dict) -> str:
    floors = report["floors"]
    return (
        f"{report['device']}, torch {report['torch']}, triton {report.get('triton', '-')}; "
        f"bare synchronise {floors['bare_sync_us']:.1f} us, one tiny kernel + synchronise "
        f"{floors['one_launch_us']:.1f} us, eight tiny kernels + synchronise {floors['eight_launches_us']:.1f} us"
        + "".join(
            f"; pinned copy of {key[5:-5]} KB to the device + synchronise {value:.1f} us"
            for key, value in floors.items()
            if key.startswith("copy_")
        )
        + "".join(
            f"; host write of {key[6:-5]} KB + synchronise {value:.1f} us"
            for key, value in floors.items()
            if key.startswith("write_") and not key.startswith("write_copy_")
        )
        + "".join(
            f"; host write of {key[11:-5]} KB then its copy + synchronise {value:.1f} us"
            for key, value in floors.items()
            if key.startswith("write_copy_")
        )
    )


def print_report(report: dict) -> None:
    """The floors, then one Markdown table per case: every variant, and the speedup of the
    `gpu` backend's default on CUDA (gpu-triton-graphs, else the first gpu variant run)."""
    print(floors_line(report) + "\n")
    points = {(p["batch_size"], p["seq_len"], p["variant"]): p for p in report["points"]}
    variants = list(dict.fromkeys(p["variant"] for p in report["points"]))
    gpu = (
        "gpu-triton-graphs"
        if "gpu-triton-graphs" in variants
        else next((v for v in variants if v.startswith("gpu")), None)
    )
    speedup = "cpu" in variants and gpu is not None
    grid = sorted({(b, s) for b, s, _ in points})
    for key, title in CASES:
        print(f"**{title}** (median us" + (f"; speedup = cpu / {gpu})\n" if speedup else ")\n"))
        print("| B | L | " + " | ".join(variants) + (" | speedup |" if speedup else " |"))
        print("|---:|---:|" + "---:|" * (len(variants) + speedup))
        for b, s in grid:
            row = " | ".join(f"{points[(b, s, v)][key]:.1f}" for v in variants)
            ratio = f" {points[(b, s, 'cpu')][key] / points[(b, s, gpu)][key]:.2f}x |" if speedup else ""
            print(f"| {b} | {s} | {row} |{ratio}")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["cpu", "gpu-triton-graphs", "gpu-triton", "gpu-torch"]
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--report", metavar="JSON", help="print the tables of an earlier --json, measure nothing")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            print_report(json.load(f))
        return
    device = default_device()
    limit_cpu_threads(device)
    max_seq_len = max(args.seq_lens) + 4 * args.iterations + 64  # each timed decode call adds a token
    managers = make_variants(args.variants, max(args.batch_sizes), max_seq_len, device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "floors": floors(device, 2000),
        "points": [],
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        pass
    print(json.dumps({k: v for k, v in report.items() if k != "points"}))
    cases = ["prefill_update_us", "decode_update_us", "later_layer_update_us", "decode_pack_us", "decode_step_us"]
    print(f"{'B':>4} {'S':>5} {'variant':<28} " + " ".join(f"{c[:-3]:>20}" for c in cases))
    for b in args.batch_sizes:
        for s in args.seq_lens:
            for variant, manager in managers.items():
                t = time_cases(manager, device, b, s, args.iterations)
                report["points"].append({"batch_size": b, "seq_len": s, "variant": variant, **t})
                print(f"{b:>4} {s:>5} {variant:<28} " + " ".join(f"{t[c]:>20.1f}" for c in cases), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

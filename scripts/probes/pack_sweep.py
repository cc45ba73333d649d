"""Launch configurations of the `gpu` backend's pack kernel, side by side (CUDA only).

For each grid point, one warmed-up decode state per configuration (see
kernels_triton.PackLaunch: columns per chunk, programs per batch entry, warps;
given to the manager as `GPUBlockManager(pack_launch=...)`) and one of the
`cpu` backend; the states take turns, step by step, so a noisy stretch of the
machine hits every configuration alike. Reports per configuration the median
of the decode pack as the benchmarks time it (first-layer update synchronised
and untimed, then the pack and a synchronise).

    python3 -m scripts.probes.pack_sweep --batch-sizes 16 256 --seq-lens 128 1024 --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from disagmoe.block_manager.kernels_triton import PackLaunch
from disagmoe_bench.seed import DecodeState, make_manager
from scripts.probes import rebuilt

CONFIGS = [
    PackLaunch(block_w=w, block_t=128, parts=p, num_warps=n)
    for w, p, n in [
        (128, 1, 4),
        (256, 1, 4),
        (512, 1, 4),
        (1024, 1, 4),
        (1024, 1, 8),
        (128, 2, 4),
        (128, 4, 4),
        (128, 8, 4),
        (256, 4, 4),
        (64, 8, 2),
    ]
]


def name(launch: PackLaunch | None) -> str:
    return "cpu" if launch is None else f"w{launch.block_w}-p{launch.parts}-nw{launch.num_warps}"


def state_for(launch: PackLaunch | None, batch_size: int, seq_len: int) -> DecodeState:
    """A warmed-up decode state of the `cpu` backend (None) or of the `gpu` backend with
    that launch shape, on a manager sized as the suite sizes the point."""
    manager = make_manager("cpu" if launch is None else "gpu", batch_size, seq_len, "cuda")
    if launch is not None:
        manager = rebuilt(manager, pack_launch=launch)
    state = DecodeState(manager, batch_size, seq_len)
    state.warm_up()
    return state


def sweep(batch_size: int, seq_len: int, iterations: int) -> dict:
    launches = [None] + CONFIGS
    states = {name(launch): state_for(launch, batch_size, seq_len) for launch in launches}
    samples = {key: [] for key in states}
    order = list(states)
    for i in range(iterations):
        for key in order if i % 2 == 0 else order[::-1]:
            state = states[key]
            state.make_room()
            state.step()
            state.manager.synchronize()
            start = time.perf_counter()
            state.manager.pack_flash_attn_metadata(state.first)
            state.manager.synchronize()
            samples[key].append(time.perf_counter() - start)
    return {key: {"pack_us": statistics.median(values) * 1e6} for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 128, 256])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    for batch_size in args.batch_sizes:
        for seq_len in args.seq_lens:
            point = sweep(batch_size, seq_len, args.iterations)
            results[f"{batch_size}x{seq_len}"] = point
            print(f"\nB={batch_size} L={seq_len} (median us: pack as benchmarked)")
            for key, value in point.items():
                print(f"  {key:>16} {value['pack_us']:8.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=1
            )


if __name__ == "__main__":
    main()

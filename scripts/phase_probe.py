"""Where the time goes: the phases of the `cpu` backend's pack, and of an asv timing child.

1. The `cpu` pack at each grid point, phase by phase (median us): the C++ core
   writing every array into the pinned staging buffer (host only); that write
   followed by the one copy to the device and a synchronise; the copy and the
   synchronise alone, of a buffer already written; the whole pack with its
   synchronise, as the benchmarks time it.
2. An asv timing child, as the fork server makes it: a process that imported
   torch and the package but not CUDA forks; the child times its CUDA
   initialisation, the build of a warmed-up decode state of each backend
   (Triton kernels loaded, graphs captured), and a second state of the same
   point. Medians over `--children` children.

    python scripts/phase_probe.py --batch-sizes 256 --seq-lens 128 1024 --json phases.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from disagmoe.workloads import DecodeState, decode_state, default_device, make_manager
from perf_probe import median_us  # this folder's probe: each call ended by a synchronise

HOST_ONLY = torch.device("cpu")  # for median_us: no synchronise, the host's time alone


def cpu_pack_phases(batch_size: int, seq_len: int, iterations: int) -> dict:
    device = default_device()
    nothing = lambda: None  # noqa: E731
    state = DecodeState(make_manager("cpu", batch_size, seq_len, device), batch_size, seq_len)
    state.warm_up()
    state.step()
    manager, batch = state.manager, state.first
    args = (batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
    staging = manager._staging_np

    def write():
        if not manager._core.pack_flash_attn_metadata(*args, staging)[0]:
            raise RuntimeError("the staging buffer is too small for this point")

    metadata = manager.pack_flash_attn_metadata(batch)
    nbytes = manager._metadata.views(len(batch.req_ids), metadata.block_tables.shape[1],
                                     metadata.slot_mapping.numel())[-1].numel()
    source, target = manager._staging.bytes[:nbytes], manager._metadata.bytes[:nbytes]
    copy = lambda: target.copy_(source, non_blocking=True)  # noqa: E731
    result = {"copied_bytes": nbytes,
              "write_us": median_us(write, nothing, HOST_ONLY, iterations),
              "whole_pack_us": median_us(lambda: manager.pack_flash_attn_metadata(batch), nothing, device,
                                         iterations)}
    if device.type == "cuda":
        result["write_copy_sync_us"] = median_us(lambda: (write(), copy()), nothing, device, iterations)
        result["copy_sync_us"] = median_us(copy, nothing, device, iterations)
        result["sync_us"] = median_us(nothing, nothing, device, iterations)
    return result


def child_costs(batch_size: int, seq_len: int) -> dict:
    """Runs in a forked child: seconds of each phase of a timing child's start."""
    costs = {}
    start = time.perf_counter()
    device = default_device()
    if device.type == "cuda":
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    costs["cuda_init_s"] = time.perf_counter() - start
    for backend in ("cpu", "gpu"):
        for label in ("first", "second"):
            start = time.perf_counter()
            decode_state(backend, batch_size, seq_len, device)
            costs[f"{backend}_state_{label}_s"] = time.perf_counter() - start
    return costs


def forked_child_costs(batch_size: int, seq_len: int, children: int) -> dict:
    if torch.cuda.is_initialized():
        raise RuntimeError("this process initialised CUDA: its children cannot")
    runs = []
    for _ in range(children):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report through the pipe, leave at once
            os.close(read)
            try:
                payload = json.dumps(child_costs(batch_size, seq_len))
            except BaseException as error:  # reported to the parent, never raised here
                payload = json.dumps({"error": repr(error)})
            os.write(write, payload.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            runs.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        raise RuntimeError(f"a child failed: {errors[0]}")
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--children", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    grid = [(b, s) for b in args.batch_sizes for s in args.seq_lens]
    # Children first: this process must not have initialised CUDA when it forks them.
    report = {"children": {f"{b}x{s}": forked_child_costs(b, s, args.children) for b, s in grid}}
    report["device"] = str(default_device()) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
    report["cpu_pack"] = {f"{b}x{s}": cpu_pack_phases(b, s, args.iterations) for b, s in grid}
    print(report["device"])
    for name in ("children", "cpu_pack"):
        for point, values in report[name].items():
            shown = "  ".join(f"{k} {v * 1e3:.1f} ms" if k.endswith("_s") else f"{k} {v:.1f}"
                              for k, v in values.items())
            print(f"{name} B x L = {point}: {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

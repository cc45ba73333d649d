"""Where the time goes: the phases of the `cpu` backend's pack, and of an asv timing child.

1. The `cpu` pack at each grid point, phase by phase (median us): the C++ core
   writing every array into the pinned staging buffer (host only); that write
   followed by the one copy to the device and a synchronise; the copy and the
   synchronise alone, of a buffer already written; the whole pack with its
   synchronise, as the benchmarks time it.
2. An asv timing child, as the fork server makes it: a process that imported
   torch, the package and the benchmark suite's shared module but not CUDA
   forks; the child times the fork itself, CUDA's initialisation (driver and
   torch, then the context with the first allocation), the build of a warmed-up
   decode state of each backend (Triton kernels loaded, graphs captured), a
   second state of the same point, and its exit (the parent's wait). Medians
   over `--children` children, first as the server was before the suite warmed
   Triton's caches (emptied again here, since importing benchmarks.common fills
   them), then after `benchmarks.common.warm_triton_caches()`, whose own
   duration is reported too.

3. A host write followed by the copy, at the pack's sizes: the host writes a
   pinned buffer (with plain stores, as the C++ core does, or with streaming
   stores that bypass the CPU caches, a compiled helper), then the one copy and
   the synchronise; beside the host write alone and the copy of a buffer left
   alone. Whether a copy right after the host wrote its source pays for the
   written lines still sitting in the CPU caches.

    python scripts/phase_probe.py --batch-sizes 256 --seq-lens 128 1024 --json phases.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: benchmarks/
from benchmarks import common  # noqa: E402  (what asv's fork server imports; it warms Triton's caches)
from disagmoe.workloads import DecodeState, decode_state, default_device, make_manager  # noqa: E402
from perf_probe import median_us  # noqa: E402  (this folder's probe: each call ended by a synchronise)

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


STORES_C = r"""
#include <emmintrin.h>
#include <stddef.h>
#include <string.h>
void plain_write(void* dst, const void* src, size_t n) { memcpy(dst, src, n); }
/* dst and src 16-byte aligned, n a multiple of 16 */
void streaming_write(void* dst, const void* src, size_t n) {
  __m128i* d = (__m128i*)dst;
  const __m128i* s = (const __m128i*)src;
  for (size_t i = 0; i < n / 16; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
  _mm_sfence();
}
"""


def store_helpers(folder: str):
    """The two writers of STORES_C, compiled with the system's C compiler (None without one)."""
    import ctypes
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source, library = os.path.join(folder, "stores.c"), os.path.join(folder, "stores.so")
    with open(source, "w") as f:
        f.write(STORES_C)
    subprocess.run([compiler, "-O2", "-msse2", "-shared", "-fPIC", "-o", library, source], check=True)
    lib = ctypes.CDLL(library)
    for fn in (lib.plain_write, lib.streaming_write):
        fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        fn.restype = None
    return lib


HOST_WRITE_BYTES = (16 * 1024, 64 * 1024, 72_712, 256 * 1024)  # 72,712: the pack at B = 256, L = 1024


def host_write_copies(iterations: int) -> dict:
    """Median us of each way of filling a pinned buffer and copying it to the device."""
    import tempfile

    device = default_device()
    nothing = lambda: None  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        lib = store_helpers(folder)
        if lib is None:
            return {"skipped": "no C compiler"}
        result = {}
        for nbytes in HOST_WRITE_BYTES:
            padded = -(-nbytes // 16) * 16
            source = torch.arange(padded, dtype=torch.uint8)  # torch aligns its storage to 64 bytes
            host = torch.empty(padded, dtype=torch.uint8, pin_memory=device.type == "cuda")
            target = torch.empty(padded, dtype=torch.uint8, device=device)
            src, dst = source.data_ptr(), host.data_ptr()
            writes = {"plain": lambda: lib.plain_write(dst, src, padded),
                      "streaming": lambda: lib.streaming_write(dst, src, padded)}
            copy = lambda: target.copy_(host, non_blocking=True)  # noqa: E731
            point = {"copy_sync_us": median_us(copy, nothing, device, iterations)}
            for name, write in writes.items():
                point[f"{name}_write_us"] = median_us(write, nothing, HOST_ONLY, iterations)
                point[f"{name}_write_copy_sync_us"] = median_us(lambda: (write(), copy()), nothing, device,
                                                                iterations)
                if not torch.equal(target.cpu(), source):
                    raise RuntimeError(f"the {name} write did not reach the device intact")
            result[f"{nbytes} bytes"] = point
    return result


def child_costs(batch_size: int, seq_len: int, forked_at: float) -> dict:
    """Runs in a forked child: seconds of each phase of a timing child's start."""
    costs = {"fork_s": time.perf_counter() - forked_at}
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.init()
    costs["cuda_init_s"] = time.perf_counter() - start
    start = time.perf_counter()
    device = default_device()
    if cuda:
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    costs["context_s"] = time.perf_counter() - start
    for backend in ("cpu", "gpu"):
        for label in ("first", "second"):
            start = time.perf_counter()
            decode_state(backend, batch_size, seq_len, device)
            costs[f"{backend}_state_{label}_s"] = time.perf_counter() - start
    costs["done_at"] = time.perf_counter()
    return costs


def forget_triton_key() -> bool:
    """Empties the cache that `common.warm_triton_caches` fills, so that children start as
    they did before the suite warmed it. False without Triton."""
    try:
        from triton.runtime.cache import triton_key
    except ImportError:
        return False
    triton_key.cache_clear()
    return True


def in_forked_child(measure, *args) -> dict:
    """`measure(*args, forked_at)` run in a child forked from this process (which must not
    have initialised CUDA, like asv's fork server); its dict comes back through a pipe,
    with "exit_s" (from the child's "done_at", if it set one, to the parent's wait) and
    "whole_child_s" added."""
    if torch.cuda.is_initialized():
        raise RuntimeError("this process initialised CUDA: its children cannot")
    read, write = os.pipe()
    forked_at = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in parent and child
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, leave at once
        os.close(read)
        try:
            payload = json.dumps(measure(*args, forked_at))
        except BaseException as error:  # reported to the parent, never raised here
            payload = json.dumps({"error": repr(error)})
        os.write(write, payload.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        run = json.loads(pipe.read())
    os.waitpid(pid, 0)
    reaped_at = time.perf_counter()
    if "error" in run:
        raise RuntimeError(f"a child failed: {run['error']}")
    if "done_at" in run:
        run["exit_s"] = reaped_at - run.pop("done_at")
    run["whole_child_s"] = reaped_at - forked_at
    return run


def forked_child_costs(batch_size: int, seq_len: int, children: int) -> dict:
    runs = [in_forked_child(child_costs, batch_size, seq_len) for _ in range(children)]
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
    report = {"triton_key_cleared": forget_triton_key()}  # importing benchmarks.common computed it
    report["children"] = {f"B x L = {b}x{s}": forked_child_costs(b, s, args.children) for b, s in grid}
    start = time.perf_counter()
    report["triton_warmed"] = common.warm_triton_caches()
    report["warm_triton_caches_s"] = time.perf_counter() - start
    report["children_warmed"] = {f"B x L = {b}x{s}": forked_child_costs(b, s, args.children) for b, s in grid}
    report["device"] = str(default_device()) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
    report["cpu_pack"] = {f"B x L = {b}x{s}": cpu_pack_phases(b, s, args.iterations) for b, s in grid}
    report["host_write_copy"] = host_write_copies(args.iterations)
    print(report["device"])
    print(f"warm_triton_caches: {report['triton_warmed']}, {report['warm_triton_caches_s'] * 1e3:.1f} ms in the parent")
    for name in ("children", "children_warmed", "cpu_pack", "host_write_copy"):
        for point, values in report[name].items():
            if isinstance(values, str):
                print(f"{name}: {point}: {values}")
                continue
            shown = "  ".join(f"{k} {v * 1e3:.1f} ms" if k.endswith("_s") else f"{k} {v:.1f}"
                              for k, v in values.items())
            print(f"{name} {point}: {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

"""The floors under a step on this card, measured in the same process as the step itself:
what no block manager can beat.

- bare synchronise: `torch.cuda.synchronize()` with nothing queued;
- one tiny kernel: one launch of a one-element add, synced; and its host cost when
  launches go back to back (pipelined);
- one CUDA graph of that kernel, replayed back to back: the host cost of one launch of a
  device-table design's step (its kernels replay from one graph);
- the metadata's views: the host cost of the tensors every pack returns (one split, one
  strided view, one slice of persistent buffers: `disagmoe.metadata.metadata_views`);
- pinned copies: a host-to-device copy of n bytes from pinned memory, synced and back
  to back (the `cpu` design copies its metadata this way every pack: at long contexts
  its floor is these bytes).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch

from disagmoe.metadata import metadata_views

BACK_TO_BACK = 48


def _median_us(run: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def measure_floors(device: torch.device, copy_bytes: Sequence[int], repeats: int = 50) -> dict:
    """{"bare_synchronize_us", "tiny_kernel_synced_us", "tiny_kernel_pipelined_us",
    "copies": [{"bytes", "synced_us", "pipelined_us"}]}; empty where there is no CUDA."""
    if device.type != "cuda":
        return {}
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    one = torch.zeros(1, device=device)
    out: dict[str, Any] = {"bare_synchronize_us": _median_us(sync, repeats * 4)}

    def kernel_synced() -> None:
        one.add_(1)
        sync()

    def kernels_back_to_back() -> None:
        for _ in range(BACK_TO_BACK):
            one.add_(1)
        sync()

    kernel_synced()
    out["tiny_kernel_synced_us"] = _median_us(kernel_synced, repeats * 4)
    out["tiny_kernel_pipelined_us"] = _median_us(kernels_back_to_back, repeats) / BACK_TO_BACK
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one.add_(1)

    def replays_back_to_back() -> None:
        for _ in range(BACK_TO_BACK):
            graph.replay()
        sync()

    replays_back_to_back()
    out["graph_replay_pipelined_us"] = _median_us(replays_back_to_back, repeats) / BACK_TO_BACK
    int32 = torch.zeros(1 << 20, dtype=torch.int32, device=device)
    int64 = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    out["metadata_views_us"] = _median_us(lambda: metadata_views(int32, int64, 256, 64, 256), repeats * 4)
    out["copies"] = []
    for nbytes in sorted(set(copy_bytes)):
        src = torch.ones(nbytes, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(nbytes, dtype=torch.uint8, device=device)

        def copy_synced() -> None:
            dst.copy_(src, non_blocking=True)
            sync()

        def copies_back_to_back() -> None:
            for _ in range(BACK_TO_BACK):
                dst.copy_(src, non_blocking=True)
            sync()

        copy_synced()
        count = max(5, min(repeats, int(2e9 // max(nbytes * BACK_TO_BACK, 1))))
        out["copies"].append(
            {
                "bytes": nbytes,
                "synced_us": _median_us(copy_synced, repeats),
                "pipelined_us": _median_us(copies_back_to_back, count) / BACK_TO_BACK,
            }
        )
    return out

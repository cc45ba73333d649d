"""CUDA graphs of a device-table backend's launches, captured on first use and replayed.

A launch is a fixed sequence (copy of a staged buffer, then up to three kernels) whose
every per-step scalar the kernels read from the staged header, so one graph serves
every batch up to its grid size. Graphs are keyed by (kernels present, grid bucket,
staging buffer): grids are powers of two, so a batch size, width or token count never
captures a new graph, only a batch past every bucket seen so far does. Capture writes
nothing; the first launch of a key runs eagerly, then its graph is captured.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import torch


def bucket(n: int) -> int:
    """The grid size that serves n entries: the next power of two (0 for none)."""
    return 1 << max(0, n - 1).bit_length() if n else 0


class GraphCache:
    """Graphs by key; `clear()` when a buffer the graphs address is replaced."""

    def __init__(self) -> None:
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._pool: Any = None  # the graphs' shared memory pool, made at the first capture

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()

    def launch(self, key: Hashable, run: Callable[[], None]) -> None:
        """Replays the graph of `key`, or runs `run` eagerly and captures it for next time."""
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        run()
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Relaxed: a garbage collection (or another thread) may free CUDA objects, such
        # as a dead manager's graphs, while this capture is under way; the default mode
        # would then invalidate the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="relaxed"):
            run()
        self._graphs[key] = graph

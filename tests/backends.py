"""The backend configurations every test runs on, and how to build a manager of one."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch

from disagmoe import BlockManager, CacheConfig, CPUBlockManager, GPUBlockManager, HybridBlockManager, ModelConfig

HAS_CUDA = torch.cuda.is_available()
LAYER_IDS = (3, 5, 7)  # not starting at 0, so that "first layer" means layer_ids[0]


@dataclass(frozen=True)
class Config:
    """One configuration a test runs a manager in: a design's class, its device and its
    keyword arguments, named by `id`."""

    id: str
    cls: type[BlockManager]
    device: str
    kwargs: dict = field(default_factory=dict)

    def make(
        self,
        *,
        block_size: int | None = 4,
        num_blocks: int = 32,
        max_running_reqs: int = 8,
        max_seq_len: int = 64,
        layer_ids: tuple[int, ...] = LAYER_IDS,
    ) -> BlockManager:
        if self.device == "cuda":
            # Free dead managers now: a CUDA graph destroyed by a collection that happens to
            # run while another manager captures its first graph breaks that capture
            # (test_gpu_sync_free.py::test_graph_capture_survives_garbage_collection).
            gc.collect()
        model_config = ModelConfig(layer_ids=layer_ids, max_seq_len=max_seq_len, max_batch_size_attn=max_running_reqs)
        cache_config = CacheConfig(block_size=block_size, num_gpu_blocks=num_blocks)
        return self.cls(model_config, cache_config, max_running_reqs, device=self.device, **self.kwargs)


CPU_DEVICE_CONFIGS = [
    Config("cpu", CPUBlockManager, "cpu"),
    Config("gpu-torch", GPUBlockManager, "cpu", {"kernels": "torch"}),
    Config("hybrid-torch", HybridBlockManager, "cpu", {"kernels": "torch"}),
]
CUDA_CONFIGS = [
    Config("cpu-cuda", CPUBlockManager, "cuda"),
    Config("gpu-triton-graphs", GPUBlockManager, "cuda", {"kernels": "triton", "cuda_graphs": True}),
    Config("gpu-triton", GPUBlockManager, "cuda", {"kernels": "triton", "cuda_graphs": False}),
    Config("gpu-torch-cuda", GPUBlockManager, "cuda", {"kernels": "torch"}),
    Config("hybrid-triton-graphs", HybridBlockManager, "cuda", {"kernels": "triton", "cuda_graphs": True}),
    Config("hybrid-triton", HybridBlockManager, "cuda", {"kernels": "triton", "cuda_graphs": False}),
    Config("hybrid-torch-cuda", HybridBlockManager, "cuda", {"kernels": "torch"}),
]
CONFIGS = CPU_DEVICE_CONFIGS + (CUDA_CONFIGS if HAS_CUDA else [])
BY_ID = {b.id: b for b in CPU_DEVICE_CONFIGS + CUDA_CONFIGS}


def config_pairs() -> list[tuple[Config, Config]]:
    """(cpu backend, another backend) on the same device, for cross-backend comparisons."""
    pairs = [(BY_ID["cpu"], BY_ID["gpu-torch"]), (BY_ID["cpu"], BY_ID["hybrid-torch"])]
    if HAS_CUDA:
        pairs += [(BY_ID["cpu-cuda"], b) for b in CUDA_CONFIGS if b.cls is not CPUBlockManager]
    return pairs

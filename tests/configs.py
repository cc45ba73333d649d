"""The configurations every test runs on, derived from the registry of designs, and how to
build a manager of one.

A design registered from a module named in DISAGMOE_TEST_DESIGNS (spaces between names,
imported before the configurations are derived) gets its configurations too: that is
how `test_registry.py` runs the contract tests on a throw-away design.
"""

from __future__ import annotations

import gc
import importlib
import os
from dataclasses import dataclass, field

import torch

from disagmoe import DESIGNS, BlockManager, CacheConfig, ModelConfig

for _module in os.environ.get("DISAGMOE_TEST_DESIGNS", "").split():
    importlib.import_module(_module)

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


def _cpu_device_configs(name: str) -> list[Config]:
    """A design on torch's CPU device: as it is, or with its torch kernels."""
    d = DESIGNS[name]
    if not d.kernels:
        return [Config(name, d.cls, "cpu")]
    return [Config(f"{name}-torch", d.cls, "cpu", {"kernels": "torch"})] if "torch" in d.kernels else []


def _cuda_configs(name: str) -> list[Config]:
    """A design on CUDA: as it is, or with each of its kernels (Triton with and without
    CUDA graphs where it takes them)."""
    d = DESIGNS[name]
    if not d.kernels:
        return [Config(f"{name}-cuda", d.cls, "cuda")]
    configs = []
    if "triton" in d.kernels:
        if d.cuda_graphs:
            configs.append(Config(f"{name}-triton-graphs", d.cls, "cuda", {"kernels": "triton", "cuda_graphs": True}))
            configs.append(Config(f"{name}-triton", d.cls, "cuda", {"kernels": "triton", "cuda_graphs": False}))
        else:
            configs.append(Config(f"{name}-triton", d.cls, "cuda", {"kernels": "triton"}))
    if "torch" in d.kernels:
        configs.append(Config(f"{name}-torch-cuda", d.cls, "cuda", {"kernels": "torch"}))
    return configs


# e.g. cpu, gpu-torch, hybrid-torch; on CUDA cpu-cuda, gpu-triton-graphs, gpu-triton,
# gpu-torch-cuda, hybrid-triton-graphs, hybrid-triton, hybrid-torch-cuda
CPU_DEVICE_CONFIGS = [c for name in DESIGNS for c in _cpu_device_configs(name)]
CUDA_CONFIGS = [c for name in DESIGNS for c in _cuda_configs(name)]
CONFIGS = CPU_DEVICE_CONFIGS + (CUDA_CONFIGS if HAS_CUDA else [])
BY_ID = {b.id: b for b in CPU_DEVICE_CONFIGS + CUDA_CONFIGS}


def config_pairs() -> list[tuple[Config, Config]]:
    """(the cpu design, another configuration) on the same device, for cross-design
    comparisons."""
    cpu = DESIGNS["cpu"].cls
    pairs = [(BY_ID["cpu"], c) for c in CPU_DEVICE_CONFIGS if c.cls is not cpu]
    if HAS_CUDA:
        pairs += [(BY_ID["cpu-cuda"], c) for c in CUDA_CONFIGS if c.cls is not cpu]
    return pairs

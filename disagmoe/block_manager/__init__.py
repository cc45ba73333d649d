"""Block managers: the contract (`base`) and its three designs (`cpu`, `gpu`, `hybrid`)."""

from disagmoe.block_manager.base import BlockManager, MemoryFootprint
from disagmoe.block_manager.cpu import CPUBlockManager
from disagmoe.block_manager.gpu import GPUBlockManager
from disagmoe.block_manager.hybrid import HybridBlockManager

BACKENDS: dict[str, type[BlockManager]] = {"cpu": CPUBlockManager, "gpu": GPUBlockManager, "hybrid": HybridBlockManager}

__all__ = [
    "BACKENDS",
    "BlockManager",
    "CPUBlockManager",
    "GPUBlockManager",
    "HybridBlockManager",
    "MemoryFootprint",
]

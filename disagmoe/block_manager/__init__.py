"""Block managers: the contract (`base`), its three designs (`cpu`, `gpu`, `hybrid`) and the
registry of designs (`registry`) that every list of designs reads."""

from disagmoe.block_manager.base import BlockManager, MemoryFootprint, PrefixCacheStats
from disagmoe.block_manager.cpu import CPUBlockManager
from disagmoe.block_manager.gpu import GPUBlockManager
from disagmoe.block_manager.hybrid import HybridBlockManager
from disagmoe.block_manager.registry import BACKENDS, DESIGNS, Design, design, register

__all__ = [
    "BACKENDS",
    "DESIGNS",
    "BlockManager",
    "CPUBlockManager",
    "Design",
    "GPUBlockManager",
    "HybridBlockManager",
    "MemoryFootprint",
    "PrefixCacheStats",
    "design",
    "register",
]

"""Block managers: the contract (`base`) and its three designs (`cpu`, `gpu`, `hybrid`)."""

from disagmoe.block_manager.base import BlockManager, MemoryFootprint
from disagmoe.block_manager.cpu import CPUBlockManager
from disagmoe.block_manager.gpu import GPUBlockManager
from disagmoe.block_manager.hybrid import HybridBlockManager
from disagmoe.block_manager.mem_pool import PagedTokenToKVPoolAllocator, ReqToTokenPool, TokenToKVPoolAllocator

BACKENDS: dict[str, type[BlockManager]] = {"cpu": CPUBlockManager, "gpu": GPUBlockManager, "hybrid": HybridBlockManager}

__all__ = [
    "BACKENDS",
    "BlockManager",
    "CPUBlockManager",
    "GPUBlockManager",
    "HybridBlockManager",
    "MemoryFootprint",
    "PagedTokenToKVPoolAllocator",
    "ReqToTokenPool",
    "TokenToKVPoolAllocator",
]

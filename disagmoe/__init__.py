"""KV-cache block management for the attention workers of disaggregated MoE serving.

Three designs implement one contract (`BlockManager`): `CPUBlockManager` keeps
block tables in a C++ core on the host and copies metadata to the device;
`GPUBlockManager` keeps them in device-resident pools and builds the metadata
on the device; `HybridBlockManager` allocates on the host (the C++ core) and
keeps the tables on the device, updated each step from the blocks it adds.
"""

from disagmoe.batch import BatchMetadata
from disagmoe.block_manager import (
    BACKENDS,
    DESIGNS,
    BlockManager,
    CPUBlockManager,
    Design,
    GPUBlockManager,
    HybridBlockManager,
    MemoryFootprint,
    PrefixCacheStats,
    register,
)
from disagmoe.config import CacheConfig, ModelConfig
from disagmoe.errors import KVCacheExhausted
from disagmoe.metadata import PAD_BLOCK_ID, FlashAttentionMetadata

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "DESIGNS",
    "PAD_BLOCK_ID",
    "BatchMetadata",
    "BlockManager",
    "CPUBlockManager",
    "CacheConfig",
    "Design",
    "FlashAttentionMetadata",
    "GPUBlockManager",
    "HybridBlockManager",
    "KVCacheExhausted",
    "MemoryFootprint",
    "PrefixCacheStats",
    "ModelConfig",
    "register",
]

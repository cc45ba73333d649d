"""A throw-away design for test_registry.py, written as a new design that reuses an existing
step is written: its own file and one registry line. It is the hybrid step with another
default block size, so that the contract tests exercise something of its own."""

from __future__ import annotations

from disagmoe import Design, HybridBlockManager, register


class ThrowawayBlockManager(HybridBlockManager):
    """The hybrid design's step at a default block size of 8."""

    default_block_size = 8


register(Design("throwaway", ThrowawayBlockManager, ("triton", "torch"), cuda_graphs=True))

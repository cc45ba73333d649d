"""The registry of designs: every list of designs reads it (the package's `BACKENDS`, the
lab's variants and seed table, the tests' configurations).

A design is a `BlockManager` subclass in its own file and one `register` line, here for
the package's three or in the design's own module for one kept elsewhere:

    register(Design("mine", MineBlockManager, kernels=("triton", "torch"), cuda_graphs=True))

Registration order is the order designs are listed in everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from disagmoe.block_manager.base import BlockManager
from disagmoe.block_manager.cpu import CPUBlockManager
from disagmoe.block_manager.gpu import GPUBlockManager
from disagmoe.block_manager.hybrid import HybridBlockManager


@dataclass(frozen=True)
class Design:
    """A design of the contract.

    `name`: lower-case letters and digits, the word every list, command line and variant
    (`<name>-bs<block size>`) uses. `cls`: its `BlockManager` subclass. `kernels`: the values
    its `kernels=` argument takes besides "auto" (the torch kernels run on any device, the
    Triton ones on CUDA only), empty for a design without kernels. `cuda_graphs`: whether it
    takes `cuda_graphs=`. `benchmark_block_sizes`: the block sizes the serving benchmarks
    compare it at (empty: its default block size)."""

    name: str
    cls: type[BlockManager]
    kernels: tuple[str, ...] = ()
    cuda_graphs: bool = False
    benchmark_block_sizes: tuple[int, ...] = ()

    @property
    def default_block_size(self) -> int:
        """The block size of `CacheConfig(block_size=None)`."""
        return self.cls.default_block_size

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """The block sizes the serving benchmarks compare this design at."""
        return self.benchmark_block_sizes or (self.default_block_size,)


DESIGNS: dict[str, Design] = {}
"""Every registered design by name, in registration order."""

BACKENDS: dict[str, type[BlockManager]] = {}
"""Name -> class of every registered design (the package's public view of `DESIGNS`)."""


def register(design: Design) -> Design:
    """Adds `design` to the registry and returns it; ValueError / TypeError naming the bad
    field if its name is taken or malformed or its class is no `BlockManager`, and then the
    registry is unchanged."""
    if not isinstance(design, Design):
        raise TypeError(f"register: design={design!r:.80} is not a Design")
    if not isinstance(design.name, str) or not re.fullmatch(r"[a-z][a-z0-9]*", design.name):
        raise ValueError(f"register: name={design.name!r:.80} is not lower-case letters and digits")
    if design.name in DESIGNS:
        raise ValueError(f"register: name={design.name!r} is taken by {DESIGNS[design.name].cls.__name__}")
    if not (isinstance(design.cls, type) and issubclass(design.cls, BlockManager)):
        raise TypeError(f"register: cls={design.cls!r:.80} of design {design.name!r} is not a BlockManager subclass")
    for kernel in design.kernels:
        if kernel not in ("triton", "torch"):
            raise ValueError(f"register: kernels={design.kernels!r} of design {design.name!r}: {kernel!r} is unknown")
    for size in design.benchmark_block_sizes:
        if type(size) is not int or size < 1:
            raise ValueError(f"register: benchmark_block_sizes={design.benchmark_block_sizes!r} holds {size!r}")
    DESIGNS[design.name] = design
    BACKENDS[design.name] = design.cls
    return design


def unregister(name: str) -> None:
    """Removes the design `name` (a throw-away design's test cleans up with it); KeyError
    naming it if none is registered."""
    if name not in DESIGNS:
        raise KeyError(f"unregister: no design named {name!r}; registered: {list(DESIGNS)}")
    del DESIGNS[name]
    del BACKENDS[name]


def design(name: object) -> Design:
    """The registered design `name`; ValueError naming it and the registered names otherwise."""
    if not isinstance(name, str) or name not in DESIGNS:
        raise ValueError(f"design={name!r:.80} is not one of the designs {list(DESIGNS)}")
    return DESIGNS[name]


register(Design("cpu", CPUBlockManager))
register(Design("gpu", GPUBlockManager, ("triton", "torch"), cuda_graphs=True, benchmark_block_sizes=(1, 16)))
register(Design("hybrid", HybridBlockManager, ("triton", "torch"), cuda_graphs=True))

"""Measurement probes behind docs/performance.md, run from the repository root:

    python3 -m scripts.probes.perf_probe --help    # floors, and every case of every variant
    python3 -m scripts.probes.pack_sweep --help    # the pack kernel's launch shapes (CUDA)

Each prints what it measured and keeps it with `--json FILE`. They build managers through
the package's public API: `disagmoe_bench.seed.make_manager` sizes one for a grid point,
and `rebuilt` makes another of the same configuration with other constructor keywords.
"""

from __future__ import annotations

from disagmoe import BlockManager


def rebuilt(manager: BlockManager, **keywords) -> BlockManager:
    """A new, empty manager of `manager`'s class, configuration and device, built with
    `keywords` added to the constructor's arguments (e.g. `kernels="torch"`)."""
    return type(manager)(
        manager.model_config, manager.cache_config, manager.max_running_reqs, device=manager.device, **keywords
    )

"""Speedup of the `gpu` and `hybrid` designs over the `cpu` design, per operation and grid point.

One process times the three designs side by side, interleaved, for every grid
point (see `common.measure_inverse_speedups`): one decode step of B requests
holding `seq_len` tokens, `update_block_table` at the first layer then
`pack_flash_attn_metadata`, each call synchronised.

asv counts a higher value as worse and has no switch to say otherwise, so the
tracked value is the inverse of the speedup: GPU time / CPU time, lower is better (the
CPU/GPU speedup `python -m disagmoe_bench` prints is 1 / value); `HybridInverseSpeedup`
tracks hybrid time / CPU time, measured in the same turns (one `setup_cache` for both). A drop in speedup is
a rise here, which `asv continuous` and `asv publish` report as a regression. Each
value is the median of 9 rounds of 20 steps, the rounds being asv's samples.
"""

from .common import BATCH_SIZES, SEQ_LENS, measure_inverse_speedups


def setup_cache():
    measured = measure_inverse_speedups()
    print(f"bench_speedup: measured on {measured['device']}")
    return measured


setup_cache.timeout = 600


def _ratios(cache, design, op, batch_size, seq_len):
    # A dict with samples: asv stores their median with confidence intervals.
    return {"samples": cache["ratios"][(batch_size, seq_len)][(design, op)], "number": 1}


def _speedup_class(name: str, design: str, label: str) -> type:
    """The class tracking `design`'s time over cpu's for the update and the pack."""

    def track_update_block_table(self, cache, batch_size, seq_len):
        return _ratios(cache, design, "update_block_table", batch_size, seq_len)

    track_update_block_table.pretty_name = (
        f"update: {label} time / CPU time, lower is better (1 / the CPU/{label} "
        "speedup; update_block_table, decode, first layer)"
    )

    def track_pack_flash_attn_metadata(self, cache, batch_size, seq_len):
        return _ratios(cache, design, "pack_flash_attn_metadata", batch_size, seq_len)

    track_pack_flash_attn_metadata.pretty_name = (
        f"pack: {label} time / CPU time, lower is better (1 / the CPU/{label} speedup; "
        "pack_flash_attn_metadata, decode)"
    )
    return type(
        name,
        (),
        {
            "params": (BATCH_SIZES, SEQ_LENS),
            "param_names": ["batch_size", "seq_len"],
            "unit": f"{label} time / CPU time, lower is better",
            "processes": 1,
            "timeout": 600,
            "track_update_block_table": track_update_block_table,
            "track_pack_flash_attn_metadata": track_pack_flash_attn_metadata,
        },
    )


InverseSpeedup = _speedup_class("InverseSpeedup", "gpu", "GPU")
HybridInverseSpeedup = _speedup_class("HybridInverseSpeedup", "hybrid", "hybrid")


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03, so that moving shared code does not start a history
# over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
InverseSpeedup.track_pack_flash_attn_metadata.version = (
    "b8fba31d802b03e4fd528e16ae579291d300a3f1e8565b5cd13e5c221e11f67b"
)
InverseSpeedup.track_update_block_table.version = "d2d718821b9a083d0ac9d61552e7c9657e8855a8ffad2995fc6a3e6f43f4496a"
HybridInverseSpeedup.track_pack_flash_attn_metadata.version = (
    "3085cda822edae7ced0d75c9a930a720a1f624cc9bb340fd7704563ea7463f4a"
)
HybridInverseSpeedup.track_update_block_table.version = (
    "50efad7534d13f1138b0b04e63ee8016d9cdc81ac6fbaeec63363ec57cd6aa91"
)

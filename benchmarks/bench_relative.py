"""Each operation's time relative to a fixed reference workload: the suite's verdicts.

On a shared or virtual machine the same call runs 10-60% slower in one process than in
the next, and for seconds at a time (docs/benchmarking.md, "Why the verdicts are
ratios"), so absolute times of two commits measured minutes apart differ by more than a
regression worth catching. Timed in turn with a fixed workload in the same process
(`common.ReferenceWork`: host work of a step's size and, on CUDA, a small copy to the
device and a synchronise), the machine's speed of the moment divides out: the tracked
value is the operation's time over the reference's (lower is better), and a
commit that slows one operation of one design by 20% raises that value by 20%. The
reference belongs to the suite, so every commit is measured against the same work.

One process measures the whole grid (`common.measure_relative_times`): per grid point
the three designs and the reference take turns for 9 rounds of 20 decode steps, the
first-layer `update_block_table` then `pack_flash_attn_metadata`, each call synchronised;
each round gives one ratio of medians, the rounds being asv's samples.

For verdicts compare these (and `InverseSpeedup`, and the serving modules' `RelativeStep`:
verdict_set.py), with scripts/verdicts.sh (docs/benchmarking.md, "The verdict set").
"""

from .common import BATCH_SIZES, DESIGNS, SEQ_LENS, measure_relative_times


class RelativeTime:
    params = (DESIGNS, BATCH_SIZES, SEQ_LENS)
    param_names = ["backend", "batch_size", "seq_len"]
    unit = "time / reference time, lower is better"
    processes = 1
    timeout = 600

    def setup_cache(self):
        measured = measure_relative_times()
        print(f"RelativeTime: measured on {measured['device']}")
        return measured

    def _ratios(self, cache, backend, op, batch_size, seq_len):
        return {"samples": cache["ratios"][(batch_size, seq_len)][(backend, op)], "number": 1}

    def track_update_block_table(self, cache, backend, batch_size, seq_len):
        return self._ratios(cache, backend, "update_block_table", batch_size, seq_len)

    track_update_block_table.pretty_name = (
        "update: time / reference time, lower is better (update_block_table, decode, first layer)"
    )

    def track_pack_flash_attn_metadata(self, cache, backend, batch_size, seq_len):
        return self._ratios(cache, backend, "pack_flash_attn_metadata", batch_size, seq_len)

    track_pack_flash_attn_metadata.pretty_name = (
        "pack: time / reference time, lower is better (pack_flash_attn_metadata, decode)"
    )


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03, so that moving shared code does not start a history
# over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
RelativeTime.track_pack_flash_attn_metadata.version = "b3662eeb7f77fca38e053b2d7c1d27b9250c5e2dfa6a415689221c90e4a8dd80"
RelativeTime.track_update_block_table.version = "419213b8d35b6181f531d10d0b25759520cd4a8183d4f630bbc444f75cccbaec"

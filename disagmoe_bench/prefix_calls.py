"""What a prefix-cache replay's matches and evictions cost a manager on the host.

`time_prefix_calls` plays a replay's window (`scheduler.TraceReplay` with a prefix cache)
once on a warmed-up manager, each step synchronised before the next (so that no step's
host time waits for an earlier one's device work), timing on the host:

- the step's `match_prefix` calls, together (each checked against the scheduler's model);
- its first-layer `update_block_table`: where the contract's allocation evicts, so a
  step's eviction is timed with the allocation it makes room for, not apart from it.

It reports the slowest step's matches, the step with the most blocks matched and its
matches' time, and the step that evicted the most blocks with its first-layer update's
time beside the window's median first-layer update. One pass, not windows: a figure of
the tail to read beside the timed windows' p99, not a verdict.
"""

from __future__ import annotations

import statistics
import time

from disagmoe.block_manager.base import BlockManager
from disagmoe_bench.timing import Replay


def time_prefix_calls(workload, manager: BlockManager) -> dict:
    """The window of `workload` once on `manager` (see the module docstring); returns
    {"match_max_us", "update_p50_us", "largest_match": {"step", "blocks", "match_us"},
    "largest_eviction": {"step", "blocks", "update_us"}} (host microseconds, steps counted
    from the window's first)."""
    replay = Replay(manager, workload)
    replay.start()
    clock = time.perf_counter
    match_us, update_us = [], []
    for k in range(workload.num_steps):
        step = workload.step_at(k)
        if step.release:
            manager.release_seqs(step.release)
        began = clock()
        for match in step.matches:
            match.run(manager)
        matched = clock()
        first, *later = step.layers
        manager.update_block_table(first)
        updated = clock()
        manager.pack_flash_attn_metadata(first)
        for batch in later:
            manager.update_block_table(batch)
            manager.pack_flash_attn_metadata(batch)
        manager.synchronize()
        match_us.append((matched - began) * 1e6)
        update_us.append((updated - matched) * 1e6)
    manager.reset_state()
    scheduled, bs = workload.scheduled, workload.config.block_size
    matched_blocks = [sum(m.cached_tokens for m in s.matches) // bs for s in scheduled]
    match_step = max(range(len(scheduled)), key=lambda k: (matched_blocks[k], match_us[k]))
    evict_step = max(range(len(scheduled)), key=lambda k: (scheduled[k].evicted_blocks, update_us[k]))
    return {
        "match_max_us": max(match_us),
        "update_p50_us": statistics.median(update_us),
        "largest_match": {"step": match_step, "blocks": matched_blocks[match_step], "match_us": match_us[match_step]},
        "largest_eviction": {
            "step": evict_step,
            "blocks": scheduled[evict_step].evicted_blocks,
            "update_us": update_us[evict_step],
        },
    }


def report(factory, variants, num_steps: int, device) -> dict:
    """A replayed point's prefix cache: the window's figures (`TraceReplay.prefix_stats`)
    and each variant's `time_prefix_calls`, on a manager of the scheduler's pool."""
    from disagmoe_bench.variants import make_manager

    workload = factory(num_steps)
    record = dict(workload.prefix_stats())
    record["variants"] = {
        v.name: time_prefix_calls(workload, make_manager(v, workload, num_steps, device)) for v in variants
    }
    return record


def report_lines(point: dict, record: dict) -> list[str]:
    """A replayed point's prefix cache, as lines to print."""
    label = " ".join(f"{k}={v}" for k, v in point.items())
    lines = [
        f"  {label}: {record['admissions']} admissions, hit rate {100 * record['hit_rate']:.1f}% of the "
        f"{record['prompt_tokens']} prompt tokens they prefill (bound {100 * record['bound']:.1f}%; the whole "
        f"trace's {100 * record['trace_bound']:.1f}%); the largest step matches {record['largest_match_blocks']} "
        f"blocks and evicts {record['largest_eviction_blocks']} ({record['evicted_blocks']} in all); evictable "
        f"{100 * record['evictable_mean']:.1f}% / {100 * record['evictable_peak']:.1f}% of the pool"
    ]
    for name, r in record["variants"].items():
        match, evict = r["largest_match"], r["largest_eviction"]
        lines.append(
            f"    {name:<14} match max {r['match_max_us']:.1f} us (largest, {match['blocks']} blocks: "
            f"{match['match_us']:.1f} us); update evicting {evict['blocks']}: {evict['update_us']:.1f} us "
            f"(median {r['update_p50_us']:.1f})"
        )
    return lines

"""What a serving run prints (`disagmoe_bench.cli`): a table per timing mode, the
scheduler's windows and the trace of a replay, attention in the loop, the prefix cache and,
on CUDA, the floors; each within the terminal's width (`disagmoe_bench.text`)."""

from __future__ import annotations

import dataclasses
import sys

import torch

from disagmoe_bench import attention, prefix_calls, text, traces
from disagmoe_bench.floors import measure_floors
from disagmoe_bench.scheduler import SchedulerConfig, TraceReplay, busiest_window
from disagmoe_bench.text import Progress, wrap
from disagmoe_bench.variants import BASELINE


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def speedup_text(x: float | None) -> str:
    """A speedup as every table prints it: three decimals, whatever its size."""
    return "-" if x is None else f"{x:.3f}"


def mode_header(mode: str, workload: dict, result: dict) -> str:
    layers = f"{workload['num_layers']} layer{'s' if workload['num_layers'] > 1 else ''} a step"
    if workload["workload"] == "decode":
        shape = f"decode, lengths {workload['lengths']}, {layers}"
    elif workload["workload"] == "replay":
        shape = (
            f"replay of {workload['source']} from step {workload['start']} (its busiest stretch), token "
            f"budget {workload['token_budget']}, pool {workload['num_blocks']} blocks, "
            f"{workload['step_seconds'] * 1e3:g} ms a step, rate x{workload['rate_scale']:g}, {layers}"
        )
    else:
        shape = (
            f"trace, chunks of {workload['chunk']} tokens, outputs up to {workload['max_output']}, "
            f"seed {workload['seed']}, {layers}"
        )
    how = {
        "synced": "each call until the device is done",
        "pipelined": f"windows of {result['steps_per_window']} steps back to back, one synchronise at the end",
        "busy": (
            f"each step followed by a {result['forward_us']:.0f} us stand-in forward; 'added' is the "
            "wall time beyond the forwards alone"
        ),
    }[mode]
    figure = "added" if mode == "busy" else "wall"
    return (
        f"\n{shape}; timing {mode}: {how}.\nus per step: {figure} and host are medians of "
        f"{result['windows']} windows; p50/p99/max are of every step's own host time; speedup = "
        f"{BASELINE.name}'s {result['primary'][:-3]} / the variant's (> 1: the variant is faster)"
    )


def print_table(mode: str, rows: list[tuple[dict, dict]]) -> None:
    """One line per grid point and variant, the columns as wide as their values; where that
    is wider than the terminal, each grid point is a heading over its variants' lines."""
    first = rows[0][1]
    print(wrap(mode_header(mode, first["workload"], {**first, "forward_us": first.get("forward_median_us", 0.0)})))
    keys = list(rows[0][0])
    numbers = ["added" if mode == "busy" else "wall", "host", "p50", "p99", "max", "speedup"]
    lines: list[tuple[dict, list[str]]] = []
    for point, result in rows:
        for name, r in result["variants"].items():
            steps = r.get("host_step_us", {})
            speedup = "" if name == BASELINE.name else speedup_text(result.get("speedup", {}).get(name)) + "x"
            figures = [r["median"][first["primary"]], r["median"]["host_us"], *(steps.get(k) for k in ("p50", "p99"))]
            lines.append((point, [name, *map(_num, figures), _num(steps.get("max")), speedup]))
    right = set(range(1, len(numbers) + 1))
    heads = [k.replace("_", " ").capitalize() for k in keys]
    lead: list[list[str]] = []
    for k, (point, _) in enumerate(lines):
        same = k > 0 and lines[k - 1][0] is point
        lead.append(["" if same else str(point[key]) for key in keys])
    wide = text.table(
        [*heads, "variant", *numbers],
        [cells + row for cells, (_, row) in zip(lead, lines)],
        {len(keys) + k for k in right},
    )
    if max(map(len, wide)) <= text.width():
        print("\n".join(wide), flush=True)
        return
    narrow = text.table(["variant", *numbers], [row for _, row in lines], right)
    print(narrow[0])
    for k, (point, _) in enumerate(lines):
        if not k or lines[k - 1][0] is not point:
            print(wrap(" ".join(f"{key}={point[key]}" for key in keys) + ":"))
        print(narrow[k + 1], flush=True)


def print_scheduler(run: dict) -> None:
    """What the scheduler made of each replayed window."""
    print(
        wrap(
            "\nScheduler, per replayed window: requests holding KV (mean / peak), waiting (mean / peak), "
            "KV pool in use (mean / peak), prefill and decode tokens a step (mean), preemptions, "
            "arrived / admitted / finished"
        )
    )
    for point, results in first_of_each(run):
        s = results[0]["workload"]["steps"]
        line = (
            f"  {point['trace']} running cap {point['running']}: {s['num_steps']} steps, {s['running_mean']:.1f} / "
            f"{s['running_peak']}, {s['waiting_mean']:.1f} / {s['waiting_peak']}, {100 * s['pool_mean']:.1f}% / "
            f"{100 * s['pool_peak']:.1f}%, {s['prefill_tokens_mean']:.0f} and {s['decode_tokens_mean']:.1f}, "
            f"{s['preemptions']}, {s['arrived']} / {s['admitted']} / {s['finished']}"
        )
        print(wrap(line, "  "))


def warn_rejected(requests: list, source: str, pool_blocks: int) -> None:
    """Warns on stderr when the pool can never hold some of the trace's requests: the
    scheduler leaves them out of the replay."""
    config = SchedulerConfig(num_blocks=pool_blocks)
    capacity = config.num_blocks * config.block_size
    rejected = sum(r.prompt_tokens + r.output_tokens - 1 > capacity for r in requests)
    if rejected:
        print(
            wrap(
                f"disagmoe-bench: warning: {rejected} of the {len(requests)} requests of {source} hold more than "
                f"the pool's {capacity} tokens at their end (--pool-blocks {pool_blocks}): never admitted, "
                "they are left out of the replay"
            ),
            file=sys.stderr,
        )


def idle_windows(grid: list, num_steps: int) -> list[str]:
    """The replayed grid points whose window runs no request at all (labels)."""
    idle = []
    for point, factory in grid:
        steps = factory(num_steps).stats()
        if not steps["prefill_tokens_mean"] and not steps["decode_tokens_mean"]:
            idle.append(" ".join(f"{k}={v}" for k, v in point.items()))
    return idle


def print_trace(requests: list, source: str, run: dict, prefix_cache: str = "off") -> None:
    """The whole trace: requests, and the prefix reuse its hashes would allow (shared by
    the managers with --prefix-cache on only)."""
    with_hashes = any(r.prefix_blocks for r in requests)
    try:
        reuse = traces.prefix_reuse(requests) if with_hashes else None
    except ValueError as err:  # hashes that do not cover their prompts: said, not fatal
        reuse, why = None, str(err)
    else:
        why = "" if with_hashes else "the trace has no prefix hashes"
    run["trace"] = {"source": source, "requests": len(requests), "prefix_reuse": reuse}
    shared = "blocks are shared here" if prefix_cache == "on" else "blocks are not shared here"
    tokens = next((r.prefix_block_tokens for r in requests if r.prefix_blocks), 0)
    said = (
        (
            f"{100 * reuse:.1f}% of its {tokens}-token prefix blocks repeat an earlier request's (what a prefix "
            f"cache could reuse; {shared})"
        )
        if reuse is not None
        else f"prefix reuse: {why}"
    )
    print(wrap(f"  {source}: {len(requests)} requests; {said}"))


def print_attention(run: dict, grid: list, num_steps: int, device: torch.device, model_layers: int) -> None:
    """Attention in the loop (`disagmoe_bench.attention`) at each replayed point, with its
    progress on stderr."""
    print(
        wrap(
            "\nAttention in the loop: FlexAttention over the metadata of the same steps; a step is the "
            f"bookkeeping once and {model_layers} layers of attention; share = bookkeeping / step"
        ),
        flush=True,
    )
    run["attention"] = []
    progress = Progress(len(grid) * num_steps * attention.passes(device))
    for (point, factory), (_, results) in zip(grid, first_of_each(run)):
        progress.label = "attention " + " ".join(f"{k}={v}" for k, v in point.items())
        record = attention.report(results, factory, num_steps, device, model_layers, on_step=progress.advance)
        run["attention"].append({"point": point, **record})
        lines = attention.report_lines(point, record)
        if record.get("pool_blocks_that_run_it"):
            lines.append(smaller_pool_changes(factory(num_steps), record["pool_blocks_that_run_it"]))
        progress.close()
        print(wrap("\n".join(line for line in lines if line), "  "), flush=True)


def smaller_pool_changes(replay: TraceReplay, pool_blocks: int) -> str:
    """What replaying with `--pool-blocks pool_blocks` would change in the replay's window (its
    busiest stretch at that pool): a warning line, or "" when the window runs alike."""
    config = dataclasses.replace(replay.config, num_blocks=pool_blocks)
    requests = replay.scheduler.requests
    now = replay.stats()
    if sum(r.prompt_tokens + r.output_tokens - 1 <= pool_blocks * config.block_size for r in requests) == 0:
        return f"    warning: --pool-blocks {pool_blocks} holds none of the trace's requests: nothing would run"
    start = busiest_window(requests, config, replay.num_steps)
    then = TraceReplay(requests, config, start, replay.num_steps, replay.source, replay.prefix_cache).stats()
    changes = [
        f"{then['running_mean']:.1f} requests running on average (now {now['running_mean']:.1f})",
        f"{then['waiting_mean']:.1f} waiting (now {now['waiting_mean']:.1f})",
        f"{then['preemptions']} preemptions (now {now['preemptions']})",
        f"{then['rejected']} of {len(requests)} requests never fit the pool (now {now['rejected']})",
    ]
    keys = ("running_mean", "waiting_mean", "preemptions", "rejected")
    changed = [text for key, text in zip(keys, changes) if round(then[key], 1) != round(now[key], 1)]
    if not changed:
        return ""
    return f"    warning: --pool-blocks {pool_blocks} changes the replay: {', '.join(changed)}"


def print_prefix(run: dict, grid: list, num_steps: int, device: torch.device, mode: str, variants: list) -> None:
    """The prefix cache at each replayed point (`disagmoe_bench.prefix_calls`)."""
    print(
        wrap(
            f"\nPrefix cache {mode}"
            + (" (every hash unique to its admission: the cost at a 0% hit rate)" if mode == "miss" else "")
            + ", per replayed window: hit rate = prompt tokens served from the cache / prompt tokens the "
            "window's admissions prefill; bound = the same from a cache that keeps every block of every earlier "
            "admission; host us of one pass, each step synchronised: the slowest step's match_prefix calls, "
            "those of the step that matches most blocks, and the first-layer update of the step that evicts "
            "most (the eviction is timed with its allocation)"
        )
    )
    run["prefix"] = []
    for point, factory in grid:
        record = prefix_calls.report(factory, variants, num_steps, device)
        run["prefix"].append({"point": point, **record})
        print(wrap("\n".join(prefix_calls.report_lines(point, record))))


def first_of_each(run: dict) -> list[tuple[dict, list]]:
    """(point, [its results]) per grid point, in order."""
    seen: dict = {}
    for result in run["points"]:
        seen.setdefault(tuple(result["point"].items()), (result["point"], []))[1].append(result)
    return list(seen.values())


def print_floors(device: torch.device, rows: list[tuple[dict, dict]]) -> dict:
    """Measures and prints the floors (`disagmoe_bench.floors`) beside each point's bytes
    that the cpu design copies per pack."""
    copied = {tuple(p.items()): r["metadata_bytes"].get(BASELINE.name) for p, r in rows}
    floors = measure_floors(device, [n for n in copied.values() if n])
    print(
        wrap(
            f"\nFloors, same process: bare synchronise {floors['bare_synchronize_us']:.1f} us; one tiny kernel "
            f"{floors['tiny_kernel_synced_us']:.1f} us synced, {floors['tiny_kernel_pipelined_us']:.1f} us a "
            f"launch back to back, {floors['graph_replay_pipelined_us']:.1f} us a graph replay of it; the "
            f"metadata's views {floors['metadata_views_us']:.1f} us; pinned host-to-device copies of the bytes "
            f"{BASELINE.name} copies per pack (first layer):"
        )
    )
    by_bytes = {c["bytes"]: c for c in floors["copies"]}
    for point, nbytes in copied.items():
        if nbytes:
            c = by_bytes[nbytes]
            label = " ".join(f"{k}={v}" for k, v in point)
            line = (
                f"  {label:<28} {nbytes / 1024:10.1f} KB: {c['synced_us']:8.1f} us synced, "
                f"{c['pipelined_us']:8.1f} us back to back"
            )
            print(wrap(line, "  "))
    floors["copied_bytes"] = [{"point": dict(p), "bytes": n} for p, n in copied.items()]
    return floors

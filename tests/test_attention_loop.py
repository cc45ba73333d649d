"""Attention in the loop (`disagmoe_bench.attention`): FlexAttention over a replayed
step's metadata equals dense attention over each sequence's contiguous K/V, whatever the
step (prefill chunks, decodes, preemptions); a corrupted table or context fails the check;
the share is the arithmetic the docs state; the command line reports it for replays and
refuses what does not fit. On torch's CPU device at the tiny shape (eager), on CUDA at the
model's shape (compiled)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from disagmoe_bench import attention, bench
from disagmoe_bench.scheduler import SchedulerConfig, TraceReplay
from disagmoe_bench.traces import TraceRequest

CONFIG = SchedulerConfig(token_budget=96, max_running=6, num_blocks=24, block_size=16, num_layers=2)


def requests() -> list[TraceRequest]:
    """Prompts of 5-90 tokens, outputs of 2-12, four arrivals a step: chunked prefills,
    decodes, finishes and (a pool of 24 blocks) preemptions."""
    return [TraceRequest(0.02 * (i // 4), 5 + 37 * i % 86, 2 + 5 * i % 11) for i in range(60)]


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda", torch.cuda.current_device()))
    return found


def shape_for(device: torch.device) -> attention.AttentionShape:
    return attention.AttentionShape() if device.type == "cuda" else attention.CPU_SHAPE


@pytest.fixture(params=devices(), ids=str)
def device(request) -> torch.device:
    return request.param


def replay(num_steps: int = 30) -> TraceReplay:
    return TraceReplay(requests(), CONFIG, 0, num_steps, "synthetic")


def steps_with_metadata(workload: TraceReplay, device: torch.device):
    """(attention, manager, [(md, plan)]) of every step of the window, each step's
    attention checked as it comes (the pool changes step by step)."""
    manager = attention.pool_manager(workload, device)
    workload.start(manager)
    plans = [attention.plan_step(workload.step_at(k).layers[0], device) for k in range(workload.num_steps)]
    layer = attention.PagedAttention(
        manager.num_blocks, manager.block_size, max(p.num_tokens for p in plans), shape_for(device), device
    )
    return manager, layer, plans


def run_step(manager, layer, workload, k):
    md = workload.step_at(k).run(manager)
    layer.scatter_columns(md)
    return md


def test_every_step_equals_dense_attention(device):
    workload = replay()
    stats = workload.stats()
    assert stats["preemptions"] > 0 and stats["finished"] > 0 and stats["prefill_tokens_mean"] > 0
    manager, layer, plans = steps_with_metadata(workload, device)
    kinds = set()
    for k, plan in enumerate(plans):
        md = run_step(manager, layer, workload, k)
        kinds.add((plan.decodes.numel() > 0, len(plan.prefills) > 0))
        assert attention.check(layer, md, plan, k) <= (1e-4 if device.type == "cpu" else 3e-2)
    assert kinds >= {(True, True), (True, False)}  # mixed steps and decode-only steps


@pytest.mark.parametrize("corrupt", ["table", "context"])
def test_corrupted_metadata_fails_the_check(device, corrupt):
    """The check can fail: another request's block in a table, or a query one position late."""
    workload = replay(12)
    manager, layer, plans = steps_with_metadata(workload, device)
    k = next(k for k, p in enumerate(plans) if k and p.prefills and p.decodes.numel())  # a mixed step
    for before in range(k):
        run_step(manager, layer, workload, before)
    md, plan = run_step(manager, layer, workload, k), plans[k]
    entry = plan.prefills[0][0]
    if corrupt == "table":  # the chunk's first block is the next entry's
        tables = md.block_tables.clone()
        tables[entry, 0] = md.block_tables[entry + 1, 0]
        md = dataclasses.replace(md, block_tables=tables)
    else:  # the chunk's queries each one position later
        late = md.context_lens_tensor.clone()
        late[entry] += 1
        md = dataclasses.replace(md, context_lens_tensor=late)
    layer.scatter_columns(md)
    with pytest.raises(attention.AttentionMismatch, match=f"step {k}"):
        attention.check(layer, md, plan, k)


def test_measure_reports_the_layer_and_compiles_nothing_while_timed(device):
    workload = replay(20)
    manager = attention.pool_manager(workload, device)
    record = attention.measure(workload, manager, shape_for(device), device, checks=4)
    assert len(record["layer_us"]) == 20 and all(t > 0 for t in record["layer_us"])
    assert record["checked_steps"] == [0, 6, 13, 19]
    assert record["compiles_timed"] == 0
    assert record["layer_p50_us"] <= record["layer_p99_us"] <= max(record["layer_us"])


def test_share_is_bookkeeping_over_the_step():
    assert attention.share(10.0, 1.0, 10) == pytest.approx(0.5)
    assert attention.share(30.0, 2.0, 32) == pytest.approx(30 / 94)
    assert attention.share(0.0, 0.0, 32) == 0.0


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("q_heads", 12, "multiple of kv_heads"),
        ("head_dim", 8, "head_dim=8"),
        ("model_layers", 0, "model_layers=0"),
        ("dtype", "bf16", "dtype='bf16'"),
        ("kv_heads", 2.0, "kv_heads=2.0"),
    ],
)
def test_a_bad_shape_is_named(field, value, named):
    with pytest.raises(ValueError, match=named):
        dataclasses.replace(attention.AttentionShape(kv_heads=8), **{field: value})


def _log(tmp_path):
    path = tmp_path / "log.csv"
    rows = [
        f"2023-11-16 18:15:{10 + i // 4:02d}.{i % 4 * 25:02d}00000,{5 + 37 * i % 86},{2 + 5 * i % 11}"
        for i in range(60)
    ]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


def _replay_argv(tmp_path, *extra: str) -> list[str]:
    """A quick pipelined replay of the synthetic log through every variant, into r.json."""
    return [
        "--trace",
        str(_log(tmp_path)),
        "--timing",
        "pipelined",
        "--quick",
        "--running",
        "6",
        "--chunk",
        "96",
        "--window",
        "3",
        "--windows",
        "2",
        "--output",
        str(tmp_path / "r.json"),
        *extra,
    ]


def test_command_line_reports_the_share(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(_replay_argv(tmp_path, "--pool-blocks", "24", "--model-layers", "4")) == 0
    printed = capsys.readouterr().out
    assert "Attention in the loop" in printed and "of a step with 4 layers" in printed
    assert max(len(line) for line in printed.splitlines()) <= 120
    run = json.loads(out.read_text())
    record = run["attention"][0]
    assert record["point"]["running"] == 6 and record["shape"]["model_layers"] == 4
    wall = {name: v["median"]["wall_us"] for name, v in run["points"][0]["variants"].items()}
    assert record["bookkeeping_us"] == wall
    for name, fraction in record["share"].items():
        assert fraction == pytest.approx(wall[name] / (wall[name] + 4 * record["layer_mean_us"]))


def test_command_line_leaves_attention_out_when_asked_or_too_large(tmp_path, capsys):
    assert bench.main(_replay_argv(tmp_path, "--pool-blocks", "24", "--model-layers", "0")) == 0
    assert "Attention in the loop" not in capsys.readouterr().out
    if not torch.cuda.is_available():  # the CPU's eager attention over a large pool: left out, said why
        assert bench.main(_replay_argv(tmp_path, "--pool-blocks", str(1 << 20))) == 0
        assert "attention left out (eager FlexAttention on the CPU" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--workload", "decode", "--model-layers", "8"], "--model-layers weighs"),
        (["--workload", "azure-conv", "--model-layers", "-1"], "--model-layers -1"),
    ],
)
def test_command_line_refuses_model_layers_it_cannot_use(capsys, argv, named):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_layer_never_waits_for_the_device():
    """Once compiled, a layer's launch makes no synchronising call (the timed layer sits
    behind a spin of the GPU: a wait would put the host's launch time into the device's)."""
    device = torch.device("cuda", torch.cuda.current_device())
    workload = replay(30)
    manager, layer, plans = steps_with_metadata(workload, device)
    for k, plan in enumerate(plans):
        layer.layer(run_step(manager, layer, workload, k), plan)  # compiles
    workload.start(manager)
    for k, plan in enumerate(plans):
        md = run_step(manager, layer, workload, k)
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer.layer(md, plan)
        finally:
            torch.cuda.set_sync_debug_mode(0)

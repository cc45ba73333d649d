"""Replays that say what happened: requests the pool can never hold (counted, warned, and
left out of the window's choice), a window that runs nothing (exit status 1), the
attention phase's progress and units, the CPU's hint of a smaller pool (naming
--pool-blocks, warning when that pool changes the replay), --plot checked before the run
and --output written when the plot fails, output within the terminal's width, and
messages that name options. Each runs the command line in-process at a tiny size."""

from __future__ import annotations

import json
import os
import re

import pytest
from cli_refusals import refused

from disagmoe_bench import attention, bench, cli, summary, text
from disagmoe_bench.scheduler import SchedulerConfig, TraceReplay, busiest_window
from disagmoe_bench.traces import TraceRequest, read_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
SMALL = "2023-11-16 18:15:46.6,300,44\n"
HUGE_LATER = "2023-11-16 18:17:46.6,5000,4\n"  # two minutes later, past a pool of 30 blocks
FAST = ["--quick", "--window", "2", "--windows", "1", "--timing", "synced", "--variants", "cpu-bs16", "gpu-bs16"]
FAST += ["--device", "cpu"]  # (on CUDA too: the attention's eager CPU path, at a tiny shape)


def replay(capsys, path, *argv: str) -> tuple[int, str, str]:
    status = bench.main(["--trace", str(path), *FAST, *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def small_and_huge(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + SMALL + HUGE_LATER)
    return path


def test_rejected_requests_are_counted_and_warned(small_and_huge, tmp_path, capsys):
    out = tmp_path / "r.json"
    status, printed, err = replay(
        capsys, small_and_huge, "--pool-blocks", "30", "--model-layers", "0", "--output", str(out)
    )
    assert status == 0, err
    said = " ".join(err.split())
    assert "warning: 1 of the 2 requests of t.csv hold more than the pool's 480 tokens" in said, said
    assert "--pool-blocks 30" in said
    steps = json.loads(out.read_text())["points"][0]["workload"]["steps"]
    assert steps["rejected"] == 1
    # the window is the small request's, not the rejected one's (which would run nothing)
    assert steps["admitted"] == 1 and steps["prefill_tokens_mean"] > 0
    assert "arrived / admitted / finished" in " ".join(printed.split())


def test_the_busiest_window_leaves_out_requests_that_never_fit():
    config = SchedulerConfig(num_blocks=30)
    requests = [TraceRequest(0.0, 300, 44), TraceRequest(120.0, 5000, 4)]
    assert busiest_window(requests, config, 8) == 0
    assert busiest_window(requests, SchedulerConfig(num_blocks=400), 8) == 6000 - 7  # both fit: the larger


def test_a_window_that_runs_nothing_exits_non_zero(small_and_huge, capsys, monkeypatch):
    monkeypatch.setattr(cli, "busiest_window", lambda requests, config, num_steps: 10**6)
    monkeypatch.setattr(cli.points, "run_point", lambda *a, **k: pytest.fail("timed an empty window"))
    status, printed, err = replay(capsys, small_and_huge, "--pool-blocks", "30", "--model-layers", "0")
    assert status == 1
    assert "runs no request" in " ".join(err.split()) and "wall" not in printed


def test_the_attention_phase_shows_progress_and_readable_units(small_and_huge, capsys):
    status, printed, err = replay(capsys, small_and_huge, "--pool-blocks", "30", "--model-layers", "2")
    assert status == 0, err
    assert "attention trace=t.csv running=256" in err  # its progress, on stderr
    said = " ".join(printed.split())
    assert re.search(r"CPU time a layer: mean \d+\.\d (us|ms|s), p50", said), said
    assert re.search(r"bookkeeping \d+\.\d (us|ms|s) a step", said), said


def test_attention_times_are_printed_in_readable_units():
    record = {
        "shape": {"q_heads": 4, "kv_heads": 2, "head_dim": 16, "dtype": "float32", "model_layers": 32},
        "timed": "CPU",
        "layer_mean_us": 5168.6,
        "layer_p50_us": 37.7,
        "layer_p99_us": 18492863.0,
        "layer_host_p50_us": 37.7,
        "layer_host_p99_us": 46072.5,
        "checked_steps": [0],
        "max_abs_diff": 0.0,
        "compiles_timed": 0,
        "late_launches": 0,
        "share": {"cpu-bs16": 0.5},
        "bookkeeping_us": {"cpu-bs16": 1234.5},
        "bookkeeping_mode": "pipelined",
    }
    said = "\n".join(attention.report_lines({"trace": "t.csv"}, record))
    assert "mean 5.2 ms, p50 37.7 us, p99 18.49 s" in said and "p99 46.1 ms" in said
    assert "18492863" not in said and "1.2 ms a step" in said


@pytest.mark.parametrize("us, shown", [(0.25, "0.2 us"), (999.9, "999.9 us"), (1000, "1.0 ms"), (2.5e6, "2.50 s")])
def test_duration(us, shown):
    assert text.duration(us) == shown


def tiny_replay(tmp_path, pool_blocks: int = 30) -> TraceReplay:
    path = tmp_path / "two.csv"
    path.write_text(HEADER + SMALL + "2023-11-16 18:15:46.7,20,4\n")
    return TraceReplay(read_trace(path), SchedulerConfig(num_blocks=pool_blocks), 0, 12, "two.csv")


def test_the_cpu_hint_names_pool_blocks(tmp_path, monkeypatch):
    workload = tiny_replay(tmp_path)
    monkeypatch.setattr(attention, "CPU_MASK_EVALUATIONS", workload.max_step_tokens * 16 * 3)
    record = attention.report([], lambda num_steps: workload, 12, attention.torch.device("cpu"), 32)
    assert record["pool_blocks_that_run_it"] == 3
    assert "--pool-blocks 3 or fewer runs it" in record["skipped"]


def test_the_cpu_hint_warns_when_its_pool_changes_the_replay(tmp_path):
    workload = tiny_replay(tmp_path)
    # 3 blocks of 16 hold the 23 tokens of the small request, not the 343 of the other
    warning = summary.smaller_pool_changes(workload, 3)
    assert warning.startswith("    warning: --pool-blocks 3 changes the replay"), warning
    assert "1 of 2 requests never fit the pool (now 0)" in warning
    assert summary.smaller_pool_changes(workload, 1) == (
        "    warning: --pool-blocks 1 holds none of the trace's requests: nothing would run"
    )
    assert summary.smaller_pool_changes(workload, 30) == ""  # the same pool: the same replay


# -- --plot and --output --------------------------------------------------------------------


@pytest.mark.parametrize("name, said", [("m.txt", "matplotlib draws no .txt file"), ("m", "no suffix")])
def test_the_plots_format_is_checked_before_the_run(tmp_path, capsys, name, said):
    pytest.importorskip("matplotlib")
    err = refused(["--workload", "trace", "--plot", str(tmp_path / name)], capsys)
    assert f"--plot {tmp_path / name}: {said}" in err and ".png" in err
    assert bench.parse_args(["--workload", "trace", "--plot", str(tmp_path / "m.SVG")]).plot


@pytest.mark.parametrize("workload", ["decode", "trace"])
def test_a_plot_of_one_variant_is_refused_before_the_run(tmp_path, capsys, workload):
    err = refused(["--workload", workload, "--plot", str(tmp_path / "m.png"), "--variants", "gpu-bs16"], capsys)
    assert "--plot maps each variant's speedup over cpu-bs16" in err


def test_the_output_is_written_when_the_plot_fails(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from disagmoe_bench import plot

    def fails(run, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot, "crossover_map", fails)
    out, png = tmp_path / "r.json", tmp_path / "m.png"
    argv = ["--workload", "decode", "--batch-sizes", "2", "--contexts", "16", *FAST]
    status = bench.main([*argv, "--output", str(out), "--plot", str(png)])
    err = " ".join(capsys.readouterr().err.split())
    assert status == 1
    assert f"--plot {png}: the map could not be drawn" in err and "No space left" in err
    assert json.loads(out.read_text())["workload"] == "decode"


# -- the terminal's width, names of options ---------------------------------------------------


def test_a_long_trace_name_keeps_the_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / ("a_rather_long_name_of_a_trace_x" + ".csv")
    path.write_text(HEADER + SMALL)
    status, printed, err = replay(capsys, path, "--model-layers", "0")
    assert status == 0, err
    rows = [line.split() for line in printed.splitlines() if path.name in line and "256" in line.split()]
    assert rows and rows[0][:3] == [path.name, "256", "cpu-bs16"], rows


@pytest.mark.parametrize("columns", [80, 64])
def test_output_fits_a_narrow_terminal(tmp_path, capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    path = tmp_path / ("a_rather_long_name_of_a_trace_x" + ".csv")
    path.write_text(HEADER + SMALL)
    status, printed, err = replay(capsys, path, "--model-layers", "0")
    assert status == 0, err
    assert max(len(line) for line in printed.splitlines()) <= columns, printed
    assert f"trace={path.name} running=256:" in printed  # a grid point heads its variants' lines
    assert any(line.split()[:1] == ["gpu-bs16"] for line in printed.splitlines())


def test_the_width_without_a_terminal(monkeypatch):
    def no_terminal(fd: int = 1):
        raise OSError(25, "Inappropriate ioctl for device")

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", no_terminal)
    assert text.width() == text.DEFAULT_WIDTH
    monkeypatch.setenv("COLUMNS", "20")
    assert text.width() == text.MIN_WIDTH
    monkeypatch.setenv("COLUMNS", "91")
    assert text.width() == 91


@pytest.mark.parametrize("name, said", [("t.txt", "its suffix .txt"), ("trace", "its name")])
def test_a_trace_of_unknown_suffix_names_the_option(tmp_path, capsys, name, said):
    path = tmp_path / name
    path.write_text(HEADER + SMALL)
    err = refused(["--trace", str(path)], capsys)
    assert f"--trace {path}: cannot tell its format from {said}" in err
    assert "--trace-format azure|mooncake|servegen" in err and "format=" not in err
    assert bench.parse_args(["--trace", str(path), "--trace-format", "azure"]).trace_requests


def test_a_folder_as_the_trace_is_called_a_folder(tmp_path, capsys):
    assert f"--trace {tmp_path}: is a folder, not a file" in refused(["--trace", str(tmp_path)], capsys)


def test_a_bad_variant_names_the_option(capsys):
    err = refused(["--workload", "trace", "--variants", "cpu-bs16", "cpu-x"], capsys)
    assert "--variants cpu-x:" in err

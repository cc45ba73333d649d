"""The benchmarks' inputs are checked before anything runs: the command line's options (one
line naming the option, exit code 2, never a traceback, never a run that fails at its end)
and the asv modules' environment variables (a ValueError naming the variable)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from cli_refusals import refused

from disagmoe_bench import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--batch-sizes", "1099511627776"], "--batch-sizes 1099511627776"),
        (["--seq-lens", "2147483648"], "--seq-lens 2147483648"),
        (["--batch-sizes", "65536", "--seq-lens", "65536"], "int32 range of slots"),
        (["--iterations", "0"], "--iterations 0"),
        (["--iterations", "10000000"], "--iterations 10000000"),
        (["--warmup", "-1"], "--warmup -1"),
        (["--workload", "decode", "--contexts", "100000000000"], "--contexts 100000000000"),
        (
            ["--workload", "decode", "--batch-sizes", "65536", "--contexts", "65536"],
            "--batch-sizes 65536 --contexts 65536",
        ),
        (["--workload", "trace", "--variants", "cpu-bs99999999999"], "cpu-bs99999999999"),
        (["--workload", "trace", "--variants", "gpu-bs0"], "gpu-bs0"),
        (["--workload", "trace", "--seed", "-1"], "--seed -1"),
        (["--workload", "trace", "--running", "3000000000"], "--running 3000000000"),
        (["--workload", "trace", "--running", "600000", "--prompts", "4096"], "int32 range of slots"),
        (["--workload", "trace", "--chunk", "0"], "--chunk 0"),
        (["--workload", "trace", "--max-output", "2147483648"], "--max-output 2147483648"),
        (["--workload", "trace", "--layers", "5000"], "--layers 5000"),
        (["--workload", "trace", "--forward-us", "nan"], "--forward-us nan"),
        (["--workload", "trace", "--forward-us", "-3"], "--forward-us -3"),
        (["--workload", "trace", "--window", "100000", "--windows", "100"], "steps a grid point"),
        (["--device", "tpu"], "--device tpu"),
        (["--workload", "decode", "--device", "quantum"], "--device quantum"),
    ],
)
def test_out_of_range_options_are_refused_first(argv, named, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in err and err.startswith("disagmoe-bench: error:"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_and_busy_are_refused_without_a_gpu(capsys):
    for argv, named in (
        (["--device", "cuda"], "--device cuda"),
        (["--workload", "decode", "--timing", "busy"], "--timing busy needs a CUDA device"),
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert named in capsys.readouterr().err


def _path_cases(tmp_path) -> list[tuple[list[str], str]]:
    """(argv, what its one-line refusal says): a missing folder is never made, a regular file
    is never taken for a folder, for the seed's table and every serving workload."""
    afile = tmp_path / "a-file"
    afile.write_text("x")
    missing, under_file = tmp_path / "missing", afile / "r.json"
    return [
        (["--output", str(missing / "r.json")], f"--output {missing / 'r.json'}: its folder {missing} does not exist"),
        (["--output", str(under_file)], f"--output {under_file}: its folder {afile} is not a folder"),
        (["--output", str(tmp_path)], f"--output {tmp_path}: is a folder"),
        (["--workload", "trace", "--plot", str(missing / "map.png")], f"--plot {missing / 'map.png'}: its folder"),
        (["--workload", "decode", "--plot", str(afile / "map.png")], "is not a folder"),
        (["--workload", "trace", "--plot", str(tmp_path)], f"--plot {tmp_path}: is a folder"),
        (["--workload", "trace", "--output", str(missing / "r.json")], "--output"),
        (["--workload", "decode", "--output", str(under_file)], f"--output {under_file}: its folder"),
        (["--workload", "azure-conv", "--output", str(missing / "r.json")], "does not exist"),
        (["--trace", str(afile), "--trace-format", "azure", "--output", str(under_file)], "is not a folder"),
        (["--profile", str(tmp_path / "a" / "b")], "--profile"),
    ]


def test_output_paths_are_checked_before_the_run(tmp_path, capsys):
    for argv, said in _path_cases(tmp_path):
        with pytest.raises(SystemExit) as info:
            bench.parse_args(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("disagmoe-bench: error:") and said in err, (argv, err)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "a").exists()  # nothing made


def test_a_bad_path_stops_the_command_before_anything_runs(tmp_path, capsys, monkeypatch):
    """main() refuses before measuring: nothing is printed on stdout, no table, no progress."""
    monkeypatch.setattr(bench, "_run_point", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setattr(bench.serving_cli.points, "run_point", lambda *a, **k: pytest.fail("measured"))
    for argv, said in _path_cases(tmp_path):
        with pytest.raises(SystemExit) as info:
            bench.main(argv)
        captured = capsys.readouterr()
        assert info.value.code == 2 and said in captured.err and captured.out == "", argv


def test_plot_without_matplotlib_is_refused_first(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as info:
        bench.parse_args(["--workload", "trace", "--plot", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--plot" in err and "needs matplotlib" in err, err


def test_a_good_command_line_is_accepted(tmp_path):
    args = bench.parse_args(
        [
            "--workload",
            "trace",
            "--running",
            "16",
            "--prompts",
            "256",
            "--output",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ]
    )
    assert args.running == [16] and args.device_resolved.type in ("cpu", "cuda")


@pytest.mark.parametrize(
    "variable, value, named",
    [
        ("DISAGMOE_SERVING_MODES", "bogus", "'bogus' is not a timing mode"),
        ("DISAGMOE_SERVING_BATCH_SIZES", "16,x", "'x' is not an integer"),
        ("DISAGMOE_SERVING_CONTEXTS", "0", "0 must be in"),
        ("DISAGMOE_TRACE_RUNNING", "3000000000", "3000000000 must be in"),
        ("DISAGMOE_TRACE_PROMPTS", "2k", "'2k' is not an integer"),
        ("DISAGMOE_SERVING_VARIANTS", "cpu16", "'cpu16' is not a variant"),
        ("DISAGMOE_BENCH_SEQ_LENS", "1.5", "'1.5' is not an integer"),
        ("DISAGMOE_BENCH_BATCH_SIZES", "-4", "-4 must be in"),
        ("DISAGMOE_REPLAY_TRACES", "azure", "'azure' is not a bundled trace"),
    ],
)
def test_asv_environment_variables_are_named(variable, value, named):
    code = (
        "import benchmarks.bench_pipelined, benchmarks.bench_trace, benchmarks.bench_replay, "
        "benchmarks.bench_update_block_table"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, variable: value},
    )
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError:") and variable in last and named in last, last


def test_replay_options_are_checked_and_the_trace_read_first(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:45.0000000,12,3\n"
    )
    cases = [
        (["--trace", str(bad)], "line 3"),
        (["--trace", str(tmp_path / "missing.csv")], "no such file"),
        (["--trace", str(tmp_path / "log.txt")], "--trace"),
        (["--workload", "decode", "--trace", str(bad)], "does not go with --workload decode"),
        (["--workload", "mooncake", "--running", "9000"], "token budget"),
        (["--workload", "azure-conv", "--pool-blocks", "0"], "--pool-blocks 0"),
        (["--workload", "azure-conv", "--pool-blocks", "200000000"], "int32 range of slots"),
        (["--workload", "azure-conv", "--rate-scale", "0"], "--rate-scale 0"),
        (["--workload", "azure-conv", "--step-ms", "inf"], "--step-ms inf"),
        (["--workload", "azure-conv", "--plot", str(tmp_path / "m.png")], "no grid"),
        (["--rate-scale", "2"], "needs --workload"),
    ]
    (tmp_path / "log.txt").write_text("x\n")
    for argv, named in cases:
        with pytest.raises(SystemExit) as info:
            bench.parse_args(argv)
        assert info.value.code == 2
        assert named in capsys.readouterr().err, argv


def test_help_names_the_three_designs(capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "all three designs" in shown and "both backends" not in shown
    assert "hybrid-bs16" in shown  # the --variants default, all of them


# -- hostile command lines: each refused before anything runs, naming the option ------------

TRACE_TEXT = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,300,44\n2023-11-16 18:15:47.6,200,4\n"


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TRACE_TEXT)
    return path


def test_a_folder_as_the_trace_is_called_a_folder(tmp_path, capsys):
    assert f"--trace {tmp_path}: is a folder, not a file" in refused(["--trace", str(tmp_path)], capsys)


def test_a_fifo_as_the_trace_is_refused_unopened(tmp_path, capsys):
    import signal

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    signal.alarm(30)  # opening the FIFO would block for good: fail the test instead
    try:
        assert "not a regular file" in refused(["--trace", str(fifo)], capsys)
    finally:
        signal.alarm(0)


def test_an_unreadable_trace_is_refused(trace_file, capsys, monkeypatch):
    from disagmoe_bench import traces

    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and not (str(p) == str(trace_file)))
    assert "cannot be read (permission denied)" in refused(["--trace", str(trace_file)], capsys)
    monkeypatch.setattr(os, "access", access)

    def denied(path, fmt=None):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(traces, "read_trace", denied)
    assert f"--trace {trace_file}: cannot be read: Permission denied" in refused(["--trace", str(trace_file)], capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_trace_is_refused_for_real(trace_file, capsys):
    trace_file.chmod(0)
    assert "cannot be read" in refused(["--trace", str(trace_file)], capsys)


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--step-ms", "1e-300"], "--step-ms 1e-300 must be a number in [0.001, 3.6e+06]"),
        (["--step-ms", "5e-324"], "--step-ms 4.94066e-324"),
        (["--step-ms", "1e308"], "--step-ms 1e+308"),
        (["--rate-scale", "1e-300"], "--rate-scale 1e-300 must be a number in [1e-06, 1e+06]"),
        (["--rate-scale", "5e-324"], "--rate-scale 4.94066e-324"),
        (["--rate-scale", "nan"], "--rate-scale nan"),
    ],
)
def test_rate_scale_and_step_ms_that_would_overflow(argv, said, capsys):
    assert said in refused(["--workload", "azure-conv", *argv], capsys)


def test_arrivals_past_the_schedulers_steps_are_refused(tmp_path, capsys):
    """Each option within its range, together they map the trace's last arrival past 2**53 steps."""
    path = tmp_path / "far.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
        '{"timestamp": 9000000000000000, "input_length": 5, "output_length": 2}\n'
    )
    err = refused(["--trace", str(path), "--rate-scale", "1e-5", "--step-ms", "0.001"], capsys)
    assert "--rate-scale 1e-05 --step-ms 0.001: the last arrival of far.jsonl, at 9e+12 s" in err
    assert "past the scheduler's last step" in err
    assert "rate_scale=" not in err and "step_seconds=" not in err  # options, not the scheduler's keywords


def test_a_replay_rejecting_every_request_is_refused(trace_file, capsys):
    err = refused(["--trace", str(trace_file), "--pool-blocks", "12"], capsys)
    assert "--pool-blocks 12: every request of t.csv holds more than the pool's 192 tokens" in err
    assert "reject them all" in err
    bench.parse_args(["--trace", str(trace_file), "--pool-blocks", "13"])  # one request fits


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--workload", "decode", "--running", "4"], "--workload decode never reads --running"),
        (["--workload", "decode", "--prompts", "64"], "--workload decode never reads --prompts"),
        (["--workload", "decode", "--chunk", "64"], "--workload decode never reads --chunk"),
        (["--workload", "decode", "--seed", "3"], "--workload decode never reads --seed"),
        (["--workload", "decode", "--rate-scale", "2"], "--workload decode never reads --rate-scale"),
        (["--workload", "decode", "--trace-format", "azure"], "--workload decode never reads --trace-format"),
        (["--workload", "trace", "--contexts", "5"], "--workload trace never reads --contexts"),
        (["--workload", "trace", "--batch-sizes", "5"], "--workload trace never reads --batch-sizes"),
        (["--workload", "trace", "--lengths", "cycle"], "--workload trace never reads --lengths"),
        (["--workload", "trace", "--pool-blocks", "64"], "--workload trace never reads --pool-blocks"),
        (["--workload", "trace", "--step-ms", "5"], "--workload trace never reads --step-ms"),
        (["--workload", "azure-conv", "--seed", "3"], "--workload azure-conv never reads --seed"),
        (["--workload", "azure-conv", "--prompts", "3"], "--workload azure-conv never reads --prompts"),
        (["--workload", "azure-conv", "--max-output", "3"], "--workload azure-conv never reads --max-output"),
        (["--workload", "mooncake", "--contexts", "3"], "--workload mooncake never reads --contexts"),
        (["--workload", "mooncake", "--trace-format", "azure"], "--workload mooncake never reads --trace-format"),
        (["--workload", "trace", "--timing", "synced", "--forward-us", "500"], "--timing synced never reads it"),
    ],
)
def test_options_the_workload_never_reads_are_refused(argv, said, capsys):
    assert said in refused(argv, capsys)


def test_options_a_trace_replay_never_reads_are_refused(trace_file, capsys):
    for option, value in (("--seed", "3"), ("--contexts", "8"), ("--lengths", "cycle"), ("--max-output", "9")):
        assert f"--trace {trace_file} never reads {option}" in refused(
            ["--trace", str(trace_file), option, value], capsys
        )


def test_output_onto_an_input_or_the_plot_is_refused(trace_file, tmp_path, capsys):
    from disagmoe_bench import traces

    same = str(tmp_path / "m.png")
    assert "--output" in refused(["--trace", str(trace_file), "--output", str(trace_file)], capsys)
    err = refused(["--trace", str(trace_file), "--output", str(tmp_path / "." / "t.csv")], capsys)
    assert "is the file of --trace" in err
    err = refused(["--workload", "trace", "--output", same, "--plot", same], capsys)
    assert f"--output {same} is the file of --plot {same}" in err
    bundled = str(traces.bundled("azure"))
    assert "is the file of --trace" in refused(["--workload", "azure-conv", "--output", bundled], capsys)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_output_that_would_fail_at_the_end_is_refused_first(tmp_path, capsys):
    err = refused(["--workload", "trace", "--output", "/dev/full"], capsys)
    assert "--output /dev/full: not a regular file" in err
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(["--output", str(fifo)], capsys)


def test_a_failed_write_after_the_run_is_said(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    def full(self, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    assert bench._write(tmp_path / "r.json", {"x": 1}) == 1
    assert "could not be written" in capsys.readouterr().err
    assert bench._write(None, {}) == 0


def test_an_output_folder_that_cannot_be_searched_is_refused(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: access(p, mode) and not (str(p) == str(folder) and mode & os.X_OK)
    )
    err = refused(["--workload", "trace", "--output", str(folder / "r.json")], capsys)
    assert f"its folder {folder} is not writable and searchable" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root searches any folder")
def test_an_output_folder_that_cannot_be_searched_for_real(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir(mode=0o300 & ~0o100)  # writable, not searchable
    try:
        assert "not writable and searchable" in refused(["--output", str(folder / "r.json")], capsys)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("variants", [["cpu-bs16"], ["gpu-bs16"], ["gpu-bs16", "hybrid-bs16"]])
def test_plot_with_nothing_to_compare_is_refused_first(variants, tmp_path, capsys):
    err = refused(["--workload", "decode", "--plot", str(tmp_path / "m.png"), "--variants", *variants], capsys)
    assert "--plot maps each variant's speedup over cpu-bs16" in err

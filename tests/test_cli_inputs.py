"""The benchmarks' inputs are checked before anything runs: the command line's options (one
line naming the option, exit code 2, never a traceback, never a run that fails at its end)
and the asv modules' environment variables (a ValueError naming the variable)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

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

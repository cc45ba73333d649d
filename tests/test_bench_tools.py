"""The benchmark tooling: the commits of the history rule (scripts/gpu_history.sh --list),
the asv suite's import, which runs in asv's fork server and must never initialise CUDA,
the suite's RelativeTime ratios, and the probes of scripts/probes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_history_rule_lists_commits_that_change_the_package():
    rule = subprocess.run(
        ["git", "-C", ROOT, "log", "--format=%h", "main", "--", "asv.conf.json"], capture_output=True, text=True
    )
    if rule.returncode != 0 or not rule.stdout.strip():
        pytest.skip("no main branch with the suite in this checkout's history")
    listed = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "gpu_history.sh"), "--list"], capture_output=True, text=True, cwd=ROOT
    )
    assert listed.returncode == 0, listed.stderr
    hashes = [line.split()[0] for line in listed.stdout.splitlines()]
    assert hashes, "the rule picks no commit"
    for commit in hashes:
        changed = subprocess.run(
            ["git", "-C", ROOT, "show", "--first-parent", "--name-only", "--format=", commit],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert any(
            path.startswith(("csrc/", "disagmoe/", "disagmoe_bench/")) or path in ("setup.py", "pyproject.toml")
            for path in changed
        ), (commit, changed)


def test_importing_the_suite_leaves_cuda_alone():
    """asv's fork server imports the benchmark modules, then forks every benchmark: an
    initialised CUDA there would break every child."""
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); "
        "import benchmarks.common, benchmarks.bench_update_block_table, "
        "benchmarks.bench_pack_flash_attn_metadata, benchmarks.bench_speedup, benchmarks.bench_memory; "
        "print(torch.cuda.is_initialized())"
    )
    done = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_importing_the_suite_computes_tritons_key_once_for_every_child():
    """The fork server computes the hash Triton keys its kernel cache with, so that no
    forked child hashes Triton's library again; CUDA stays untouched."""
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import benchmarks.common; "
        "from triton.runtime.cache import triton_key; "
        "print(triton_key.cache_info().currsize, torch.cuda.is_initialized())"
    )
    done = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_forked_benchmark_initialises_its_own_cuda():
    """What asv's fork server does: import the suite, fork, and run a benchmark in the child."""
    code = """
import os, sys
sys.path.insert(0, sys.argv[1])
import torch
from benchmarks import bench_pack_flash_attn_metadata as bench
pid = os.fork()
if pid == 0:
    b = bench.PackFlashAttnMetadataDecode()
    b.setup("gpu", 16, 128)
    b.time_pack_flash_attn_metadata("gpu", 16, 128)
    os._exit(0 if torch.cuda.is_initialized() else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


class _Clock:
    """A clock that only the operations' given costs move."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _charge(monkeypatch, clock: _Clock, cls: type, method: str, costs: dict, key) -> None:
    """Make every call of `cls.method` advance `clock` by `costs[key]` seconds."""
    run = getattr(cls, method)

    def charged(self, *args):
        result = run(self, *args)
        clock.now += costs[key]
        return result

    monkeypatch.setattr(cls, method, charged)


def test_relative_time_tracks_a_slower_operation(monkeypatch):
    """RelativeTime's ratio (an operation's time over the reference's, in turn in one
    process) rises with the operation's own time, and only that operation's.

    The timed calls read a clock that moves only by the cost given to each operation, so
    the ratios are exact whatever else the machine runs (a timing test that compares two
    measurements taken moments apart failed under `pytest -n 12`). That a real slowdown
    is flagged on a real machine is what scripts/check_regression.sh proves there."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import common
    from disagmoe import CPUBlockManager, GPUBlockManager, HybridBlockManager
    from disagmoe.block_manager import base
    from disagmoe_bench import timing

    # Torch's CPU device whatever this machine has (and whatever earlier tests of this
    # process initialised): the ratios are the fake clock's, the device plays no part.
    cpu = torch.device("cpu")
    monkeypatch.setattr(common.workloads(), "default_device", lambda: cpu)
    monkeypatch.setattr(base, "resolve_device", lambda device: cpu)
    monkeypatch.setattr(common, "BATCH_SIZES", [16])
    monkeypatch.setattr(common, "SEQ_LENS", [128])
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)  # where the seed's calls are timed
    ops = ("update_block_table", "pack_flash_attn_metadata")
    costs = {
        ("cpu", ops[0]): 2e-6,
        ("cpu", ops[1]): 8e-6,
        ("gpu", ops[0]): 12e-6,
        ("gpu", ops[1]): 16e-6,
        ("hybrid", ops[0]): 4e-6,
        ("hybrid", ops[1]): 20e-6,
        ("reference", ops[0]): 40e-6,
        ("reference", ops[1]): 40e-6,
    }
    for design, cls in (("cpu", CPUBlockManager), ("gpu", GPUBlockManager), ("hybrid", HybridBlockManager)):
        for op in ops:
            _charge(monkeypatch, clock, cls, op, costs, (design, op))
    _charge(monkeypatch, clock, common.ReferenceWork, "step", costs, ("reference", ops[0]))
    _charge(monkeypatch, clock, common.ReferenceWork, "pack_flash_attn_metadata", costs, ("reference", ops[1]))

    def check_ratios(expected: dict) -> None:
        measured = common.measure_relative_times(rounds=3, iterations=5, warmup=1)["ratios"][(16, 128)]
        assert set(measured) == set(expected)
        for key, ratio in expected.items():
            assert measured[key] == pytest.approx([ratio] * 3), key

    hybrid = {("hybrid", ops[0]): 0.1, ("hybrid", ops[1]): 0.5}
    check_ratios({("cpu", ops[0]): 0.05, ("cpu", ops[1]): 0.2, ("gpu", ops[0]): 0.3, ("gpu", ops[1]): 0.4, **hybrid})
    costs[("cpu", ops[1])] *= 1.2  # the cpu pack 20% slower
    check_ratios({("cpu", ops[0]): 0.05, ("cpu", ops[1]): 0.24, ("gpu", ops[0]): 0.3, ("gpu", ops[1]): 0.4, **hybrid})


def _probe(name: str, *args: str) -> subprocess.CompletedProcess:
    """`python3 -m scripts.probes.NAME ARGS`, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", f"scripts.probes.{name}", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_perf_probe_runs_and_reports(tmp_path):
    """The probe behind docs/performance.md, on a tiny grid, then its tables."""
    saved = tmp_path / "probe.json"
    variants = ["cpu", "gpu-torch"] + (["gpu-triton-graphs"] if torch.cuda.is_available() else [])
    run = _probe(
        "perf_probe",
        "--batch-sizes",
        "16",
        "--seq-lens",
        "128",
        "--iterations",
        "3",
        "--variants",
        *variants,
        "--json",
        str(saved),
    )
    assert run.returncode == 0, run.stderr
    report = _probe("perf_probe", "--report", str(saved))
    assert report.returncode == 0, report.stderr
    assert "**decode pack** (median us; speedup = cpu / gpu-" in report.stdout
    assert "| 16 | 128 | " in report.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pack_sweep_runs(tmp_path):
    saved = tmp_path / "sweep.json"
    run = _probe("pack_sweep", "--batch-sizes", "16", "--seq-lens", "128", "--iterations", "3", "--json", str(saved))
    assert run.returncode == 0, run.stderr
    assert "w128-p4-nw4" in run.stdout


def _what_asv_writes(tmp_path) -> str:
    """results/benchmarks.json as asv writes it at every discovery of the suite: the suite found
    at its default grid (no DISAGMOE_* variable) by a fresh interpreter importing this
    checkout's package, in asv's own format."""
    asv_util = pytest.importorskip("asv.util")
    from asv.benchmarks import Benchmarks

    listed = tmp_path / "discovered.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISAGMOE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    code = (
        "import sys; from asv_runner.discovery import list_benchmarks; "
        "list_benchmarks(sys.argv[1], open(sys.argv[2], 'w'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, os.path.join(ROOT, "benchmarks"), str(listed)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    written = tmp_path / "benchmarks.json"
    asv_util.write_json(str(written), {b["name"]: b for b in json.loads(listed.read_text())}, Benchmarks.api_version)
    return written.read_text()


def test_the_committed_history_keeps_its_benchmark_versions(tmp_path):
    """asv files a result under its benchmark's version, the hash of the benchmark's source:
    every benchmark the committed history (results/benchmarks.json) holds must still hash
    the same, or its history would start over. And the committed file is exactly what asv
    writes there at every run (scripts/run_suite.sh included), so that a run leaves the
    clone as it found it: after a change to the suite, `asv run --python=same --dry-run
    --bench NONE` (no DISAGMOE_* variable set) writes it anew."""
    pytest.importorskip("asv_runner.discovery")
    committed_text = open(os.path.join(ROOT, "results", "benchmarks.json")).read()
    committed, written = json.loads(committed_text), _what_asv_writes(tmp_path)
    found = {name: info["version"] for name, info in json.loads(written).items() if name != "version"}
    kept = {name: info["version"] for name, info in committed.items() if name != "version"}
    assert kept and {name: found.get(name) for name in kept} == kept
    differ = sorted(name for name, info in json.loads(written).items() if committed.get(name) != info)
    assert committed_text == written, f"results/benchmarks.json is not what asv writes now: {differ}"


def test_regressions_page_thresholds_spare_only_the_absolute_times():
    """asv.conf.json's regressions_thresholds (asv matches each regex at the start of a grid
    point's name): absolute times need a step past 2.5x on the regressions page; the ratios
    the verdicts read need the factor of the verdict set (benchmarks/verdict_set.py: 5% for
    the medians, 25% for the tail), and the memory footprint keeps asv's 5%."""
    from benchmarks.verdict_set import factor_of

    asv_util = pytest.importorskip("asv.util")
    conf = asv_util.load_json(os.path.join(ROOT, "asv.conf.json"), js_comments=True)
    suite = json.load(open(os.path.join(ROOT, "results", "benchmarks.json")))
    names = [name for name in suite if name != "version"]

    def threshold(name: str) -> float:
        entry = f"{name}('cpu', 16, 128)@main"
        return max(
            [float(t) for regex, t in conf["regressions_thresholds"].items() if re.match(regex, entry)], default=0.05
        )

    absolute = [n for n in names if ".time_" in n or ".Step.track_" in n or ".PrefixStep.track_" in n]
    assert sum(".time_" in n for n in absolute) == 4 and all(threshold(n) == 1.5 for n in absolute), absolute
    assert any("host_p99" in n for n in names)
    assert all(threshold(n) == pytest.approx(factor_of(n) - 1) for n in names if n not in absolute)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_verdicts_stop_at_once_without_two_commits(tmp_path):
    """In a clone of one commit, the README's `scripts/verdicts.sh main HEAD` and a commit
    that is not there stop before asv runs, saying what to compare (exit code 2)."""
    repo = tmp_path / "clone"
    (repo / "scripts" / "lib").mkdir(parents=True)
    for path in ("scripts/verdicts.sh", "scripts/lib/machine_name.sh"):
        shutil.copy(os.path.join(ROOT, path), repo / path)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + args, check=True, capture_output=True)
    for argv, said in (
        (["main", "HEAD"], "are one commit"),
        (["HEAD~1", "HEAD"], "no commit HEAD~1 in this clone (commits on HEAD here: 1)"),
        (["v9", "HEAD"], "scripts/verdicts.sh HEAD~1 HEAD"),
    ):
        done = subprocess.run(
            ["bash", str(repo / "scripts" / "verdicts.sh"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "ASV": "false", "ASV_MACHINE": "m"},
        )
        assert done.returncode == 2 and said in done.stderr, (argv, done.stderr)


def test_verdict_noise_covers_the_serving_ratios(tmp_path, capsys):
    """The noise report reads every benchmark that verdicts.sh compares, the serving
    benchmarks' InverseSpeedup included: each grid point's spread between the processes of
    one commit, per benchmark and variant."""
    from scripts import verdict_noise

    columns = ["result", "params", "samples"]
    results = {
        "bench_relative.RelativeTime.track_update_block_table": [
            None,
            [["'cpu'"], ["16"], ["128"]],
            [[1.0] * 9 + [1.02] * 9],
        ],
        "bench_trace.InverseSpeedup.track_pipelined": [
            None,
            [["'gpu-bs16'", "'hybrid-bs16'"], ["64"], ["2048"]],
            [[0.5] * 9 + [0.8] * 9, None],
        ],
        "bench_trace.Step.track_pipelined": [None, [["'cpu-bs16'"], ["64"], ["2048"]], [[10.0] * 9 + [99.0] * 9]],
    }
    path = tmp_path / "commit.json"
    path.write_text(json.dumps({"result_columns": columns, "results": results}))
    assert verdict_noise.process_medians(str(path), 2) == {
        "RelativeTime update_block_table('cpu', 16, 128)": [1.0, 1.02],
        "trace InverseSpeedup pipelined('gpu-bs16', 64, 2048)": [0.5, 0.8],
    }
    assert verdict_noise.main(["--rounds", "2", "--factor", "1.1", str(path)]) == 1
    printed = capsys.readouterr().out
    assert "1 of 2 points beyond" in printed
    assert "trace InverseSpeedup pipelined 'gpu-bs16'" in printed and "WARNING" in printed


def test_every_benchmark_pins_its_version():
    """A version computed from the code changes when shared code moves (asv hashes the
    benchmark's setup and setup_cache too): every benchmark sets its own."""
    asv_discovery = pytest.importorskip("asv_runner.discovery")
    unpinned = [
        b.name
        for b in asv_discovery.disc_benchmarks(os.path.join(ROOT, "benchmarks"))
        if getattr(b.func, "version", None) is None
    ]
    assert unpinned == []

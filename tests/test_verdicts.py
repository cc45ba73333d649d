"""The verdicts' own logic: the tail figure (benchmarks/step_tail.py), the verdict with its
minimum detectable change (scripts/verdict_noise.py), and the injected regressions with the
checks of their table (scripts/inject_regression.py, scripts/check_regression.sh).

Every clock here is a fake one that only the given costs move, so nothing depends on the
machine's load; that real regressions are caught on a real machine is what
`scripts/check_regression.sh --injected` shows there (docs/performance.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def step_tail(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import step_tail

    return step_tail


def _windows(costs: list[float], per_window: int = 32) -> list[list[float]]:
    return [costs[i : i + per_window] for i in range(0, len(costs), per_window)]


def test_the_tail_sample_is_128_steps_and_its_p99_the_second_largest(step_tail):
    assert step_tail.TAIL_STEPS == 128
    samples = step_tail.tail_samples(_windows(list(range(288))))
    assert [len(s) for s in samples] == [128, 128]  # the ninth window is left out
    assert step_tail.nearest_rank(list(range(128)), 0.99) == 126
    assert step_tail.nearest_rank(list(range(99)), 0.99) == 98  # below 100 steps: the largest


def test_the_tail_ratio_sees_a_stall_in_one_step_of_fifty_and_not_one_spike(step_tail):
    """Per sample, the variant's p99 over the reference's from the same windows: a stall
    every 50th step sets every sample's p99; one spike in a sample sets none."""
    steps = 288
    reference = [10.0] * steps
    stalled = [60.0 if (i + 1) % 50 == 0 else 20.0 for i in range(steps)]
    spiked = [500.0 if i in (7, 200) else 20.0 for i in range(steps)]
    figures = {
        name: {"host_steps_us": _windows(costs)}
        for name, costs in (("reference", reference), ("stalled", stalled), ("spiked", spiked))
    }
    cache = {"points": {(64, 2048): {"pipelined": figures}}}
    assert step_tail.tail_ratios(cache, (64, 2048), "stalled")["samples"] == [6.0, 6.0]
    assert step_tail.tail_ratios(cache, (64, 2048), "spiked")["samples"] == [2.0, 2.0]


def test_the_tail_ratio_is_skipped_without_per_step_times(step_tail):
    from benchmarks.common import SkipNotImplemented

    cache = {"points": {("azure-conv",): {"pipelined": {"cpu-bs16": {}, "reference": {}}}}}
    with pytest.raises(SkipNotImplemented, match="per-step host times"):
        step_tail.tail_ratios(cache, ("azure-conv",), "cpu-bs16")
    short = {name: {"host_steps_us": [[1.0] * 32] * 3} for name in ("cpu-bs16", "reference")}
    with pytest.raises(SkipNotImplemented, match="fewer than 128"):
        step_tail.tail_ratios({"points": {("x",): {"pipelined": short}}}, ("x",), "cpu-bs16")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Runner:
    """A runner of the harness's timing whose every step costs `costs[i]` seconds of a fake clock."""

    max_window = None

    def __init__(self, clock: _Clock, costs) -> None:
        self.clock, self.costs, self.i = clock, costs, 0

    def start(self) -> None:
        self.i = 0

    def before_window(self, steps: int) -> None:
        pass

    def step(self) -> None:
        self.clock.now += self.costs(self.i)
        self.i += 1

    def synchronize(self) -> None:
        pass


def test_the_harness_measure_hands_over_every_step_as_timed(step_tail, monkeypatch):
    """`measure_keeping_steps` runs the harness's own `measure` and keeps each runner's
    every timed step, window by window, exactly as timed (its summary unchanged), then
    puts the harness back as it was."""
    from disagmoe_bench import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    summarise = timing.tail
    runners = {
        "variant": _Runner(clock, lambda i: 3e-6 if i % 5 else 7e-6),
        "reference": _Runner(clock, lambda i: 2e-6),
    }
    how = types.SimpleNamespace(window=8, windows=3, warmup=4)
    figures = step_tail.measure_keeping_steps(timing, runners, "pipelined", how, None)
    assert timing.tail is summarise
    variant = figures["variant"]["host_steps_us"]
    assert [len(w) for w in variant] == [8, 8, 8]
    assert [round(t, 6) for t in variant[0]] == [3.0, 7.0, 3.0, 3.0, 3.0, 3.0, 7.0, 3.0]  # steps 4-11: 4 warm-up
    assert figures["variant"]["host_step_us"]["max"] == pytest.approx(7.0)
    assert all(t == pytest.approx(2.0) for w in figures["reference"]["host_steps_us"] for t in w)


# -- the verdict ------------------------------------------------------------------------


def _results(path, points: dict[tuple[str, str], list[list[float]]]) -> str:
    """An asv results file: {(benchmark, variant): per-process samples}, one grid point (64,)."""
    results = {}
    for (name, variant), processes in points.items():
        row = results.setdefault(name, [None, [[], ["64"]], []])
        row[1][0].append(f"'{variant}'")
        row[2].append(sum(processes, []))
    path.write_text(json.dumps({"result_columns": ["result", "params", "samples"], "results": results}))
    return str(path)


MEDIAN = "bench_trace.RelativeStep.track_pipelined"
TAIL = "bench_trace.RelativeStep.track_pipelined_host_p99"


def _judge(tmp_path, base: dict, head: dict, rounds: int = 2):
    from scripts import verdict_noise

    out = tmp_path / "verdict.json"
    code = verdict_noise.main(
        [
            "--rounds",
            str(rounds),
            "--base",
            _results(tmp_path / "b.json", base),
            "--head",
            _results(tmp_path / "h.json", head),
        ]
        + ["--json", str(out)]
    )
    return code, json.loads(out.read_text())["benchmarks"]


def test_a_change_beyond_the_factor_and_the_noise_is_slower(tmp_path, capsys):
    base = {(MEDIAN, "cpu-bs16"): [[1.0] * 9, [1.01] * 9]}
    head = {(MEDIAN, "cpu-bs16"): [[1.2] * 9, [1.21] * 9]}
    code, verdict = _judge(tmp_path, base, head)
    entry = verdict["trace RelativeStep pipelined"]
    assert code == 1 and entry["verdict"] == "slower"
    assert entry["mdc"] == pytest.approx(0.01, abs=1e-3)
    assert "SLOWER at 1 points" in capsys.readouterr().out


def test_identical_code_on_a_noisy_machine_is_inconclusive_not_slower(tmp_path, capsys):
    """Identical code that moved by 40% between processes: a 1.3x point is within that,
    so it is no regression, and the benchmark says it could not see a 10% change."""
    base = {(MEDIAN, "cpu-bs16"): [[1.0] * 9, [1.4] * 9]}
    head = {(MEDIAN, "cpu-bs16"): [[1.5] * 9, [1.5] * 9]}
    code, verdict = _judge(tmp_path, base, head)
    entry = verdict["trace RelativeStep pipelined"]
    assert entry["mdc"] == pytest.approx(0.4)
    assert entry["points"][0]["verdict"] == "inconclusive" and code == 3
    printed = capsys.readouterr().out
    assert "INCONCLUSIVE" in printed and "MDC up to 40%" in printed and "no change beyond" not in printed


def test_a_quiet_machine_says_no_change_and_the_tail_has_its_own_factor(tmp_path):
    """At 1.2x with 1% of noise the median is slower (factor 1.05) and the tail is not
    (factor 1.25); quiet identical points are 'no change'."""
    base = {(MEDIAN, "cpu-bs16"): [[1.0] * 9, [1.0] * 9], (TAIL, "cpu-bs16"): [[2.0, 2.0], [2.02, 2.02]]}
    same = {(MEDIAN, "cpu-bs16"): [[1.0] * 9, [1.01] * 9], (TAIL, "cpu-bs16"): [[2.0, 2.0], [2.0, 2.0]]}
    code, verdict = _judge(tmp_path, base, same)
    assert code == 0 and {e["verdict"] for e in verdict.values()} == {"no change"}
    raised = {(MEDIAN, "cpu-bs16"): [[1.2] * 9, [1.2] * 9], (TAIL, "cpu-bs16"): [[2.4, 2.4], [2.4, 2.4]]}
    code, verdict = _judge(tmp_path, base, raised)
    assert verdict["trace RelativeStep pipelined"]["verdict"] == "slower"
    tail = verdict["trace RelativeStep pipelined_host_p99"]
    assert tail["factor"] == 1.25 and tail["verdict"] == "no change" and code == 1


def test_slower_needs_every_process_of_head_beyond_every_process_of_base(tmp_path):
    """1.3x beyond a 20% MDC, but one process of HEAD (1.15) is faster than one of BASE
    (1.2): no process-level evidence of a change, so not slower."""
    base = {(MEDIAN, "cpu-bs16"): [[1.0] * 9, [1.0] * 9, [1.2] * 9]}
    head = {(MEDIAN, "cpu-bs16"): [[1.15] * 9, [1.3] * 9, [1.3] * 9]}
    code, verdict = _judge(tmp_path, base, head, rounds=3)
    point = verdict["trace RelativeStep pipelined"]["points"][0]
    assert point["ratio"] == pytest.approx(1.3) and verdict["trace RelativeStep pipelined"]["mdc"] == pytest.approx(0.2)
    assert point["verdict"] == "inconclusive" and code == 3
    assert point["base"] == [1.0, 1.0, 1.2] and point["head"] == [1.15, 1.3, 1.3]


def test_the_verdict_needs_both_commits(tmp_path, capsys):
    from scripts import verdict_noise

    path = _results(tmp_path / "b.json", {(MEDIAN, "cpu-bs16"): [[1.0], [1.0]]})
    assert verdict_noise.main(["--rounds", "2", "--base", path]) == 2
    assert "--base and --head go together" in capsys.readouterr().err


# -- the injected regressions -------------------------------------------------------------


class _Manager:
    """What the injected code wraps: a manager's step calls, each costing `cost` on a fake clock."""

    def __init__(self, clock: _Clock, cost: float = 10.0) -> None:
        self.clock, self.cost = clock, cost
        self.model_config = types.SimpleNamespace(layer_ids=(0, 1))

    def release_seqs(self, req_ids):
        self.clock.now += self.cost

    def update_block_table(self, batch):
        self.clock.now += self.cost

    def pack_flash_attn_metadata(self, batch):
        self.clock.now += self.cost


class _PollingClock(_Clock):
    """A clock that a busy-wait moves: every reading advances it by `tick`."""

    def __init__(self, tick: float) -> None:
        super().__init__()
        self.tick = tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def _injected(kind: str, clock: _Clock, **options) -> type:
    """A manager class with the injected code run on it, reading `clock` for its time."""
    from scripts import inject_regression

    cls = type("Slowed", (_Manager,), {})
    real_time = sys.modules["time"]
    sys.modules["time"] = clock  # type: ignore[assignment]  # what `import time` gives the injected code
    try:
        exec(inject_regression.injected_code(kind, "Slowed", **options), {"Slowed": cls, "__name__": "injected"})
    finally:
        sys.modules["time"] = real_time
    return cls


def test_the_uniform_regression_slows_every_call_by_its_percent():
    clock = _PollingClock(tick=0.01)
    manager = _injected("uniform", clock, percent=10)(clock)
    batch = types.SimpleNamespace(layer_id=0)
    for call, argument in ((manager.release_seqs, [1]), (manager.update_block_table, batch)):
        start = clock.now
        call(argument)
        assert clock.now - start == pytest.approx(11.0, abs=0.1)


def test_the_stall_hits_one_step_in_fifty_for_twice_a_median_step():
    clock = _PollingClock(tick=0.01)
    manager = _injected("stall", clock, every=50, times=2.0)(clock)
    first, later = types.SimpleNamespace(layer_id=0), types.SimpleNamespace(layer_id=1)
    costs = []
    for _ in range(150):
        start = clock.now
        for batch in (first, later):  # a step of two layers: 40 on the clock, without a stall
            manager.update_block_table(batch)
            manager.pack_flash_attn_metadata(batch)
        costs.append(clock.now - start)
    stalled = [i + 1 for i, cost in enumerate(costs) if cost > 60]
    assert stalled == [50, 100, 150]
    assert all(cost == pytest.approx(40 + 80, abs=1) for cost in (costs[49], costs[99]))


def test_injected_code_refuses_bad_options():
    from scripts import inject_regression

    for kind, options, said in (
        ("uniform", {"percent": 0}, "percent=0"),
        ("stall", {"every": 1}, "every=1"),
        ("stall", {"times": -1.0}, "times=-1.0"),
        ("slow", {}, "kind='slow'"),
    ):
        with pytest.raises(ValueError, match=said):
            inject_regression.injected_code(kind, "CPUBlockManager", **options)


def _verdict(name: str, factor: float, mdc: float, *points: tuple[float, str]) -> dict:
    return {
        "benchmarks": {
            name: {
                "name": f"bench_trace.RelativeStep.{name}",
                "factor": factor,
                "mdc": mdc,
                "points": [
                    {"point": ["'cpu-bs16'", str(i)], "ratio": r, "verdict": v} for i, (r, v) in enumerate(points)
                ],
            }
        }
    }


def test_the_table_fails_a_run_that_did_not_show_what_it_must():
    from scripts.inject_regression import failures, table

    quiet_miss = _verdict("track_pipelined", 1.05, 0.05, (1.11, "slower"), (1.04, "no change"))
    assert len(failures("uniform-10", quiet_miss)) == 1
    promised = _verdict("track_pipelined", 1.05, 0.08, (1.09, "inconclusive"))
    assert "the MDC said it could be seen" in failures("uniform-10", promised)[0]
    blind = _verdict("track_pipelined", 1.05, 0.3, (1.12, "inconclusive"))
    assert failures("uniform-10", blind) == []
    assert failures("uniform-10", _verdict("track_pipelined_host_p99", 1.25, 0.0, (1.0, "no change"))) == []
    assert len(failures("identical", _verdict("track_pipelined", 1.05, 0.01, (1.2, "slower")))) == 1
    assert failures("identical", blind) == []
    assert failures("stall", _verdict("track_pipelined_host_p99", 1.25, 0.1, (3.0, "slower"))) == []
    rows = table({"identical": blind, "uniform-10": blind}, 50, 2)
    assert rows[0].startswith("| benchmark | point | factor | uniform 10% slower | identical commit |")
    assert (
        rows[2]
        == "| track_pipelined | 'cpu-bs16', 0 | 1.05 | 1.12x inconclusive (MDC 30%) | 1.12x inconclusive (MDC 30%) |"
    )


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--injected", "slow"], "--injected takes uniform, stall and identical"),
        (["--injected", "--rounds", "1"], "--injected needs --rounds >= 2"),
    ],
)
def test_check_regression_refuses_bad_injected_options(argv, said):
    done = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "check_regression.sh"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ASV": "false"},
    )
    assert done.returncode == 2 and said in done.stderr


_FAKE_ASV = r"""#!/usr/bin/env python3
# asv as verdicts.sh calls it: `machine` does nothing; `continuous ... BASE HEAD` writes each
# commit's results with the samples of $FAKE_SAMPLES ({"base": [...], "head": [...]}).
import json, os, sys

if sys.argv[1] == "continuous":
    machine = sys.argv[sys.argv.index("--machine") + 1]
    samples = json.loads(os.environ["FAKE_SAMPLES"])
    os.makedirs(f"results/{machine}", exist_ok=True)
    for commit, which in zip(sys.argv[-2:], ("base", "head")):
        results = {"bench_trace.RelativeStep.track_pipelined": [None, [["'cpu-bs16'"], ["64"]], [samples[which]]]}
        with open(f"results/{machine}/{commit[:8]}-env.json", "w") as f:
            json.dump({"result_columns": ["result", "params", "samples"], "results": results}, f)
    print("| + | fake asv table |")
    sys.exit(1)
"""


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    "base, head, code, said",
    [
        ([1.0] * 9 + [1.01] * 9, [1.3] * 9 + [1.31] * 9, 1, "SLOWER at 1 points"),
        ([1.0] * 9 + [1.5] * 9, [1.3] * 9 + [1.3] * 9, 3, "INCONCLUSIVE"),
        ([1.0] * 9 + [1.01] * 9, [1.0] * 9 + [1.0] * 9, 0, "no change beyond any factor"),
    ],
)
def test_verdicts_exits_with_the_verdict_not_asvs(tmp_path, base, head, code, said):
    """scripts/verdicts.sh between two commits: asv's table (here a fake asv that always
    flags a point and exits 1) comes first, then the verdict, whose exit code it returns,
    and whose JSON it keeps under .asv/verdicts/."""
    repo = tmp_path / "clone"
    for path in (
        "scripts/verdicts.sh",
        "scripts/lib/machine_name.sh",
        "scripts/verdict_noise.py",
        "scripts/__init__.py",
        "benchmarks/verdict_set.py",
        "benchmarks/__init__.py",
    ):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, path), repo / path)
    fake = tmp_path / "asv"
    fake.write_text(_FAKE_ASV)
    fake.chmod(0o755)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + args, check=True, capture_output=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "two"], check=True, capture_output=True)
    env = {
        **os.environ,
        "ASV": str(fake),
        "ASV_MACHINE": "m",
        "FAKE_SAMPLES": json.dumps({"base": base, "head": head}),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    }
    done = subprocess.run(
        ["bash", str(repo / "scripts" / "verdicts.sh"), "HEAD~1", "HEAD"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=repo,
    )
    assert done.returncode == code, done.stdout + done.stderr
    assert "asv continuous exit code 1" in done.stdout and said in done.stdout
    kept = json.loads((repo / ".asv" / "verdicts" / "m.json").read_text())
    assert list(kept["benchmarks"]) == ["trace RelativeStep pipelined"]
    assert not (repo / "results" / "m-verdicts").exists()


def test_the_verdict_set_names_each_factor_and_the_measured_sensitivity(monkeypatch):
    """Every serving RelativeStep figure is a verdict with its own factor (the tail 1.25, the
    median 1.05), and the sensitivity measured per machine covers each of them by the
    name the verdict prints."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.verdict_set import SENSITIVITY, VERDICTS, factor_of
    from scripts.verdict_noise import short

    names = [
        f"bench_{module}.RelativeStep.track_{figure}"
        for module in ("pipelined", "trace", "replay")
        for figure in ("pipelined", "pipelined_host_p99")
    ]
    assert all(re.search(VERDICTS, name) for name in names)
    assert [factor_of(name) for name in names] == [1.05, 1.25] * 3
    assert factor_of("bench_relative.RelativeTime.track_update_block_table") == 1.05
    measured = SENSITIVITY["cpu-2core-vm"]["mdc"]
    assert sorted(measured) == sorted(short(name) for name in names)


def test_the_verdict_reads_past_a_failed_benchmark(tmp_path):
    """asv leaves out a failed benchmark's empty columns (a row of fewer entries): the
    verdict reads on, over the benchmarks that were measured."""
    from scripts import verdict_noise

    columns = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "samples"]
    measured = [None, [["'cpu-bs16'"], ["64"]], "v", 0, 1.0, None, [[1.0] * 9 + [1.01] * 9]]
    results = {MEDIAN: measured, "bench_trace.InverseSpeedup.track_synced": [None, [["'gpu-bs16'"], ["64"]]]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"result_columns": columns, "results": results}))
    assert verdict_noise.judge(str(path), str(path), 2)["trace RelativeStep pipelined"]["verdict"] == "no change"


def test_a_ratio_of_a_mode_left_unmeasured_is_a_skip(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import serving
    from benchmarks.common import SkipNotImplemented

    cache = {"points": {(16, 1024): {"pipelined": {}}}}
    with pytest.raises(SkipNotImplemented, match="synced timing was not measured"):
        serving.ratios(cache, (16, 1024), "synced", "gpu-bs16", "cpu-bs16")


def test_the_mdc_is_the_largest_move_of_its_kind_in_the_run(tmp_path):
    """A benchmark whose own processes stayed within 1% still cannot call 1.2x slower when
    another median verdict of the same run moved by 40% between processes of one commit;
    the tail's MDC is the tail's own."""
    quiet, noisy = MEDIAN, "bench_replay.RelativeStep.track_pipelined"
    base = {(quiet, "cpu-bs16"): [[1.0] * 9, [1.01] * 9], (noisy, "cpu-bs16"): [[1.0] * 9, [1.4] * 9]}
    base[(TAIL, "cpu-bs16")] = [[2.0, 2.0], [2.0, 2.0]]
    head = {(quiet, "cpu-bs16"): [[1.2] * 9, [1.21] * 9], (noisy, "cpu-bs16"): [[1.2] * 9, [1.2] * 9]}
    head[(TAIL, "cpu-bs16")] = [[2.0, 2.0], [2.0, 2.0]]
    code, verdict = _judge(tmp_path, base, head)
    entry = verdict["trace RelativeStep pipelined"]
    assert entry["own_mdc"] == pytest.approx(0.01, abs=1e-3) and entry["mdc"] == pytest.approx(0.4)
    assert entry["points"][0]["verdict"] == "inconclusive" and code == 3
    assert verdict["trace RelativeStep pipelined_host_p99"]["mdc"] == 0.0

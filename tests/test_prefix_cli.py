"""`--prefix-cache off|miss|on` on the command line: refused, in one line naming the option,
where nothing reads it (no replay, a trace without hashes, a variant of another block size, a
build whose managers have no prefix cache); and a whole run's figures (hit rate beside the
bound, the matches' and evictions' host time, pool use) printed and in the JSON, on managers
that follow the contract (`test_prefix_replay.ContractDouble` until the managers have it)."""

from __future__ import annotations

import json
import types

import pytest
from test_prefix_replay import ContractDouble, real_prefix

import disagmoe
from disagmoe_bench import bench, cli, text, variants


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--prefix-cache", "on"], "--prefix-cache needs a replay (--workload azure-conv|mooncake|servegen-offline"),
        (["--workload", "trace", "--prefix-cache", "miss"], "--prefix-cache miss is a replay's"),
        (["--workload", "decode", "--prefix-cache", "on"], "the decode workload has no prefix hashes"),
        (["--workload", "mooncake", "--prefix-cache", "all"], "argument --prefix-cache: invalid choice: 'all'"),
    ],
)
def test_the_option_is_refused_where_nothing_reads_it(argv, said, capsys):
    assert said in refused(argv, capsys)


def with_contract_managers(monkeypatch) -> None:
    """Every design's manager is a ContractDouble (the lab's sizing and checks unchanged)."""
    double = types.SimpleNamespace(cls=ContractDouble)
    monkeypatch.setattr(variants, "design", lambda name: double)
    monkeypatch.setattr(cli, "design", lambda name: double)


def test_a_build_without_the_managers_prefix_cache_is_refused(capsys):
    if hasattr(disagmoe.BlockManager, "match_prefix"):
        pytest.skip("the managers have their prefix cache")
    err = refused(["--workload", "servegen-offline", "--prefix-cache", "on"], capsys)
    assert "--prefix-cache on: the cpu design of this build has no prefix cache (match_prefix)" in err


def test_traces_and_variants_the_cache_cannot_replay_are_refused(tmp_path, capsys, monkeypatch):
    with_contract_managers(monkeypatch)
    err = refused(["--workload", "azure-conv", "--prefix-cache", "miss"], capsys)
    assert "--prefix-cache miss: azure-conv has no prefix hashes" in err and "--prefix-cache off" in err
    err = refused(["--workload", "mooncake", "--prefix-cache", "on", "--variants", "cpu-bs16", "gpu-bs1"], capsys)
    assert "--variants gpu-bs1: --prefix-cache on replays at the scheduler's block size 16" in err
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [1]}) + "\n")
    err = refused(["--trace", str(short), "--prefix-cache", "on"], capsys)
    assert f"--prefix-cache on: {short.name}: request 0: 1 hash ids of 512 tokens for a prompt of 600" in err


def run(tmp_path, mode: str, workload: str = "servegen-offline") -> tuple[str, dict]:
    out = tmp_path / "r.json"
    argv = ["--workload", workload, "--prefix-cache", mode, "--timing", "pipelined", "--quick", "--running", "64"]
    argv += ["--window", "3", "--windows", "2", "--model-layers", "0", "--pool-blocks", "2048", "--output", str(out)]
    assert bench.main(argv) == 0
    return out.read_text(), json.loads(out.read_text())


@pytest.mark.parametrize("mode", ["miss", "on"])
def test_a_prefix_replay_reports_the_hit_rate_beside_its_bound(tmp_path, capsys, monkeypatch, mode):
    with_contract_managers(monkeypatch)
    _, record = run(tmp_path, mode)
    printed = " ".join(capsys.readouterr().out.split())
    assert record["prefix_cache"] == mode and [v["name"] for v in record["variants"]] == [
        "cpu-bs16",
        "gpu-bs16",
        "hybrid-bs16",
    ]
    (prefix,) = record["prefix"]
    assert prefix["point"] == {"trace": "servegen-offline", "running": 64} and prefix["mode"] == mode
    assert 0 <= prefix["hit_rate"] <= prefix["bound"] <= 1 and (prefix["hit_rate"] > 0) == (mode == "on")
    assert prefix["trace_bound"] == pytest.approx(0.4806, abs=1e-4)
    for name, calls in prefix["variants"].items():
        assert calls["match_max_us"] > 0 and calls["largest_match"]["match_us"] <= calls["match_max_us"], name
        assert calls["largest_eviction"]["blocks"] == prefix["largest_eviction_blocks"], name
    workload = record["points"][0]["workload"]
    assert workload["prefix_cache"] == mode and workload["prefix"]["hit_rate"] == prefix["hit_rate"]
    assert workload["num_blocks"] == 2048 and 0 < workload["steps"]["pool_peak"] <= 1
    steps = record["points"][0]["variants"]["gpu-bs16"]["host_step_us"]
    assert 0 < steps["p50"] <= steps["p99"] <= steps["max"]
    assert f"Prefix cache {mode}" in printed and f"hit rate {100 * prefix['hit_rate']:.1f}%" in printed
    assert f"(bound {100 * prefix['bound']:.1f}%; the whole trace's 48.1%)" in printed
    assert "16-token prefix blocks repeat an earlier request's" in printed
    assert max(len(line) for line in capsys.readouterr().out.splitlines() or [""]) <= text.width()


@real_prefix
@pytest.mark.parametrize("mode", ["miss", "on"])
def test_the_real_managers_replay_with_their_prefix_cache(tmp_path, mode):
    _, record = run(tmp_path, mode)
    (prefix,) = record["prefix"]
    assert set(prefix["variants"]) == {"cpu-bs16", "gpu-bs16", "hybrid-bs16"}
    assert (prefix["hit_rate"] > 0) == (mode == "on")

"""benchmarks/bench_prefix.py: n/a (asv's skip) on a commit whose managers have no prefix cache,
and otherwise one process measuring every trace and mode, whose classes read the hit rate,
its bound and each variant's host time per step (on `ContractDouble` managers until the
real ones have their prefix cache)."""

from __future__ import annotations

import os
import types

import pytest
from test_prefix_replay import ContractDouble

import disagmoe
from disagmoe_bench import variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import bench_prefix, serving

    monkeypatch.setattr(serving, "WINDOW", 4)
    monkeypatch.setattr(serving, "WINDOWS", 2)
    monkeypatch.setattr(serving, "WARMUP", 2)
    return types.SimpleNamespace(module=bench_prefix, serving=serving)


def test_a_commit_without_the_managers_prefix_cache_is_skipped(bench, monkeypatch):
    for name in disagmoe.BACKENDS:
        monkeypatch.setitem(disagmoe.BACKENDS, name, type(name, (), {}))
    cache = bench.serving.measure_prefix(["servegen-offline"], ["on"])
    assert "have no match_prefix" in cache["unavailable"]
    with pytest.raises(NotImplementedError, match="no prefix cache"):
        bench.module.Cache().setup(cache, "servegen-offline", "on")
    with pytest.raises(NotImplementedError, match="no prefix cache"):
        bench.module.PrefixStep().setup(cache, "cpu-bs16", "servegen-offline", "on")


def test_one_process_measures_every_trace_and_mode(bench, monkeypatch):
    double = types.SimpleNamespace(cls=ContractDouble)
    monkeypatch.setattr(variants, "design", lambda name: double)
    for name in disagmoe.BACKENDS:
        monkeypatch.setitem(disagmoe.BACKENDS, name, ContractDouble)
    monkeypatch.setattr(bench.serving, "MODES", ("pipelined",))
    cache = bench.serving.measure_prefix(["servegen-offline"], ["off", "miss", "on"])
    assert "unavailable" not in cache and set(cache["prefix"]) == {("servegen-offline", m) for m in ("miss", "on")}
    step, rates = bench.module.PrefixStep(), bench.module.Cache()
    hit = rates.track_hit_rate(cache, "servegen-offline", "on")
    assert 0.3 < hit <= rates.track_bound(cache, "servegen-offline", "on") < 0.5
    assert rates.track_hit_rate(cache, "servegen-offline", "miss") == 0
    for variant in bench.serving.PREFIX_VARIANTS:
        for mode in ("off", "miss", "on"):
            step.setup(cache, variant, "servegen-offline", mode)
            p50 = step.track_pipelined_host_p50(cache, variant, "servegen-offline", mode)["samples"][0]
            p99 = step.track_pipelined_host_p99(cache, variant, "servegen-offline", mode)["samples"][0]
            assert 0 < p50 <= p99
    with pytest.raises(NotImplementedError):  # no busy timing without CUDA (asv: n/a)
        step.track_busy_added(cache, "cpu-bs16", "servegen-offline", "on")

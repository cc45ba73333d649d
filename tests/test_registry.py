"""The registry of designs: every list reads it, bad registrations are refused with nothing
changed, and a design added in its own file with one registry line (`throwaway_design.py`)
runs the contract tests and appears in the lab's lists."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import disagmoe
from disagmoe import BACKENDS, DESIGNS, CPUBlockManager, Design, GPUBlockManager, HybridBlockManager, register
from disagmoe.block_manager import design
from disagmoe.block_manager.registry import unregister

TESTS = os.path.dirname(__file__)
CONTRACT_TESTS = [
    "test_update_block_table.py",
    "test_pack_flash_attn_metadata.py",
    "test_attention.py",
    "test_edges.py",
    "test_errors.py",
]


def test_the_package_registers_its_three_designs_in_order():
    assert list(DESIGNS) == ["cpu", "gpu", "hybrid"]
    assert BACKENDS == {"cpu": CPUBlockManager, "gpu": GPUBlockManager, "hybrid": HybridBlockManager}
    assert disagmoe.BACKENDS is BACKENDS
    assert [d.default_block_size for d in DESIGNS.values()] == [16, 16, 16]
    assert DESIGNS["gpu"].block_sizes == (1, 16) and DESIGNS["cpu"].block_sizes == (16,)
    assert DESIGNS["cpu"].kernels == () and DESIGNS["hybrid"].kernels == ("triton", "torch")


def test_the_lab_lists_read_the_registry():
    from disagmoe_bench import seed, variants

    assert seed.DESIGNS == tuple(DESIGNS)
    assert variants.VARIANT_NAMES == ("cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16")
    assert variants.BASELINE.name == "cpu-bs16"


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (Design("cpu", HybridBlockManager), ValueError, "name='cpu' is taken by CPUBlockManager"),
        (Design("Mine", HybridBlockManager), ValueError, "name='Mine'"),
        (Design("", HybridBlockManager), ValueError, "name=''"),
        (Design("mine", dict), TypeError, "cls=<class 'dict'>"),  # type: ignore[arg-type]
        (Design("mine", HybridBlockManager, ("cuda",)), ValueError, "'cuda' is unknown"),
        (Design("mine", HybridBlockManager, benchmark_block_sizes=(0,)), ValueError, "holds 0"),
        ("mine", TypeError, "design='mine' is not a Design"),
    ],
)
def test_a_bad_registration_is_refused_and_changes_nothing(bad, error, words):
    before = (dict(DESIGNS), dict(BACKENDS))
    with pytest.raises(error, match=re.escape(words)):
        register(bad)
    assert (DESIGNS, BACKENDS) == before


def test_lookups_name_the_unknown_design():
    with pytest.raises(ValueError, match=r"design='nope' is not one of the designs \['cpu', 'gpu', 'hybrid'\]"):
        design("nope")
    with pytest.raises(KeyError, match="no design named 'nope'"):
        unregister("nope")


def test_register_then_unregister_round_trips():
    class Mine(HybridBlockManager):
        pass

    register(Design("mine", Mine, ("torch",)))
    try:
        assert list(DESIGNS)[-1] == "mine" and BACKENDS["mine"] is Mine and design("mine").kernels == ("torch",)
    finally:
        unregister("mine")
    assert list(DESIGNS) == ["cpu", "gpu", "hybrid"] and "mine" not in BACKENDS


def _run_with_throwaway(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISAGMOE_TEST_DESIGNS": "throwaway_design", "PYTHONPATH": TESTS}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=os.path.dirname(TESTS), timeout=600
    )


def test_a_throwaway_design_runs_the_contract_tests():
    """Its own file and one registry line: the configurations derive from the registry, so
    the contract's tests run on it (on torch's CPU device here, on CUDA too where there is
    one) and pass."""
    files = [os.path.join(TESTS, f) for f in CONTRACT_TESTS]
    proc = _run_with_throwaway(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "throwaway", *files])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 100, proc.stdout[-2000:]
    assert "failed" not in proc.stdout.splitlines()[-1]


def test_a_throwaway_design_joins_the_lab_lists():
    code = (
        "import throwaway_design\n"
        "from disagmoe_bench import seed, variants\n"
        "print(seed.DESIGNS, variants.VARIANT_NAMES)\n"
        "m = seed.make_manager('throwaway', 4, 32, 'cpu')\n"
        "print(type(m).__name__, m.block_size)\n"
    )
    proc = _run_with_throwaway(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    designs = ("cpu", "gpu", "hybrid", "throwaway")
    names = ("cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16", "throwaway-bs8")
    assert lines[0] == f"{designs} {names}"
    assert lines[1] == "ThrowawayBlockManager 8"


def test_the_suite_literals_match_the_registry(monkeypatch):
    """asv's suite keeps literal lists (old commits predate the registry); they must name
    what the registry and the lab list today."""
    from benchmarks import common, serving
    from disagmoe_bench import variants

    assert common.DESIGNS == list(DESIGNS)
    if "DISAGMOE_SERVING_VARIANTS" not in os.environ:
        assert tuple(serving.VARIANTS) == variants.VARIANT_NAMES

"""The library apart from the lab: `import disagmoe` (what an engine imports) loads none of
the benchmark harness, its traces or plotting, and the lab finds its data where it is
installed."""

from __future__ import annotations

import os
import subprocess
import sys

LAB = ("disagmoe_bench", "benchmarks", "matplotlib", "disagmoe.serving", "disagmoe.bench", "disagmoe.workloads")


def test_import_disagmoe_loads_nothing_of_the_lab():
    code = (
        "import sys, disagmoe\n"
        "from disagmoe import BACKENDS\n"
        "for design in BACKENDS.values(): design.__name__\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LAB!r} or m in {LAB!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_library_has_no_lab_modules_left():
    import disagmoe

    for name in ("serving", "bench", "workloads", "data"):
        assert not hasattr(disagmoe, name)
        try:
            __import__(f"disagmoe.{name}")
        except ImportError:
            continue
        raise AssertionError(f"disagmoe.{name} is still importable: it belongs to disagmoe_bench")


def test_the_lab_finds_its_bundled_traces():
    from disagmoe_bench import traces

    for name in ("azure", "mooncake"):
        path = traces.bundled(name)
        assert path.is_file() and path.stat().st_size > 0
        assert path.parent.name == "traces" and path.parent.parent.parent.name == "disagmoe_bench"


def test_every_bound_function_is_called_by_the_library():
    """No native function or method is there for the tests alone: each public callable of
    `disagmoe._C` (module functions and the methods of its classes; not the fields of its
    records) is named by the library, the lab or the asv suite (`name(` or `.name`)."""
    import inspect
    import re

    from disagmoe import _C

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = ""
    for package in ("disagmoe", "disagmoe_bench", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(root, package)):
            text += "".join(open(os.path.join(folder, f)).read() for f in files if f.endswith(".py"))
    unused = []
    for name in dir(_C):
        obj = getattr(_C, name)
        if name.startswith("_"):
            continue
        if not inspect.isclass(obj):
            if callable(obj) and not re.search(rf"\b{name}\(", text):
                unused.append(name)
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(member):
                continue
            if not re.search(rf"\.{attr}\b", text):
                unused.append(f"{name}.{attr}")
    assert unused == []

"""disagmoe/_C.pyi against the compiled module.

mypy.stubtest (.ci/run) checks what exists and what kind of thing it is, but it cannot
read a pybind11 function's parameters: those are only in its docstring's first line.
This test compares them, name by name, with their defaults, for every function and
method of the stub, and the fields of the named results.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from disagmoe import _C

STUB = Path(_C.__file__).with_name("_C.pyi")
MISSING = object()


def split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def runtime_params(func) -> list[tuple[str, object]]:
    """(name, default) of each parameter, from pybind11's `name(a: T, b: T = v) -> R`."""
    line = func.__doc__.splitlines()[0]
    inside = line[line.index("(") + 1 : line.rindex(") ->")]
    params = []
    for part in split_top_level(inside):
        name, _, rest = part.partition(":")
        _, eq, default = rest.partition(" = ")
        params.append((name.strip(), ast.literal_eval(default) if eq else MISSING))
    return params


def stub_params(node: ast.FunctionDef) -> list[tuple[str, object]]:
    args = node.args.args
    defaults = [MISSING] * (len(args) - len(node.args.defaults)) + [ast.literal_eval(d) for d in node.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults)]


def is_property(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)


def stub_functions():
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node.name, getattr(_C, node.name), node
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_C, node.name)
            for item in node.body:
                if (
                    isinstance(item, ast.FunctionDef)
                    and not is_property(item)
                    and (item.name == "__init__" or not item.name.startswith("__"))
                ):
                    yield f"{node.name}.{item.name}", getattr(cls, item.name), item


FUNCTIONS = list(stub_functions())


@pytest.mark.parametrize("name, runtime, node", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_parameters_match(name, runtime, node):
    if node.name == "__init__" and "No constructor" in (runtime.__doc__ or ""):
        pytest.skip("no constructor")
    assert stub_params(node) == runtime_params(runtime)


def test_every_method_is_in_the_stub():
    tree = ast.parse(STUB.read_text())
    in_stub = {
        f"{c.name}.{f.name}"
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        for f in c.body
        if isinstance(f, ast.FunctionDef)
    }
    in_stub |= {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    for cls_name in ("BlockBooks", "RequestTable", "MetadataLayout"):
        cls = getattr(_C, cls_name)
        for attr in vars(cls):
            if not attr.startswith("_"):
                assert f"{cls_name}.{attr}" in in_stub, f"_C.{cls_name}.{attr} is not in _C.pyi"
    for attr in vars(_C):
        if callable(getattr(_C, attr)) and not attr.startswith("_") and not isinstance(getattr(_C, attr), type):
            assert attr in in_stub, f"_C.{attr} is not in _C.pyi"


def test_batch_stats_fields_match():
    tree = ast.parse(STUB.read_text())
    node = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "BatchStats")
    fields = [f.name for f in node.body if isinstance(f, ast.FunctionDef) and is_property(f)]
    assert tuple(fields) == _C.BatchStats.__match_args__
    match_args = next(a for a in node.body if isinstance(a, ast.AnnAssign))
    assert ast.literal_eval(match_args.value) == _C.BatchStats.__match_args__

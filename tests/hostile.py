"""Hostile values for the tests and the fuzz target: objects whose __index__ runs code.

Each is an "int" to anything that calls operator.index on it, and does something
else besides: raises, returns a non-int, empties or grows the list holding it, or
calls a manager. A manager must read each of them once, as the int it returns,
or refuse it with a TypeError naming it; never crash, never mix up two calls.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import numpy as np
import torch


class Index:
    """An int whose __index__ first runs `action` (if any), then returns `value`."""

    def __init__(self, value: int, action: Callable[[], object] | None = None) -> None:
        self.value = value
        self.action = action
        self.calls = 0

    def __index__(self) -> int:
        self.calls += 1
        if self.action is not None:
            self.action()
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


class EqualsAnything(Index):
    """An int by __index__ that says it equals anything: whatever compares batches by ==
    instead of by the ints it reads takes it for any id."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EqualsAnything({self.value})"


class IndexRaises:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __index__(self) -> int:
        raise self.error

    def __repr__(self) -> str:
        return f"IndexRaises({self.error!r})"


class IndexReturns:
    """__index__ returns `value`, which is not an int (Python refuses it)."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __index__(self):
        return self.value

    def __repr__(self) -> str:
        return f"IndexReturns({self.value!r})"


class BadRepr(IndexRaises):
    """Not an int, and its repr raises too: the error message must still come out."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


SPRAY: list[bytearray] = []  # keeps what clears() wrote over freed memory alive


def clears(items: list, value: int) -> Index:
    """An item that empties `items` when read, then fills freed memory of the size its
    array had with 0xff bytes: a reader still holding that array reads garbage pointers."""

    def action():
        nbytes = 8 * len(items)
        items.clear()  # its items die now (the list held the last reference to most)
        SPRAY.clear()
        SPRAY.extend(bytearray(b"\xff" * nbytes) for _ in range(64))

    return Index(value, action)


def grows(items: list, value: int, count: int = 10_000) -> Index:
    """An item that appends `count` ints to `items` when read (the list reallocates)."""
    return Index(value, lambda: items.extend(range(10**6, 10**6 + count)))


# Values that are not ints, for any int argument: each must be a TypeError naming it.
NOT_INTS = {
    "bool": True,
    "float": 1.5,
    "integral-float": 2.0,
    "fraction": Fraction(3, 2),
    "integral-fraction": Fraction(2, 1),
    "none": None,
    "str": "2",
    "bytes": b"2",
    "list": [2],
    "numpy-float": np.float64(2.0),
    "numpy-bool": np.bool_(True),
    "float-tensor": torch.tensor(1.5),
    "complex": 2 + 0j,
    "index-raises-value-error": IndexRaises(ValueError("no")),
    "index-raises-runtime-error": IndexRaises(RuntimeError("no")),
    "index-returns-float": IndexReturns(2.0),
    "index-returns-str": IndexReturns("2"),
    "bad-repr": BadRepr(ValueError("no")),
}

# Values that are ints by __index__ (operator.index accepts them; only Python's bool
# is refused besides): each must act exactly as int(value).
INT_LIKE = {
    "numpy-int64": lambda v: np.int64(v),
    "numpy-uint8": lambda v: np.uint8(v),
    "int-tensor": lambda v: torch.tensor(v),
    "int-tensor-1-element": lambda v: torch.tensor([v]),  # torch indexes these too
    "int-subclass": lambda v: type("MyInt", (int,), {})(v),
    "index": lambda v: Index(v),
    "equals-anything": lambda v: EqualsAnything(v),
}

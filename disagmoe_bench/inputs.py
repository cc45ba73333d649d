"""Checks of the benchmarks' inputs (the command line's options, the asv modules' environment
variables) before anything runs: every refusal is one sentence naming the option and its
value, decided by arithmetic on what the package's types hold, never by a run that starts
and fails later.

A grid point's manager holds B requests of up to `max_seq_len` tokens in a pool of B x
ceil(max_seq_len / block_size) blocks: its slots, B x that many blocks x the block size,
must stay within the int32 range of slots, as every count does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_INT32 = 2**31 - 1
MAX_STEPS = 1_000_000
"""Steps a grid point may run (warm-up and windows): each is built on the host first."""
MAX_FORWARD_US = 1e6
MAX_LAYERS = 4096


class InputError(ValueError):
    """A benchmark input out of range: the message names the option and its value."""


def count(option: str, value: int, low: int = 1, high: int = MAX_INT32) -> int:
    if not low <= value <= high:
        raise InputError(f"{option} {value} must be in [{low}, {high}]")
    return value


def pool_slots(option: str, requests: int, max_seq_len: int, block_size: int) -> int:
    """The slots of a pool for `requests` requests of up to `max_seq_len` tokens; InputError
    when they pass the int32 range of slots."""
    slots = requests * math.ceil(max_seq_len / block_size) * block_size
    if max_seq_len > MAX_INT32 or slots > MAX_INT32:
        raise InputError(
            f"{option}: {requests} requests of up to {max_seq_len} tokens at block size {block_size} "
            f"need {slots} KV slots, past the int32 range of slots ({MAX_INT32})"
        )
    return slots


def forward_us(value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_FORWARD_US):
        raise InputError(f"--forward-us {value} must be a number in (0, {MAX_FORWARD_US:.0f}]")
    return value


def output_path(option: str, path: str | Path) -> Path:
    """A file the run may write at its end: its folder exists and is writable, and it is not
    a folder itself (checked before the run, which may take minutes)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not a file")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{option} {path}: its folder {parent} {what}")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option} {path}: not writable")
    return path


def env_ints(variable: str, default: list[int]) -> list[int]:
    """The integers listed in an environment variable (spaces or commas), each in [1, 2**31 - 1];
    ValueError naming the variable and the value otherwise."""
    text = os.environ.get(variable, "")
    items = text.replace(",", " ").split()
    if not items:
        return default
    values = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise InputError(f"{variable}={text!r}: {item!r} is not an integer") from None
        if not 1 <= value <= MAX_INT32:
            raise InputError(f"{variable}={text!r}: {value} must be in [1, {MAX_INT32}]")
        values.append(value)
    return values


def env_names(variable: str, default: list[str], allowed: tuple[str, ...] | None = None) -> list[str]:
    """The names listed in an environment variable, each one of `allowed` if given."""
    text = os.environ.get(variable, "")
    names = text.replace(",", " ").split() or default
    if allowed is not None:
        bad = [n for n in names if n not in allowed]
        if bad:
            raise InputError(f"{variable}={text!r}: {bad[0]!r} is not one of {', '.join(allowed)}")
    return names

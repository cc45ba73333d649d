"""Checks of the benchmarks' inputs (the command line's options, the asv modules' environment
variables) before anything runs: every refusal is one sentence naming the option and its
value, decided by arithmetic on what the package's types hold, never by a run that starts
and fails later.

A grid point's manager holds B requests of up to `max_seq_len` tokens in a pool of B x
ceil(max_seq_len / block_size) blocks: its slots, B x that many blocks x the block size,
must stay within the int32 range of slots, as every count does.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path

MAX_INT32 = 2**31 - 1
MAX_STEPS = 1_000_000
"""Steps a grid point may run (warm-up and windows): each is built on the host first."""
MAX_FORWARD_US = 1e6
MAX_LAYERS = 4096
WORKLOAD_OPTIONS = {
    "decode": ("batch_sizes", "contexts", "lengths"),
    "trace": ("running", "prompts", "chunk", "max_output", "seed"),
    "--trace": ("trace", "trace_format", "running", "chunk", "rate_scale", "pool_blocks", "step_ms"),
    "bundled": ("running", "chunk", "rate_scale", "pool_blocks", "step_ms"),
}
"""The options only some workloads read, by workload: decode, trace, a replay of a --trace
file, a bundled replay. Every workload reads the others (--model-layers, --prefix-cache
and --plot are refused where they do not apply, each for its own reason)."""
_READERS = {
    "decode": "--workload decode",
    "trace": "--workload trace",
    "--trace": "--trace",
    "bundled": "bundled replays",
}


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


def unread_option(workload: str, shown: str, given: list[str]) -> None:
    """InputError for the first option of `given` (set on the command line) that `workload`
    (a key of WORKLOAD_OPTIONS, shown as `shown`) never reads."""
    for name in given:
        readers = [_READERS[w] for w, names in WORKLOAD_OPTIONS.items() if name in names]
        if readers and name not in WORKLOAD_OPTIONS[workload]:
            option = "--" + name.replace("_", "-")
            raise InputError(f"{shown} never reads {option} (read by {', '.join(readers)})")


def output_path(option: str, path: str | Path) -> Path:
    """A file the run may write at its end: its folder exists and takes new files (writable
    and searchable), and it is a regular file if it exists: not a folder, nor a device or a
    FIFO that would fail or block only at the end (checked before the run, which may take
    minutes)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not a file")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{option} {path}: its folder {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: its folder {parent} is not writable and searchable")
    if path.exists() and not path.is_file():
        raise InputError(f"{option} {path}: not a regular file (a device, FIFO or socket): the numbers go to a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path}: not writable")
    return path


def plot_format(option: str, path: str | Path) -> str:
    """The format a map is drawn in, from the file's suffix: one that matplotlib writes
    (InputError otherwise, before the run rather than at its end). Needs matplotlib."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        said = f"matplotlib draws no .{suffix} file" if suffix else "no suffix to tell the map's format"
        raise InputError(f"{option} {path}: {said}; name a .{', .'.join(formats)} file")
    return suffix


def input_file(option: str, path: str | Path) -> Path:
    """A regular file the run reads: not missing, not a folder, not a FIFO or a device
    (whose reading could block or never end), readable."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{option} {path}: no such file") from None
        raise InputError(f"{option} {path}: cannot be read: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{option} {path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{option} {path}: not a regular file (a FIFO, a device or a socket)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{option} {path}: cannot be read (permission denied)")
    return path


def distinct_files(paths: dict[str, str | Path | None]) -> None:
    """InputError when two of the options (option -> path; None: not given) name one file."""
    named = [(option, Path(path)) for option, path in paths.items() if path is not None]
    for k, (option, path) in enumerate(named):
        for other, other_path in named[k + 1 :]:
            if _same_file(path, other_path):
                raise InputError(f"{option} {path} is the file of {other} {other_path}: one would overwrite the other")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return os.path.abspath(a) == os.path.abspath(b)


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

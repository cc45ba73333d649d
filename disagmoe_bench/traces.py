"""Production LLM serving traces: arrivals with prompt and output lengths.

Two formats, each read from any file of that format:

- `azure`: the Azure LLM inference trace CSV (AzurePublicDataset): columns
  `TIMESTAMP` (`YYYY-MM-DD HH:MM:SS.fffffff`), `ContextTokens`, `GeneratedTokens`;
- `mooncake`: the Mooncake trace JSONL: one object a line with `timestamp` (ms),
  `input_length`, `output_length` and, optionally, `hash_ids` (the prompt's
  prefix-block hashes).

Both give `TraceRequest`s in file order, arrivals in seconds after the first
request's. A malformed file raises `TraceError` naming the file, the line and
what is wrong. The package bundles one trace of each format (`bundled`; sources,
licences and citations in disagmoe_bench/data/traces/ATTRIBUTION.md).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

FORMATS = ("azure", "mooncake")
SUFFIXES = {".csv": "azure", ".jsonl": "mooncake"}
BUNDLED = {"azure": "AzureLLMInferenceTrace_conv.csv", "mooncake": "mooncake_conversation_trace.jsonl"}
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")

_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class TraceRequest:
    """One request: its arrival (seconds after the trace's first), its prompt and output
    tokens, and the hashes of its prompt's prefix blocks (Mooncake; empty otherwise)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_blocks: tuple[int, ...] = ()


class TraceError(ValueError):
    """A malformed trace file: `path`, `line` (1-based) and the `problem`."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        super().__init__(f"{path}: line {line}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.line, self.problem)


def bundled(format: str) -> Path:
    """The path of the trace of `format` ("azure" or "mooncake") bundled with the package."""
    if format not in BUNDLED:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    return Path(__file__).resolve().parent / "data" / "traces" / BUNDLED[format]


def read_trace(path: str | Path, format: str | None = None) -> list[TraceRequest]:
    """The requests of the trace at `path`; `format` None: from the suffix (.csv: azure,
    .jsonl: mooncake)."""
    if format is None:
        format = SUFFIXES.get(Path(path).suffix.lower())
        if format is None:
            raise ValueError(
                f"{path}: cannot tell the trace's format from its suffix "
                f"(one of {sorted(SUFFIXES)}); pass format= one of {FORMATS}"
            )
    if format == "azure":
        return read_azure(path)
    if format == "mooncake":
        return read_mooncake(path)
    raise ValueError(f"format={format!r} is not one of {FORMATS}")


def read_azure(path: str | Path) -> list[TraceRequest]:
    """The Azure LLM inference trace CSV at `path` (see the module's docstring)."""
    with open(path, "rb") as file:
        reader = csv.reader(_lines(file, path), strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(path, 1, "the file is empty")
            names = [name.strip() for name in header]
            missing = [name for name in AZURE_COLUMNS if name not in names]
            if missing:
                raise TraceError(path, reader.line_num, f"missing column {missing[0]!r} (the header has {names})")
            columns = [names.index(name) for name in AZURE_COLUMNS]
            rows = []
            for row in reader:
                if len(row) <= 1 and not "".join(row).strip():
                    continue
                if len(row) != len(names):
                    raise TraceError(path, reader.line_num, f"{len(row)} fields, the header has {len(names)}")
                stamp, prompt, output = (row[c].strip() for c in columns)
                line = reader.line_num
                rows.append(
                    (
                        line,
                        _azure_time(stamp, path, line),
                        stamp,
                        _length(prompt, "ContextTokens", path, line),
                        _length(output, "GeneratedTokens", path, line),
                    )
                )
        except csv.Error as exc:
            raise TraceError(path, reader.line_num, f"not CSV: {exc}") from None
    if not rows:
        raise TraceError(path, reader.line_num + 1, "no requests after the header")
    return _requests(path, rows, 10**9)


def read_mooncake(path: str | Path) -> list[TraceRequest]:
    """The Mooncake trace JSONL at `path` (see the module's docstring)."""
    rows = []
    line = 0
    with open(path, "rb") as file:
        for line, text in enumerate(_lines(file, path), 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceError(path, line, f"invalid JSON: {exc}") from None
            if not isinstance(record, dict):
                raise TraceError(path, line, f"a JSON {type(record).__name__}, not an object")
            for name in MOONCAKE_FIELDS:
                if name not in record:
                    raise TraceError(path, line, f"missing field {name!r}")
            stamp = record["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
                raise TraceError(path, line, f"timestamp={stamp!r} is not a number of milliseconds")
            prefix = record.get("hash_ids", [])
            if not isinstance(prefix, list) or not all(type(h) is int and h >= 0 for h in prefix):
                raise TraceError(path, line, f"hash_ids={prefix!r:.80} is not a list of non-negative integers")
            rows.append(
                (
                    line,
                    stamp,
                    f"{stamp} ms",
                    _length(record["input_length"], "input_length", path, line),
                    _length(record["output_length"], "output_length", path, line),
                    tuple(prefix),
                )
            )
    if not rows:
        raise TraceError(path, line + 1, "the file holds no requests")
    return _requests(path, rows, 1000)


def prefix_reuse(requests: Iterable[TraceRequest], block_tokens: int = 512) -> float:
    """The share of prefix blocks (`prefix_blocks`, `block_tokens` tokens each) whose hash
    an earlier request already had: what a prefix cache could at most reuse. 0.0 for a
    trace without hashes; ValueError when a request's blocks do not cover its prompt."""
    if type(block_tokens) is not int or block_tokens < 1:
        raise ValueError(f"block_tokens={block_tokens!r} is not an int >= 1")
    seen: set[int] = set()
    total = reused = 0
    for index, request in enumerate(requests):
        blocks = request.prefix_blocks
        if blocks and len(blocks) != -(-request.prompt_tokens // block_tokens):
            raise ValueError(
                f"request {index}: {len(blocks)} prefix blocks of {block_tokens} tokens for a "
                f"prompt of {request.prompt_tokens} tokens"
            )
        total += len(blocks)
        reused += sum(block in seen for block in blocks)
        seen.update(blocks)
    return reused / total if total else 0.0


def _lines(file: BinaryIO, path: str | Path) -> Iterator[str]:
    """The file's lines as text (a leading byte-order mark dropped); a line that is not
    UTF-8 is a TraceError naming it."""
    for line, data in enumerate(file, 1):
        try:
            text = data.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(path, line, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        yield text


def _length(value: object, name: str, path: str | Path, line: int) -> int:
    """A token count >= 1 from a CSV field (a str of digits) or a JSON value (an int)."""
    number = None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    elif type(value) is int:
        number = value
    if number is None:
        raise TraceError(path, line, f"{name}={value!r:.40} is not an integer")
    if number < 1:
        raise TraceError(
            path,
            line,
            f"{name}={number} is negative" if number < 0 else f"{name}=0: a request has at least 1 token of each kind",
        )
    return number


def _azure_time(text: str, path: str | Path, line: int) -> int:
    """`YYYY-MM-DD HH:MM:SS[.f...]` (up to 9 fractional digits) in nanoseconds."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise TraceError(path, line, f"TIMESTAMP={text!r:.40} is not YYYY-MM-DD HH:MM:SS.fffffff")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise TraceError(path, line, f"TIMESTAMP={text!r}: {exc}") from None
    fraction = match.group(7) or ""
    seconds = moment.toordinal() * 86400 + hour * 3600 + minute * 60 + second
    return seconds * 10**9 + int(fraction.ljust(9, "0"))


def _requests(path: str | Path, rows: list[tuple], per_second: int) -> list[TraceRequest]:
    """Requests from (line, time in 1 / `per_second` s, the time as written, prompt, output[,
    prefix]) rows, the arrivals relative to the first; TraceError when a time goes back."""
    first = previous = rows[0][1]
    shown = rows[0][2]
    requests = []
    for line, stamp, text, prompt, output, *prefix in rows:
        if stamp < previous:
            raise TraceError(path, line, f"the arrival goes back in time: {text} after {shown} on an earlier line")
        previous, shown = stamp, text
        requests.append(TraceRequest((stamp - first) / per_second, prompt, output, *prefix))
    return requests

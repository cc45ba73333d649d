"""Production LLM serving traces: arrivals with prompt and output lengths, and the prompts'
prefix-block hashes where a trace has them.

Three formats, each read from any file of that format:

- `azure`: the Azure LLM inference trace CSV (AzurePublicDataset): columns
  `TIMESTAMP` (`YYYY-MM-DD HH:MM:SS.fffffff`), `ContextTokens`, `GeneratedTokens`;
  no hashes;
- `mooncake`: the Mooncake trace JSONL: one object a line with `timestamp` (ms),
  `input_length`, `output_length` and, optionally, `hash_ids` (the prompt's
  prefix-block hashes, one per 512 tokens);
- `servegen`: ServeGen's offline (batch job) trace JSONL: one object a line with
  `request_id` (increasing: the order of the submitted file), `input_length` and
  `hash_ids` (one per 16 tokens, `ceil(input_length / 16)` of them); other fields are
  ignored. A batch job is submitted at once and the trace has no times and no output
  lengths, so `read_servegen` supplies them: every request arrives at time 0 (the
  burst), or, given a rate, at Poisson arrivals (the first at 0, then exponential gaps of
  mean 1 / rate, numpy's `default_rng(seed)`); output lengths are drawn log-uniform on
  [16, 512] tokens (`SERVEGEN_OUTPUT`: the job is a dictionary translation, whose answers
  are about as long as the entry's own ~170 tokens) from the same seeded generator,
  before the gaps, so that both replays give each request the same output length.

Each gives `TraceRequest`s in file order, arrivals in seconds after the first
request's. A malformed file raises `TraceError` naming the file, the line and
what is wrong, quoting at most `SHOWN` characters of the file: lengths are ASCII
integers in [1, `MAX_TOKENS`], Mooncake's timestamps finite numbers within
+-`MAX_MILLISECONDS`, hash ids integers in [0, 2**64); JSON is strict (no NaN or
Infinity, no key twice, numbers that fit a float). The package bundles one trace of each format (`bundled`; the
ServeGen one is the head of a larger file; sources, licences and citations in
disagmoe_bench/data/traces/ATTRIBUTION.md), replayed under the names of `REPLAYS`.
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

import numpy as np

FORMATS = ("azure", "mooncake", "servegen")
SUFFIXES = {".csv": "azure", ".jsonl": "mooncake"}
BUNDLED = {
    "azure": "AzureLLMInferenceTrace_conv.csv",
    "mooncake": "mooncake_conversation_trace.jsonl",
    "servegen": "servegen_offline_trace_a_head.jsonl",
}
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
MOONCAKE_BLOCK_TOKENS = 512
SERVEGEN_FIELDS = ("request_id", "input_length", "hash_ids")
SERVEGEN_BLOCK_TOKENS = 16
SERVEGEN_OUTPUT = (16, 512)
"""The output lengths drawn for ServeGen's requests: log-uniform on [low, high] tokens."""
SERVEGEN_RATE = 40.0
"""Requests a second of ServeGen's Poisson replay (`servegen-offline-poisson`)."""
REPLAYS = {
    "azure-conv": ("azure", None),
    "mooncake": ("mooncake", None),
    "servegen-offline": ("servegen", None),
    "servegen-offline-poisson": ("servegen", SERVEGEN_RATE),
}
"""The bundled traces' replays by name: (format, ServeGen's Poisson rate or None: a burst)."""

MAX_TOKENS = 2**31 - 1
"""The longest prompt or output a trace may give: the managers' lengths are int32."""
MAX_MILLISECONDS = 2**53
"""Mooncake's timestamps lie within +-this: exact in a float, whose differences stay finite."""
SHOWN = 40
"""Characters of a bad value a TraceError quotes (its whole problem stays under 200)."""

_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?", re.ASCII)
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class TraceRequest:
    """One request: its arrival (seconds after the trace's first), its prompt and output
    tokens, and the hashes of its prompt's prefix blocks (empty where the trace has none),
    each covering `prefix_block_tokens` tokens (Mooncake 512, ServeGen 16; the last block
    may be partial); `disagmoe_bench.prefix_hashes` makes the scheduler's keys of them."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_blocks: tuple[int, ...] = ()
    prefix_block_tokens: int = MOONCAKE_BLOCK_TOKENS


class TraceError(ValueError):
    """A malformed trace file: `path`, `line` (1-based) and the `problem`."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        problem = problem if len(problem) <= 200 else problem[:197] + "..."
        super().__init__(f"{path}: line {line}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.line, self.problem)


def bundled(format: str) -> Path:
    """The path of the trace of `format` (one of `FORMATS`) bundled with the package."""
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
    if format == "servegen":
        return read_servegen(path)
    raise ValueError(f"format={format!r} is not one of {FORMATS}")


def read_replay(name: str) -> list[TraceRequest]:
    """The requests of the bundled replay `name` (one of `REPLAYS`)."""
    if name not in REPLAYS:
        raise ValueError(f"replay {name!r} is not one of {list(REPLAYS)}")
    format, rate = REPLAYS[name]
    if format == "servegen":
        return read_servegen(bundled(format), rate)
    return read_trace(bundled(format), format)


def read_azure(path: str | Path) -> list[TraceRequest]:
    """The Azure LLM inference trace CSV at `path` (see the module's docstring)."""
    with open(path, "rb") as file:
        reader = csv.reader(_lines(file, path), strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(path, 1, "the file is empty")
            names = [name.strip() for name in header]
            columns = _azure_columns(names, path, reader.line_num)
            rows = []
            for row in reader:
                if len(row) <= 1 and not "".join(row).strip():
                    continue
                if [field.strip() for field in row] == names:
                    raise TraceError(path, reader.line_num, "the header again: one header, then requests")
                if len(row) != len(names):
                    raise TraceError(path, reader.line_num, f"{len(row)} fields, the header has {len(names)}")
                stamp, prompt, output = (row[c].strip() for c in columns)
                line = reader.line_num
                rows.append(
                    (
                        line,
                        _azure_time(stamp, path, line),
                        stamp,
                        _length(_csv_integer(prompt, "ContextTokens", path, line), "ContextTokens", path, line),
                        _length(_csv_integer(output, "GeneratedTokens", path, line), "GeneratedTokens", path, line),
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
            record = _object(text, path, line, MOONCAKE_FIELDS)
            stamp = record["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
                raise TraceError(path, line, f"timestamp={_shown(stamp)} is not a number of milliseconds")
            if not -MAX_MILLISECONDS <= stamp <= MAX_MILLISECONDS:
                raise TraceError(
                    path, line, f"timestamp={_shown(stamp)} ms is not within +-{MAX_MILLISECONDS} ms (2**53)"
                )
            prefix = _hash_ids(record.get("hash_ids", []), path, line)
            rows.append(
                (
                    line,
                    stamp,
                    f"{stamp} ms",
                    _length(record["input_length"], "input_length", path, line),
                    _length(record["output_length"], "output_length", path, line),
                    prefix,
                )
            )
    if not rows:
        raise TraceError(path, line + 1, "the file holds no requests")
    return _requests(path, rows, 1000)


def read_servegen(path: str | Path, rate: float | None = None, seed: int = 0) -> list[TraceRequest]:
    """ServeGen's offline trace JSONL at `path`: every request arriving at 0, or at Poisson
    arrivals of `rate` requests a second; output lengths drawn (the module's docstring)."""
    if rate is not None and not (isinstance(rate, (int, float)) and 0 < rate < math.inf):
        raise ValueError(f"rate={rate!r} is not a number of requests a second > 0")
    rows = []
    line, last_id = 0, -1
    with open(path, "rb") as file:
        for line, text in enumerate(_lines(file, path), 1):
            if not text.strip():
                continue
            record = _object(text, path, line, SERVEGEN_FIELDS)
            request_id = record["request_id"]
            if type(request_id) is not int or request_id <= last_id:
                raise TraceError(
                    path, line, f"request_id={_shown(request_id)} is not an integer > {_shown(last_id)}, the last"
                )
            last_id = request_id
            prompt = _length(record["input_length"], "input_length", path, line)
            hashes = _hash_ids(record["hash_ids"], path, line)
            if len(hashes) != -(-prompt // SERVEGEN_BLOCK_TOKENS):
                raise TraceError(
                    path,
                    line,
                    f"{len(hashes)} hash_ids for input_length={prompt}: one per {SERVEGEN_BLOCK_TOKENS} "
                    f"tokens is {-(-prompt // SERVEGEN_BLOCK_TOKENS)}",
                )
            rows.append((prompt, hashes))
    if not rows:
        raise TraceError(path, line + 1, "the file holds no requests")
    rng = np.random.default_rng(seed)
    low, high = SERVEGEN_OUTPUT
    outputs = np.minimum(high, np.exp(rng.uniform(math.log(low), math.log(high + 1), len(rows))).astype(np.int64))
    arrivals = [0.0] * len(rows)
    if rate is not None:
        arrivals = np.concatenate(([0.0], np.cumsum(rng.exponential(1 / rate, len(rows) - 1)))).tolist()
    return [
        TraceRequest(arrival, prompt, int(output), hashes, SERVEGEN_BLOCK_TOKENS)
        for arrival, (prompt, hashes), output in zip(arrivals, rows, outputs)
    ]


def prefix_reuse(requests: Iterable[TraceRequest], block_tokens: int | None = None) -> float:
    """The share of prefix blocks (`prefix_blocks`, `block_tokens` tokens each; None: each
    request's `prefix_block_tokens`) whose hash an earlier request already had, wherever it
    stands in the prompt (the traces' own count; `prefix_hashes.BlockHashes.bound` is the
    share of prompt tokens a prefix cache could serve). 0.0 for a trace without hashes;
    ValueError when a request's blocks do not cover its prompt."""
    if block_tokens is not None and (type(block_tokens) is not int or block_tokens < 1):
        raise ValueError(f"block_tokens={block_tokens!r} is not an int >= 1")
    seen: set[int] = set()
    total = reused = 0
    for index, request in enumerate(requests):
        blocks, tokens = request.prefix_blocks, block_tokens or request.prefix_block_tokens
        if blocks and (type(tokens) is not int or tokens < 1):
            raise ValueError(f"request {index}: prefix_block_tokens={tokens!r:.40} is not an int >= 1")
        if blocks and len(blocks) != -(-request.prompt_tokens // tokens):
            raise ValueError(
                f"request {index}: {len(blocks)} prefix blocks of {tokens} tokens for a "
                f"prompt of {request.prompt_tokens} tokens"
            )
        total += len(blocks)
        reused += sum(block in seen for block in blocks)
        seen.update(blocks)
    return reused / total if total else 0.0


def _object(text: str, path: str | Path, line: int, fields: tuple[str, ...]) -> dict:
    """A JSON line's object, holding every one of `fields` (strict JSON: the module's docstring)."""
    try:
        record = json.loads(text, parse_constant=_no_constant, parse_float=_float, object_pairs_hook=_once)
    except _Refused as exc:
        raise TraceError(path, line, f"invalid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TraceError(path, line, f"invalid JSON: {exc}") from None
    except ValueError:  # an integer of more digits than int() converts
        raise TraceError(path, line, "invalid JSON: an integer of too many digits to read") from None
    except RecursionError:
        raise TraceError(path, line, "invalid JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise TraceError(path, line, f"a JSON {type(record).__name__}, not an object")
    for name in fields:
        if name not in record:
            raise TraceError(path, line, f"missing field {name!r}")
    return record


def _lines(file: BinaryIO, path: str | Path) -> Iterator[str]:
    """The file's lines as text (a leading byte-order mark dropped); a line that is not
    UTF-8 is a TraceError naming it."""
    for line, data in enumerate(file, 1):
        try:
            text = data.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(path, line, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        yield text


class _Refused(ValueError):
    """What strict JSON refuses that Python's reader takes."""


def _no_constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refused(f"{text[:SHOWN]} does not fit a float")
    return number


def _once(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's fields; a key given twice is refused."""
    record = dict(pairs)
    if len(record) != len(pairs):
        twice = next(key for k, (key, _) in enumerate(pairs) if key in dict(pairs[:k]))
        raise _Refused(f"field {_shown(twice)} given twice")
    return record


def _shown(value: object) -> str:
    """`value` as a TraceError quotes it: its repr, cut at SHOWN characters."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'list' if isinstance(value, list) else 'object'} of {len(value)}"
    if isinstance(value, int) and abs(value) >= 10**SHOWN:
        return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def _hash_ids(value: object, path: str | Path, line: int) -> tuple[int, ...]:
    """A list of hash ids, each an integer in [0, 2**64)."""
    if not isinstance(value, list):
        raise TraceError(path, line, f"hash_ids={_shown(value)} is not a list of non-negative integers")
    for k, h in enumerate(value):
        if type(h) is not int or not 0 <= h < 2**64:
            raise TraceError(path, line, f"hash_ids[{k}]={_shown(h)} is not an integer in [0, 2**64)")
    return tuple(value)


def _csv_integer(text: str, name: str, path: str | Path, line: int) -> int:
    """A CSV field's integer: ASCII digits, an optional minus sign."""
    if not _INTEGER.fullmatch(text):
        raise TraceError(path, line, f"{name}={_shown(text)} is not an integer")
    if len(text) > 20:
        raise TraceError(path, line, f"{name}={_shown(text)} is past {MAX_TOKENS} tokens")
    return int(text)


def _length(value: object, name: str, path: str | Path, line: int) -> int:
    """A token count in [1, MAX_TOKENS] from a JSON value (an int, never a string) or a CSV
    field's integer."""
    if type(value) is not int:
        raise TraceError(path, line, f"{name}={_shown(value)} is not an integer")
    if value < 1:
        raise TraceError(
            path,
            line,
            f"{name}={_shown(value)} is negative"
            if value < 0
            else f"{name}=0: a request has at least 1 token of each kind",
        )
    if value > MAX_TOKENS:
        raise TraceError(path, line, f"{name}={_shown(value)} is past {MAX_TOKENS} tokens (int32)")
    return value


def _azure_time(text: str, path: str | Path, line: int) -> int:
    """`YYYY-MM-DD HH:MM:SS[.f...]` (up to 9 fractional digits) in nanoseconds."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise TraceError(path, line, f"TIMESTAMP={_shown(text)} is not YYYY-MM-DD HH:MM:SS.fffffff")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise TraceError(path, line, f"TIMESTAMP={text!r}: {exc}") from None
    fraction = match.group(7) or ""
    seconds = moment.toordinal() * 86400 + hour * 3600 + minute * 60 + second
    return seconds * 10**9 + int(fraction.ljust(9, "0"))


def _azure_columns(names: list[str], path: str | Path, line: int) -> list[int]:
    """Where the header on `line` puts each of AZURE_COLUMNS; TraceError for one missing or twice."""
    for name in AZURE_COLUMNS:
        if name not in names:
            raise TraceError(path, line, f"missing column {name!r} (the header: {_shown(','.join(names))})")
        if names.count(name) > 1:
            raise TraceError(path, line, f"column {name!r} twice in the header")
    return [names.index(name) for name in AZURE_COLUMNS]


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

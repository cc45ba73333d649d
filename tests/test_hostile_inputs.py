"""Hostile trace files and scheduler arguments: every case is a TraceError naming the file
and the line, or a ValueError / TypeError naming the argument and the value, whose
message quotes at most a few dozen characters of the input (never a traceback of the
reader's internals, never an overflow or a hang later)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from disagmoe_bench.scheduler import LAST_STEP, Scheduler, SchedulerConfig, TraceReplay, busiest_window
from disagmoe_bench.traces import TraceError, TraceRequest, read_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW = "2023-11-16 18:15:46.6805900,374,44\n"


def mooncake(timestamp: object = 0, input_length: object = 5, output_length: object = 1, **extra) -> str:
    """A Mooncake line; a str value is written as is (raw JSON)."""
    fields = {"timestamp": timestamp, "input_length": input_length, "output_length": output_length, **extra}
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}\n"


def servegen(request_id: object = 0, input_length: object = 20, hash_ids: object = "[4, 5]") -> str:
    return f'{{"request_id": {request_id}, "input_length": {input_length}, "hash_ids": {hash_ids}}}\n'


DIGITS_5000 = "7" * 5000
NESTED = "[" * 100_000 + "]" * 100_000
CASES = [
    # (id, file name, text, line, what the problem says)
    ("huge-int-json", "a.jsonl", mooncake(input_length=DIGITS_5000), 1, "too many digits"),
    ("huge-int-json-length", "a.jsonl", mooncake(input_length="1" + "0" * 30), 1, "is past 2147483647 tokens"),
    ("int32-length", "a.jsonl", mooncake(output_length=2**31), 1, "output_length=2147483648 is past"),
    ("huge-int-csv", "a.csv", HEADER + f"2023-11-16 18:15:46,{DIGITS_5000},4\n", 2, "ContextTokens='777"),
    ("int32-csv", "a.csv", HEADER + "2023-11-16 18:15:46,2147483648,4\n", 2, "is past 2147483647 tokens"),
    ("huge-request-id", "s.jsonl", servegen("9" * 4000) + servegen(1), 2, "is not an integer > an integer of"),
    ("huge-hash-id", "a.jsonl", mooncake(hash_ids=[1, 2**64]), 1, "hash_ids[1]=18446744073709551616 is not"),
    ("nested-json", "a.jsonl", NESTED + "\n", 1, "nested too deeply"),
    ("nested-field", "a.jsonl", mooncake(hash_ids="[" * 50_000 + "]" * 50_000), 1, "nested too deeply"),
    ("nested-hash-ids", "a.jsonl", mooncake(hash_ids="[" * 50 + "]" * 50), 1, "hash_ids[0]=a JSON list of 1 is"),
    ("timestamp-401-digits", "a.jsonl", mooncake(timestamp="9" * 401), 1, "timestamp=an integer of 1333 bits ms"),
    ("timestamp-401-digit-float", "a.jsonl", mooncake(timestamp="9" * 401 + ".5"), 1, "does not fit a float"),
    ("timestamp-1e400", "a.jsonl", mooncake(timestamp="1e400"), 1, "1e400 does not fit a float"),
    ("timestamp+1e308", "a.jsonl", mooncake(timestamp="1e308"), 1, "timestamp=1e+308 ms is not within"),
    ("timestamp-1e308", "a.jsonl", mooncake(timestamp="-1e308") + mooncake(timestamp="1e308"), 1, "-1e+308 ms"),
    ("timestamp-past-2**53", "a.jsonl", mooncake(0) + mooncake(2**53 + 1), 2, "is not within +-9007199254740992"),
    ("string-length", "a.jsonl", mooncake(input_length='"5"'), 1, "input_length='5' is not an integer"),
    ("string-length-servegen", "s.jsonl", servegen(0, '"20"'), 1, "input_length='20' is not an integer"),
    ("string-timestamp", "a.jsonl", mooncake(timestamp='"5"'), 1, "timestamp='5' is not a number"),
    ("repeated-header", "a.csv", HEADER + ROW + HEADER + ROW, 3, "the header again"),
    ("repeated-column", "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens,ContextTokens\n", 1, "'ContextTokens' twice"),
    (
        "repeated-key",
        "a.jsonl",
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "timestamp": 9}\n',
        1,
        "field 'timestamp' given twice",
    ),
    ("arabic-digits-csv", "a.csv", HEADER + "2023-11-16 18:15:46,\u0663\u0667\u0664,44\n", 2, "is not an integer"),
    ("arabic-digits-time", "a.csv", HEADER + "\u0662\u0660\u0662\u0663-11-16 18:15:46,3,4\n", 2, "is not YYYY-MM-DD"),
    ("fullwidth-digits-time", "a.csv", HEADER + "2023-11-16 18:15:\uff14\uff16,3,4\n", 2, "is not YYYY-MM-DD"),
    ("arabic-digits-json", "a.jsonl", mooncake(input_length="\u0665"), 1, "invalid JSON"),
    ("nan-arrival", "a.jsonl", mooncake(timestamp="NaN"), 1, "NaN is not a JSON number"),
    ("infinite-arrival", "a.jsonl", mooncake(timestamp="Infinity"), 1, "Infinity is not a JSON number"),
    ("minus-infinite-arrival", "a.jsonl", mooncake(0) + mooncake(timestamp="-Infinity"), 2, "-Infinity is not"),
    ("nan-elsewhere", "s.jsonl", servegen(0, 20, "[4, NaN]"), 1, "NaN is not a JSON number"),
    ("long-junk-csv", "a.csv", HEADER + "x" * 100_000 + ",1,1\n", 2, "TIMESTAMP='xxxx"),
    ("long-header", "a.csv", "TIMESTAMP," + "y" * 100_000 + "\n", 1, "missing column 'ContextTokens'"),
    ("long-junk-json", "a.jsonl", mooncake(input_length='"' + "z" * 100_000 + '"'), 1, "input_length='zzz"),
]


@pytest.mark.parametrize("name, text, line, problem", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_trace_files(tmp_path, name, text, line, problem):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    fmt = "servegen" if name.startswith("s.") else None
    with pytest.raises(TraceError) as info:
        read_trace(path, fmt)
    message = str(info.value)
    assert message.startswith(f"{path}: line {line}: "), message[:300]
    assert problem in message, message[:300]
    assert (info.value.path, info.value.line) == (str(path), line)
    assert len(info.value.problem) <= 200, info.value.problem


def test_every_message_is_short(tmp_path):
    """However long the bad value, a problem quotes at most 200 characters."""
    long = "9" * 3000
    for name, text in (
        ("a.jsonl", mooncake(hash_ids=f'["{long}"]')),
        ("a.jsonl", mooncake(timestamp=f'"{long}"')),
        ("a.jsonl", mooncake().replace("}", f', "{long}": 1, "{long}": 2}}')),
        ("s.jsonl", servegen(f'"{long}"')),
        ("a.csv", HEADER + f"2023-11-16 18:15:46,1,{long}x\n"),
    ):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(TraceError) as info:
            read_trace(path, "servegen" if name.startswith("s.") else None)
        assert len(info.value.problem) <= 200, info.value.problem


# -- the scheduler's arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, said",
    [
        ({"step_seconds": "0.02"}, TypeError, "step_seconds='0.02' is not a number"),
        ({"step_seconds": True}, TypeError, "step_seconds=True"),
        ({"step_seconds": 1e-300}, ValueError, "step_seconds=1e-300 is not a number in [1e-06, 3600]"),
        ({"step_seconds": 1e300}, ValueError, "step_seconds=1e+300"),
        ({"step_seconds": -0.02}, ValueError, "step_seconds=-0.02"),
        ({"step_seconds": math.inf}, ValueError, "step_seconds=inf"),
        ({"step_seconds": math.nan}, ValueError, "step_seconds=nan"),
        ({"rate_scale": None}, TypeError, "rate_scale=None is not a number"),
        ({"rate_scale": 1e-308}, ValueError, "rate_scale=1e-308 is not a number in [1e-06, 1e+06]"),
        ({"rate_scale": 5e-324}, ValueError, "rate_scale=5e-324"),
        ({"rate_scale": 1e308}, ValueError, "rate_scale=1e+308"),
        ({"rate_scale": -1.0}, ValueError, "rate_scale=-1.0"),
        ({"token_budget": 2**31}, ValueError, "token_budget=2147483648 is not in [1, 2147483647]"),
        ({"num_blocks": 10**400}, ValueError, "num_blocks=1000000000000"),
        ({"block_size": "16"}, TypeError, "block_size='16' is not an int"),
    ],
)
def test_scheduler_config_is_checked(kwargs, error, said):
    with pytest.raises(error) as info:
        SchedulerConfig(**kwargs)
    assert said in str(info.value) and len(str(info.value)) < 200, str(info.value)


REQUESTS = [TraceRequest(0.0, 5, 2), TraceRequest(1.0, 7, 3)]


@pytest.mark.parametrize(
    "start, error, said",
    [
        (-1, ValueError, "start=-1 is not in [0, 9007199254740992]"),
        (LAST_STEP + 1, ValueError, "start=9007199254740993"),
        (10**400, ValueError, "start=1"),
        (1.5, TypeError, "start=1.5 is not an int"),
        (True, TypeError, "start=True"),
        ("3", TypeError, "start='3'"),
        (None, TypeError, "start=None"),
    ],
)
def test_replay_start_is_checked(start, error, said):
    with pytest.raises(error) as info:
        TraceReplay(REQUESTS, SchedulerConfig(), start, 4)
    assert said in str(info.value) and len(str(info.value)) < 200, str(info.value)


def test_replay_num_steps_is_checked():
    for num_steps, error in ((0, ValueError), (2.0, TypeError), (10**8, ValueError)):
        with pytest.raises(error, match="num_steps="):
            TraceReplay(REQUESTS, SchedulerConfig(), 0, num_steps)  # type: ignore[arg-type]
        with pytest.raises(error, match="num_steps="):
            busiest_window(REQUESTS, SchedulerConfig(), num_steps if num_steps != 10**8 else -1)  # type: ignore


def test_a_late_start_jumps_to_the_end():
    replay = TraceReplay(REQUESTS, SchedulerConfig(), LAST_STEP - 3, 3)
    assert replay.stats()["finished"] == 0 and replay.initial == []


@pytest.mark.parametrize("arrival", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_arrivals_are_named(arrival):
    requests = [TraceRequest(0.0, 5, 2), TraceRequest(arrival, 7, 3)]
    with pytest.raises(ValueError, match=f"request 1: an arrival at {arrival} s is not a finite number"):
        Scheduler(requests, SchedulerConfig())
    with pytest.raises(ValueError, match="is not a finite number"):
        busiest_window(requests, SchedulerConfig(), 10)


def test_arrivals_past_the_last_step_are_named():
    """The smallest step and rate scale over a trace of a million years: the arrival's step
    passes 2**53, said up front (no overflow, no array of that many steps)."""
    config = SchedulerConfig(step_seconds=1e-6, rate_scale=1e-6)
    requests = [TraceRequest(0.0, 5, 2), TraceRequest(3.2e13, 7, 3)]
    for call in (lambda: Scheduler(requests, config), lambda: busiest_window(requests, config, 8)):
        with pytest.raises(ValueError, match="past step 9007199254740992"):
            call()


def test_busiest_window_of_a_sparse_trace():
    """Arrivals 10**15 steps apart: the window is found from the arrivals alone."""
    config = SchedulerConfig(step_seconds=1e-6, rate_scale=1e-6)
    requests = [TraceRequest(0.0, 5, 2), TraceRequest(1000.0, 7, 3), TraceRequest(1000.0, 1, 1)]
    assert busiest_window(requests, config, 10) == 10**15 - 9
    assert busiest_window(requests[:1], config, 10) == 0


@pytest.mark.parametrize("lengths", [(0, 1), (1, 0), (2**31, 1), (1, 10**400), (1.0, 1), (True, 1)])
def test_request_lengths_are_checked(lengths):
    with pytest.raises(ValueError, match="request 0: .* needs int lengths in \\[1, 2147483647\\]"):
        Scheduler([TraceRequest(0.0, *lengths)], SchedulerConfig())


def test_the_bad_value_is_short(tmp_path: Path):
    with pytest.raises(ValueError) as info:
        Scheduler([TraceRequest(0.0, 10**400, 1)], SchedulerConfig())
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("unit", [0, -16, 16.0, None])
def test_a_bad_prefix_block_size_is_named(unit):
    from disagmoe_bench.prefix_hashes import BlockHashes
    from disagmoe_bench.traces import prefix_reuse

    requests = [TraceRequest(0.0, 40, 2, (1, 2), unit)]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="request 0: prefix_block_tokens="):
        BlockHashes(requests, 16)
    with pytest.raises(ValueError, match="request 0: prefix_block_tokens="):
        prefix_reuse(requests)

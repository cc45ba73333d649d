"""The bundled traces, byte for byte, and the readers of their formats: the bundled files,
small hand-written ones, and every kind of malformed file (a TraceError naming the file and
the line); ServeGen's arrivals and output lengths, drawn with a fixed seed."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

import disagmoe_bench
from disagmoe_bench.traces import (
    REPLAYS,
    SERVEGEN_OUTPUT,
    SERVEGEN_RATE,
    TraceError,
    TraceRequest,
    bundled,
    prefix_reuse,
    read_azure,
    read_mooncake,
    read_replay,
    read_servegen,
    read_trace,
)

TRACES = Path(disagmoe_bench.__file__).parent / "data" / "traces"
SHA256 = {
    "AzureLLMInferenceTrace_conv.csv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
    "mooncake_conversation_trace.jsonl": "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
    "LICENSE-Azure-CC-BY-4.0.txt": "9bbc1ea9fe5c96df01b311a2ac864d5b18fc87b9948bfd14770e4b44db755ee9",
    "LICENSE-Mooncake-Apache-2.0.txt": "58d1e17ffe5109a7ae296caafcadfdbe6a7d176f0bc4ab01e12a689b0499d8bd",
    "servegen_offline_trace_a_head.jsonl": "bb189cb69b8777b5114253cedde98138bfeea65245c78f6d663c4b69d8fb2fa3",
    "LICENSE-ServeGen-Apache-2.0.txt": "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_bundled_files_are_the_published_bytes(name):
    assert hashlib.sha256((TRACES / name).read_bytes()).hexdigest() == SHA256[name]


def test_attribution_names_every_file_and_its_commit():
    text = (TRACES / "ATTRIBUTION.md").read_text()
    for needle in (
        "b469a113cedca53ddc3bdea71a143dc4b7d8700c",
        "3b5a594133958449a1feaf1c9e0fc1b553e34a28",
        "CC-BY-4.0",
        "Apache License 2.0",
        "Splitwise",
        "FAST 2025",
        "7b04e997e065c4824980cd452b9c7839931cc5ba",
        "first 4,064 of 51,429 lines",
        "SOSP 2026",
        *SHA256,
    ):
        assert needle in text


# -- the readers ----------------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, newline="")
    return path


def test_bundled_azure_trace():
    requests = read_trace(bundled("azure"))
    assert len(requests) == 19_366
    assert requests[0] == TraceRequest(0.0, 374, 44)
    assert requests[1] == TraceRequest(pytest.approx(4.314579, abs=1e-9), 396, 109)
    assert requests[-1].arrival_s == pytest.approx(3501.721937) and requests[-1].prompt_tokens == 197
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(requests, requests[1:]))
    assert sum(r.prompt_tokens for r in requests) / len(requests) == pytest.approx(1155, abs=1)
    assert sum(r.output_tokens for r in requests) / len(requests) == pytest.approx(211, abs=1)
    assert prefix_reuse(requests) == 0.0


def test_bundled_mooncake_trace():
    requests = read_trace(bundled("mooncake"))
    assert len(requests) == 12_031
    assert requests[0] == TraceRequest(0.0, 6758, 500, tuple(range(14)))
    assert requests[1].prefix_blocks[:2] == (0, 14) and requests[1].prompt_tokens == 7322
    assert requests[-1].arrival_s == pytest.approx(3536.999)
    assert sum(r.prompt_tokens for r in requests) / len(requests) == pytest.approx(12035, abs=1)
    assert round(prefix_reuse(requests), 3) == 0.366


def test_bundled_servegen_trace():
    """The head of ServeGen's trace A: every request arrives at 0 (a burst) or, second, at
    Poisson arrivals of SERVEGEN_RATE a second; the same seeded output lengths either way."""
    burst = read_trace(bundled("servegen"), "servegen")
    assert len(burst) == 4_064 and burst == read_replay("servegen-offline")
    assert burst[0].prompt_tokens == 271 and burst[0].prefix_blocks == tuple(range(17))
    assert all(r.prefix_block_tokens == 16 and r.arrival_s == 0.0 for r in burst)
    assert all(r.prefix_blocks[:10] == tuple(range(10)) for r in burst)
    assert sum(r.prompt_tokens for r in burst) == 1_352_699
    assert round(prefix_reuse(burst), 3) == 0.470
    outputs = [r.output_tokens for r in burst]
    low, high = SERVEGEN_OUTPUT
    assert min(outputs) >= low and max(outputs) <= high and 100 < np.mean(outputs) < 180
    assert np.median(outputs) == pytest.approx(math.sqrt(low * high), rel=0.15)  # log-uniform
    poisson = read_replay("servegen-offline-poisson")
    assert [r.output_tokens for r in poisson] == outputs
    assert [(r.prompt_tokens, r.prefix_blocks) for r in poisson] == [(r.prompt_tokens, r.prefix_blocks) for r in burst]
    gaps = np.diff([r.arrival_s for r in poisson])
    assert poisson[0].arrival_s == 0.0 and (gaps >= 0).all()
    assert np.mean(gaps) == pytest.approx(1 / SERVEGEN_RATE, rel=0.05)
    assert read_replay("servegen-offline-poisson") == poisson  # the seed is fixed
    assert REPLAYS["servegen-offline-poisson"] == ("servegen", SERVEGEN_RATE)
    with pytest.raises(ValueError, match="'sharegpt'"):
        read_replay("sharegpt")


def test_servegen_seed_and_rate():
    path = bundled("servegen")
    other = read_servegen(path, seed=1)
    assert [r.output_tokens for r in other] != [r.output_tokens for r in read_servegen(path)]
    fast = read_servegen(path, rate=400.0)
    assert fast[-1].arrival_s == pytest.approx(4063 / 400, rel=0.05)
    for rate in (0, -1.0, float("inf"), "40"):
        with pytest.raises(ValueError, match="rate="):
            read_servegen(path, rate=rate)  # type: ignore[arg-type]


def test_read_trace_picks_the_format():
    assert read_trace(bundled("azure"), "azure") == read_azure(bundled("azure"))
    with pytest.raises(ValueError, match="suffix"):
        read_trace("trace.txt")
    with pytest.raises(ValueError, match="'sharegpt'"):
        read_trace(bundled("azure"), "sharegpt")
    with pytest.raises(ValueError, match="'sharegpt'"):
        bundled("sharegpt")


def test_small_azure_files(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        AZURE_HEADER + "2024-02-29 23:59:59.9999999,10,2\r\n"
        "2024-03-01 00:00:00.5,7,1\r\n\r\n2024-03-01 00:00:01,1,3\r\n",
    )
    assert read_azure(path) == [
        TraceRequest(0.0, 10, 2),
        TraceRequest(pytest.approx(0.5000001), 7, 1),
        TraceRequest(pytest.approx(1.0000001), 1, 3),
    ]
    # any column order, extra columns, LF line endings, a byte-order mark, no final newline
    path = write(
        tmp_path,
        "b.csv",
        "\ufeffGeneratedTokens,Model,TIMESTAMP,ContextTokens\n"
        "5,x,2023-11-16 18:15:46.6805900,9\n5,y,2023-11-16 18:15:46.6805900,8",
    )
    assert read_azure(path) == [TraceRequest(0.0, 9, 5), TraceRequest(0.0, 8, 5)]


def test_small_mooncake_files(tmp_path):
    path = write(
        tmp_path,
        "a.jsonl",
        '{"timestamp": 1500, "input_length": 600, "output_length": 3, '
        '"hash_ids": [7, 8]}\n\n{"timestamp": 1500.5, "input_length": 1, '
        '"output_length": 1, "extra": null}\n{"timestamp": 4000, '
        '"input_length": 1024, "output_length": 9, "hash_ids": [7, 9]}',
    )
    requests = read_mooncake(path)
    assert requests == [
        TraceRequest(0.0, 600, 3, (7, 8)),
        TraceRequest(0.0005, 1, 1),
        TraceRequest(2.5, 1024, 9, (7, 9)),
    ]
    assert prefix_reuse(requests) == 0.25
    with pytest.raises(ValueError, match="request 0: 2 prefix blocks"):
        prefix_reuse(requests, block_tokens=1024)


def servegen_line(request_id: int = 0, input_length: object = 20, hash_ids: object = (4, 5), **extra) -> str:
    fields = {"request_id": request_id, "type": "text", "input_length": input_length, "hash_ids": hash_ids}
    return json.dumps({**fields, "img_ids": [], **extra}, default=list) + "\n"


def test_small_servegen_files(tmp_path):
    path = write(tmp_path, "a.jsonl", servegen_line(0, 20, [4, 5]) + "\n" + servegen_line(7, 16, [4], type="x"))
    requests = read_servegen(path)
    assert [(r.arrival_s, r.prompt_tokens, r.prefix_blocks, r.prefix_block_tokens) for r in requests] == [
        (0.0, 20, (4, 5), 16),
        (0.0, 16, (4,), 16),
    ]
    assert requests == read_trace(path, "servegen")
    assert all(SERVEGEN_OUTPUT[0] <= r.output_tokens <= SERVEGEN_OUTPUT[1] for r in requests)


AZURE_BAD = [
    ("", 1, "empty"),
    (AZURE_HEADER, 2, "no requests"),
    ("TIMESTAMP,ContextTokens\r\n", 1, "missing column 'GeneratedTokens'"),
    (AZURE_HEADER + "2023-11-16 18:15:46.6805900,374\r\n", 2, "2 fields"),
    (
        AZURE_HEADER + "2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:47.1,3.5,44\r\n",
        3,
        "ContextTokens='3.5' is not an integer",
    ),
    (AZURE_HEADER + "2023-11-16 18:15:46.6805900,374,-4\r\n", 2, "GeneratedTokens=-4 is negative"),
    (AZURE_HEADER + "2023-11-16 18:15:46.6805900,0,4\r\n", 2, "ContextTokens=0"),
    (AZURE_HEADER + "2023-11-16 18:15:46.6805900,1,0\r\n", 2, "GeneratedTokens=0"),
    (AZURE_HEADER + "2023-11-16 18:15:46.6805900,1,\r\n", 2, "GeneratedTokens='' is not an integer"),
    (AZURE_HEADER + "16/11/2023 18:15:46,1,1\r\n", 2, "TIMESTAMP='16/11/2023 18:15:46' is not"),
    (AZURE_HEADER + "2023-02-30 18:15:46.6805900,1,1\r\n", 2, "day is out of range"),
    (AZURE_HEADER + "2023-11-16 18:15:46.6805900,1,1\r\n2023-11-16 18:15:46.6805899,1,1\r\n", 3, "back in time"),
    (AZURE_HEADER + '2023-11-16 18:15:46.6805900,1,"1\r\n', 2, "not CSV"),
    (AZURE_HEADER.encode() + b"2023-11-16 18:15:46.6805900,1,1\r\n\xff,1,1\r\n", 3, "not UTF-8"),
]
MOONCAKE_BAD = [
    ("", 1, "no requests"),
    ("\n\n", 3, "no requests"),
    (
        '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1, "input_length": 5,\n',
        2,
        "invalid JSON",
    ),
    ("[1, 2]\n", 1, "a JSON list, not an object"),
    ('{"timestamp": 0, "output_length": 1}\n', 1, "missing field 'input_length'"),
    ('{"input_length": 3, "output_length": 1}\n', 1, "missing field 'timestamp'"),
    ('{"timestamp": "0", "input_length": 3, "output_length": 1}\n', 1, "timestamp='0' is not a number"),
    ('{"timestamp": 0, "input_length": 3.0, "output_length": 1}\n', 1, "input_length=3.0 is not an integer"),
    ('{"timestamp": 0, "input_length": true, "output_length": 1}\n', 1, "input_length=True is not an integer"),
    ('{"timestamp": 0, "input_length": -3, "output_length": 1}\n', 1, "input_length=-3 is negative"),
    ('{"timestamp": 0, "input_length": 3, "output_length": 0}\n', 1, "output_length=0"),
    ('{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": [1, -2]}\n', 1, "hash_ids"),
    (
        '{"timestamp": 5, "input_length": 3, "output_length": 1}\n{"timestamp": 4, "input_length": 3, '
        '"output_length": 1}\n',
        2,
        "back in time: 4 ms after 5 ms",
    ),
    (b'{"timestamp": 0, "input_length": 3, "output_length": 1}\n\xc3\x28\n', 2, "not UTF-8"),
]


SERVEGEN_BAD = [
    ("", 1, "no requests"),
    (servegen_line(0) + "{", 2, "invalid JSON"),
    ("[]\n", 1, "a JSON list, not an object"),
    ('{"request_id": 0, "input_length": 3}\n', 1, "missing field 'hash_ids'"),
    ('{"input_length": 3, "hash_ids": [1]}\n', 1, "missing field 'request_id'"),
    (servegen_line("0"), 1, "request_id='0' is not an integer > -1"),
    (servegen_line(3) + servegen_line(3), 2, "request_id=3 is not an integer > 3"),
    (servegen_line(0, 0, []), 1, "input_length=0"),
    (servegen_line(0, 2.5), 1, "input_length=2.5 is not an integer"),
    (servegen_line(0, 20, [1, -2]), 1, "hash_ids[1]=-2 is not an integer in [0, 2**64)"),
    (servegen_line(0, 20, "ab"), 1, "is not a list of non-negative integers"),
    (servegen_line(0, 20, [1, True]), 1, "hash_ids[1]=True is not an integer"),
    (servegen_line(0, 33, [1, 2]), 1, "2 hash_ids for input_length=33: one per 16 tokens is 3"),
    (servegen_line(0).encode() + b"\xff\n", 2, "not UTF-8"),
]


@pytest.mark.parametrize("text, line, problem", SERVEGEN_BAD)
def test_malformed_servegen_files(tmp_path, text, line, problem):
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(TraceError) as info:
        read_trace(path, "servegen")
    message = str(info.value)
    assert message.startswith(f"{path}: line {line}: "), message
    assert problem in message, message
    assert (info.value.path, info.value.line) == (str(path), line)


@pytest.mark.parametrize("text, line, problem", AZURE_BAD)
def test_malformed_azure_files(tmp_path, text, line, problem):
    check_error(write(tmp_path, "bad.csv", text), line, problem)


@pytest.mark.parametrize("text, line, problem", MOONCAKE_BAD)
def test_malformed_mooncake_files(tmp_path, text, line, problem):
    check_error(write(tmp_path, "bad.jsonl", text), line, problem)


def check_error(path: Path, line: int, problem: str) -> None:
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line {line}: "), message
    assert problem in message, message
    assert (info.value.path, info.value.line) == (str(path), line)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is None

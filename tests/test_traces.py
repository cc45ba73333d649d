"""The bundled traces, byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import disagmoe

TRACES = Path(disagmoe.__file__).parent / "data" / "traces"
SHA256 = {
    "AzureLLMInferenceTrace_conv.csv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
    "mooncake_conversation_trace.jsonl": "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
    "LICENSE-Azure-CC-BY-4.0.txt": "9bbc1ea9fe5c96df01b311a2ac864d5b18fc87b9948bfd14770e4b44db755ee9",
    "LICENSE-Mooncake-Apache-2.0.txt": "58d1e17ffe5109a7ae296caafcadfdbe6a7d176f0bc4ab01e12a689b0499d8bd",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_bundled_files_are_the_published_bytes(name):
    assert hashlib.sha256((TRACES / name).read_bytes()).hexdigest() == SHA256[name]


def test_attribution_names_every_file_and_its_commit():
    text = (TRACES / "ATTRIBUTION.md").read_text()
    for needle in ("b469a113cedca53ddc3bdea71a143dc4b7d8700c", "3b5a594133958449a1feaf1c9e0fc1b553e34a28",
                   "CC-BY-4.0", "Apache License 2.0", "Splitwise", "FAST 2025", *SHA256):
        assert needle in text

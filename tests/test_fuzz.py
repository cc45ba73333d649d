"""The fuzz target (tests/fuzz/): hypothesis draws hostile cases, a child process runs each
against the reference model, and a crash, a hang or a wrong answer fails this test.

It runs for DISAGMOE_FUZZ_SECONDS (default 10; .ci/run gives it 90, and 60 against the
sanitizer build). A failure prints the case as data; to replay it in this process:
`python3 tests/fuzz/worker.py --case "<the case>"`. DISAGMOE_FUZZ_SHRINK=1 lets hypothesis
shrink a failing case first (each shrink step that crashes restarts the worker).
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from fuzz.cases import cases
from fuzz.runner import Worker

SECONDS = float(os.environ.get("DISAGMOE_FUZZ_SECONDS", "10"))
PHASES = (Phase.generate, Phase.shrink) if os.environ.get("DISAGMOE_FUZZ_SHRINK") else (Phase.generate,)


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout=float(os.environ.get("DISAGMOE_FUZZ_CASE_TIMEOUT", "60")))
    yield w
    w.close()


def test_fuzz(worker):
    @settings(max_examples=100, deadline=None, database=None, phases=PHASES, suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def one(case):
        failure = worker.run(case)
        assert failure is None, failure

    start = time.monotonic()
    while time.monotonic() - start < SECONDS:
        one()
    print(f"\nfuzz: {worker.cases} cases in {time.monotonic() - start:.0f} s, {worker.restarts} worker restarts")

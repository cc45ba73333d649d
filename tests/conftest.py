"""Fixtures shared by the test modules: `config` and the `make_manager` factory.

Every test that takes `make_manager` runs once per configuration of `configs.CONFIGS`
(derived from the registry of designs): `cpu`, `gpu-torch` and `hybrid-torch` everywhere,
and on a CUDA machine also the `CUDA_CONFIGS` there (`cpu-cuda`, and the gpu and hybrid designs with
Triton kernels, with and without CUDA graphs, and with torch kernels).
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

from configs import CONFIGS, Config  # noqa: E402

settings.register_profile(
    "disagmoe",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "disagmoe"))


# Session scope: the factory holds no state, and hypothesis accepts it in @given tests.
@pytest.fixture(scope="session", params=CONFIGS, ids=[b.id for b in CONFIGS])
def config(request) -> Config:
    return request.param


@pytest.fixture(scope="session")
def make_manager(config: Config):
    """`make_manager(block_size=4, num_blocks=32, max_running_reqs=8, max_seq_len=64,
    layer_ids=LAYER_IDS)`: a fresh manager of the parametrised configuration."""
    return config.make

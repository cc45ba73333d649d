"""Request ids chosen to collide in the native id map (csrc/flat_id_map.h). Ids are user
input: under the map's former fixed hash (key * 0x9E3779B97F4A7C15 >> shift) the ids
i * inverse(0x9E3779B97F4A7C15) all share one home slot, so that every lookup of a step
walked the whole map. Each map now draws its own seed; checked by behaviour, not time:

- the map's buckets, read by a C++ program compiled here against the header, spread
  those ids as random ones would (linear probing's displacement stays small), while the
  former hash piles them on one slot;
- the managers serve 16,384 such ids as any others.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from configs import CPU_DEVICE_CONFIGS
from harness import Harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMER = 0x9E3779B97F4A7C15
INVERSE = pow(FORMER, -1, 2**64)
NUM_IDS = 16384


def colliding_ids(count: int, first: int = 0) -> list[int]:
    """Ids (int64) that all had home slot 0 under the former hash, for maps of up to 2**48 slots."""
    ids = [(i * INVERSE) % 2**64 for i in range(first, first + count)]
    return [i - 2**64 if i >= 2**63 else i for i in ids]


def test_the_ids_collided_under_the_former_hash():
    shift = 64 - (2 * NUM_IDS).bit_length() + 1  # a map for 16,384 ids has 32,768 slots
    assert {((i % 2**64) * FORMER % 2**64) >> shift for i in colliding_ids(NUM_IDS)} == {0}


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the header's probe")
def test_the_map_spreads_ids_that_collided(tmp_path):
    binary = tmp_path / "probes"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O2",
            "-I",
            os.path.join(ROOT, "csrc"),
            "-o",
            str(binary),
            os.path.join(ROOT, "tests", "cpp", "flat_id_map_probes.cpp"),
        ],
        check=True,
        timeout=300,
    )
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert [row[0] for row in rows] == ["inverse", "inverse-spread", "inverse-negative"]
    for name, mean, most, former_mean, former_most in rows:
        # half full, random homes: about half a slot on average, a few dozen at worst
        assert float(mean) < 2 and int(most) < 200, (name, mean, most)
        assert float(former_mean) > 8000 and int(former_most) == NUM_IDS - 1, name


@pytest.mark.parametrize("config", CPU_DEVICE_CONFIGS, ids=lambda c: c.id)
def test_managers_serve_colliding_ids(config):
    """16,384 colliding ids: prefill, decode, release half, admit new ones, decode; every
    step checked against the reference model (no timing asserted)."""
    h = Harness(config.make(block_size=4, num_blocks=NUM_IDS, max_running_reqs=NUM_IDS, max_seq_len=8))
    ids = colliding_ids(NUM_IDS)
    h.step(h.batch(ids, [1] * NUM_IDS))
    h.step(h.batch(ids[::-1]))
    h.release(ids[::2])
    fresh = colliding_ids(NUM_IDS // 2, first=NUM_IDS)
    h.step(h.batch(fresh + ids[1::2], [2] * len(fresh)))
    h.step(h.batch(ids[1::2] + fresh, [], layer=h.ref.layer_ids[1]))
    h.release(fresh + ids[1::2])
    assert h.manager.num_running_reqs() == 0

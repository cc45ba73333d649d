"""The step paths' batch memo (`cpu`, `gpu`, `hybrid`): the same batch at the next layer
returns the same metadata without packing again, any change in between is seen, a
layer packed twice is packed twice; and on CUDA the device-table designs' host runs
ahead of the device by the staging ring's depth."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from disagmoe import BatchMetadata
from disagmoe.block_manager.base import DEFAULT_DEPTH
from disagmoe.block_manager.device_tables import DeviceTableManager

from configs import BY_ID, CPU_DEVICE_CONFIGS, CUDA_CONFIGS, HAS_CUDA
from harness import Harness, to_host

ALL = CPU_DEVICE_CONFIGS + (CUDA_CONFIGS if HAS_CUDA else [])


@pytest.fixture(params=ALL, ids=[b.id for b in ALL])
def harness(request) -> Harness:
    return Harness(request.param.make(block_size=4, num_blocks=64, max_running_reqs=8, max_seq_len=64))


def test_the_next_layer_of_a_step_reuses_the_pack(harness):
    h, m = harness, harness.manager
    h.step(h.batch([1, 2], [5, 3]))
    first = BatchMetadata(3, [3, 1, 2], 1, [4])
    m.update_block_table(first)
    a = m.pack_flash_attn_metadata(first)
    later = BatchMetadata(5, [3, 1, 2], 1, [4])  # the next layer, its own lists
    m.update_block_table(later)
    assert later.seq_lens == first.seq_lens == [4, 6, 4]
    want = to_host(a, m.device)
    a.slot_mapping.fill_(-7)  # a caller's write into the metadata: a pack would overwrite it
    b = m.pack_flash_attn_metadata(later)
    assert b.slot_mapping.data_ptr() == a.slot_mapping.data_ptr() and b.slot_mapping.tolist() == [-7] * 6
    assert b.seq_lens == a.seq_lens and b.seq_lens is not a.seq_lens and b is not a
    assert b.block_tables is not a.block_tables  # tensors of its own, the same memory
    again = m.pack_flash_attn_metadata(later)  # the same layer twice: packed again
    assert again.slot_mapping.tolist() != [-7] * 6
    assert to_host(again, m.device) == want


@pytest.mark.parametrize("change", ["update", "release", "reset", "other batch", "mutated ids", "numpy ids"])
def test_anything_in_between_is_seen(harness, change):
    h, m = harness, harness.manager
    h.step(h.batch([1, 2, 3], [5, 3, 2]))
    batch = h.batch([1, 2, 3], layer=5)
    h.pack(batch)
    if change == "update":
        h.update(h.batch([1, 2]))
    elif change == "release":
        h.release([3])
        batch = h.batch([1, 2], layer=5)
    elif change == "reset":
        h.reset()
        h.update(h.batch([1, 2, 3], [1, 1, 1]))
    elif change == "other batch":
        h.pack(h.batch([2, 1], layer=5))
    elif change == "mutated ids":
        batch.req_ids[:] = [3, 1, 2]
    else:  # not remembered: looked up again, and the same as for a list
        got = to_host(m.pack_flash_attn_metadata(BatchMetadata(5, np.array([1, 2, 3]), 0, [])), m.device)
        h.pack(h.batch([2, 1, 3], layer=5))
        assert (
            to_host(m.pack_flash_attn_metadata(BatchMetadata(5, np.array([1, 2, 3]), 0, [])), m.device)
            == got
            == h.pack(batch)
        )
    h.pack(batch)  # checked against the reference model: nothing stale
    h.check_state()


def test_an_element_whose_eq_steps_the_manager(harness):
    """An element whose __eq__ steps the manager must not make a stale pack come back."""
    h, m = harness, harness.manager
    h.step(h.batch([1, 2], [3, 3]))

    class Sneaky(int):
        def __eq__(self, other):
            m.update_block_table(BatchMetadata(3, [1], 0, []))  # request 1 grows
            return int(self) == other

        __hash__ = int.__hash__

    first = BatchMetadata(5, [1, 2], 0, [])
    m.update_block_table(first)
    m.pack_flash_attn_metadata(first)
    md = m.pack_flash_attn_metadata(BatchMetadata(7, [Sneaky(1), 2], 0, []))  # another layer
    # The memo compares the ints the step read (Sneaky reads as 1): its __eq__ never runs,
    # so nothing changed and the remembered pack answers.
    assert md.seq_lens == [m.seq_len(1), m.seq_len(2)] == [3, 3]
    assert md.seq_lens_tensor.tolist() == [3, 3]


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_the_host_runs_ahead_of_a_busy_device():
    """With the device held busy, the host finishes steps up to the ring's depth without
    waiting (each one stages into a buffer the device has not read yet)."""
    assert issubclass(BY_ID["gpu-triton-graphs"].cls, DeviceTableManager)
    m = BY_ID["gpu-triton-graphs"].make(block_size=16, num_blocks=256, max_running_reqs=8, max_seq_len=512)
    decode = BatchMetadata(3, list(range(8)), 0, [])
    m.update_block_table(BatchMetadata(3, list(range(8)), 8, [10] * 8))
    for _ in range(8):  # warm: kernels compiled, graphs captured for every ring buffer
        m.update_block_table(decode)
        m.pack_flash_attn_metadata(decode)
    m.synchronize()
    depth = DEFAULT_DEPTH
    torch.cuda._sleep(1_000_000_000)  # about half a second of device work, queued first
    start = time.perf_counter()
    for _ in range(depth):
        m.update_block_table(decode)
        m.pack_flash_attn_metadata(decode)
    ahead = time.perf_counter() - start
    m.synchronize()
    waited = time.perf_counter() - start
    assert ahead < 0.05 < waited, (ahead, waited)
    m.check_integrity()

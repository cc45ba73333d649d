"""The step path never waits for the device: warmed-up update + pack steps run under
torch.cuda.set_sync_debug_mode("error"), so a hidden device sync raises. Their results
are then checked against the torch-kernel path on the same inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from disagmoe import BatchMetadata

from configs import BY_ID, HAS_CUDA
from harness import Harness, HostMetadata, to_host

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

L0, L1 = 3, 5  # configs.LAYER_IDS[0], [1]
SYNC_FREE = ["gpu-triton-graphs", "gpu-triton", "cpu-cuda"]


def prefill_steps() -> list[BatchMetadata]:
    return [
        BatchMetadata(L0, [0, 1, 2, 3, 4, 5], 6, [7, 1, 16, 3, 30, 2]),
        BatchMetadata(L0, [0, 6, 1, 2], 2, [5, 9]),  # a chunk, a new request, decodes
        BatchMetadata(L0, [7], 1, [40]),
    ]


def decode_steps() -> list[BatchMetadata]:
    ids = [0, 1, 2, 3, 4, 5, 6, 7]
    return [BatchMetadata(layer, ids, 0, []) for _ in range(3) for layer in (L0, L1)]


@contextmanager
def sync_is_an_error():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def copy_batch(batch: BatchMetadata) -> BatchMetadata:
    return BatchMetadata(batch.layer_id, list(batch.req_ids), batch.num_prefill_seqs, list(batch.init_prefill_lens))


def run_steps(manager, batches: list[BatchMetadata]) -> list[tuple]:
    """update + pack each batch; keeps device copies of the metadata, reading nothing back."""
    kept = []
    for batch in map(copy_batch, batches):
        manager.update_block_table(batch)
        md = manager.pack_flash_attn_metadata(batch)
        tensors = {
            name: getattr(md, name).clone()
            for name in (
                "seq_lens_tensor",
                "context_lens_tensor",
                "query_start_loc",
                "seq_start_loc",
                "block_tables",
                "slot_mapping",
            )
        }
        kept.append((md, tensors))
    return kept


def host_copy(md, tensors: dict) -> HostMetadata:
    """The metadata with its kept tensor copies in place of the (since reused) views."""
    return to_host(replace(md, **tensors), tensors["slot_mapping"].device)


def test_sync_debug_mode_catches_a_sync():
    """The check below can fail: a read back to the host raises under it."""
    x = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError), sync_is_an_error():
        x.sum().item()


@pytest.mark.parametrize("config_id", SYNC_FREE)
@pytest.mark.parametrize("block_size", [1, 16, 5])
def test_steps_do_not_sync(config_id, block_size):
    config = BY_ID[config_id]
    manager = config.make(block_size=block_size, num_blocks=512 // block_size, max_running_reqs=8, max_seq_len=128)
    steps = prefill_steps() + decode_steps()
    run_steps(manager, steps)  # warm-up: compiles kernels, captures graphs, sizes buffers
    manager.reset_state()
    with sync_is_an_error():
        prefill = run_steps(manager, prefill_steps())
        decode = run_steps(manager, decode_steps())
    # The same steps through the torch kernels, checked step by step against the reference.
    reference = Harness(
        BY_ID["gpu-torch-cuda"].make(
            block_size=block_size, num_blocks=512 // block_size, max_running_reqs=8, max_seq_len=128
        )
    )
    for batch, (md, tensors) in zip(steps, prefill + decode):
        assert host_copy(md, tensors) == reference.step(copy_batch(batch))
    manager.check_integrity()
    for req_id in range(8):
        assert manager.token_slots(req_id) == reference.manager.token_slots(req_id)


@pytest.mark.parametrize("config_id", SYNC_FREE)
@pytest.mark.parametrize("block_size", [1, 16])
def test_trace_steps_do_not_sync(config_id, block_size):
    """A continuous-batching trace (releases, chunked prefills, decodes, two layers a step)
    runs sync-free once warm, and gives what the torch kernels give, step by step."""
    from disagmoe_bench.workloads import TraceConfig, TraceWorkload

    trace = TraceWorkload(TraceConfig(running=10, max_prompt=200, chunk=150, max_output=30, seed=1), 60)
    max_seq_len, max_reqs = trace.sizes(60)
    sizes = dict(
        block_size=block_size,
        num_blocks=max_reqs * -(-max_seq_len // block_size),
        max_running_reqs=max_reqs,
        max_seq_len=max_seq_len,
        layer_ids=(0, 1),
    )
    manager = BY_ID[config_id].make(**sizes)

    def steps() -> list[tuple]:
        kept = []
        for step in trace.steps:
            if step.release:
                manager.release_seqs(step.release)
            kept.extend(run_steps(manager, list(step.layers)))
        return kept

    trace.start(manager)  # (ends with a synchronize)
    steps()  # warm-up: compiles kernels, captures graphs
    trace.start(manager)
    with sync_is_an_error():
        kept = steps()
    reference = Harness(BY_ID["gpu-torch-cuda"].make(**sizes))
    reference.update(reference.batch([r for r, _ in trace.initial], [n for _, n in trace.initial]))
    batches = []
    for step in trace.steps:
        if step.release:
            reference.release(list(step.release))
        for batch in step.layers:
            batches.append(batch)
            md, tensors = kept[len(batches) - 1]
            assert host_copy(md, tensors) == reference.step(copy_batch(batch))
    manager.check_integrity()


GC_DURING_CAPTURE = textwrap.dedent("""
    import gc, torch
    from disagmoe import BatchMetadata, CacheConfig, GPUBlockManager, ModelConfig
    from disagmoe.block_manager import kernels_triton

    def manager():
        return GPUBlockManager(ModelConfig((0,), 64, 8), CacheConfig(1, 64), 8, device="cuda",
                               kernels="triton", cuda_graphs=True)

    def step(m):
        batch = BatchMetadata(0, [1, 2], 2, [3, 4])
        m.update_block_table(batch)
        return m.pack_flash_attn_metadata(batch).slot_mapping.tolist()

    gc.disable()
    dead = manager()
    step(dead)  # captures its graphs
    cycle = [dead, None]
    cycle[1] = cycle
    del dead, cycle  # garbage now, freed at the next collection
    launch = kernels_triton.launch

    def collecting_launch(*args, **kwargs):  # a collection that falls inside the capture
        if torch.cuda.is_current_stream_capturing():
            gc.collect()
        return launch(*args, **kwargs)

    kernels_triton.launch = collecting_launch
    print(step(manager()))
""")


def test_graph_capture_survives_garbage_collection():
    """A garbage collection can run at any allocation, so also while a manager captures its
    first CUDA graph; freeing another (dead) manager's graphs then must not break the step."""
    run = subprocess.run([sys.executable, "-c", GC_DURING_CAPTURE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-1500:]}"
    slots = [int(s) for s in run.stdout.strip().strip("[]").split(",")]
    assert len(set(slots)) == 7 and all(0 <= s < 64 for s in slots)

"""The Triton pack kernel under every launch shape (kernels_triton.PackLaunch): several
programs per batch entry, chunks narrower than a row, other warp counts. Each
writes the same metadata as the torch kernels, through the public API (CUDA only)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from disagmoe import BatchMetadata, CacheConfig, GPUBlockManager, ModelConfig

from configs import HAS_CUDA

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="the Triton kernels need CUDA")

LAUNCHES = [(128, 128, 1, 4), (16, 16, 2, 4), (32, 16, 3, 2), (64, 32, 4, 8), (1024, 128, 1, 8)]


def _manager(block_size: int, batch_size: int, max_seq_len: int) -> GPUBlockManager:
    model = ModelConfig(layer_ids=(0, 1), max_seq_len=max_seq_len, max_batch_size_attn=2 * batch_size)
    num_blocks = 2 * batch_size * -(-max_seq_len // block_size)
    return GPUBlockManager(model, CacheConfig(block_size, num_blocks), 2 * batch_size, device="cuda", kernels="torch")


def _batches(mode: str, batch_size: int, seq_len: int) -> list[BatchMetadata]:
    """The batches to run before the packed one (updates), and the packed one last."""
    prefill = BatchMetadata(0, list(range(batch_size)), batch_size, [seq_len - 3 * k for k in range(batch_size)])
    if mode == "prefill":
        return [prefill]
    if mode == "decode":
        return [prefill, BatchMetadata(0, list(range(batch_size)), 0, [])]
    new = list(range(batch_size, 2 * batch_size))  # mixed: new requests, then decodes
    return [
        prefill,
        BatchMetadata(0, new + list(range(batch_size)), batch_size, [1 + 7 * k for k in range(batch_size)]),
    ]


@pytest.mark.parametrize("block_w,block_t,parts,num_warps", LAUNCHES)
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_pack_launch_argument_writes_what_the_torch_kernels_write(block_w, block_t, parts, num_warps, cuda_graphs):
    """`GPUBlockManager(pack_launch=...)`: the launch shape given at construction packs
    the same metadata as the torch kernels, through the public API alone."""
    from disagmoe.block_manager.kernels_triton import PackLaunch

    launch = PackLaunch(block_w=block_w, block_t=block_t, parts=parts, num_warps=num_warps)
    reference = _manager(4, 3, 300)
    model = ModelConfig(layer_ids=(0, 1), max_seq_len=300, max_batch_size_attn=6)
    manager = GPUBlockManager(
        model, CacheConfig(4, 6 * 75), 6, device="cuda", kernels="triton", cuda_graphs=cuda_graphs, pack_launch=launch
    )
    for batches in (_batches("prefill", 3, 299), _batches("mixed", 3, 299)[1:]):
        for batch in batches:
            reference.update_block_table(batch)
            manager.update_block_table(batch)
        want = reference.pack_flash_attn_metadata(batches[-1])
        got = manager.pack_flash_attn_metadata(batches[-1])
        for field in dataclasses.fields(want):
            a, b = getattr(want, field.name), getattr(got, field.name)
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            assert same, f"{field.name}: {b} != {a}"
    manager.check_integrity()


def test_pack_launch_argument_rejects_other_types():
    model = ModelConfig(layer_ids=(0,), max_seq_len=8, max_batch_size_attn=2)
    with pytest.raises(TypeError, match="pack_launch"):
        GPUBlockManager(model, CacheConfig(1, 16), 2, device="cuda", kernels="triton", pack_launch=(128, 128, 4, 4))

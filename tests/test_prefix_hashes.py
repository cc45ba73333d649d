"""The block hashes a prefix-cache replay passes: the traces' hash ids (Mooncake's 512-token
blocks, ServeGen's 16-token ones) chained and split into the scheduler's blocks, capped as the
contract asks; and the bound of a cache that never evicts."""

from __future__ import annotations

import pytest

from disagmoe_bench.prefix_hashes import BlockHashes
from disagmoe_bench.traces import TraceRequest, read_replay


def mooncake(prompt: int, ids: tuple[int, ...]) -> TraceRequest:
    return TraceRequest(0.0, prompt, 1, ids, 512)


def servegen(prompt: int, ids: tuple[int, ...]) -> TraceRequest:
    return TraceRequest(0.0, prompt, 1, ids, 16)


def test_a_512_token_block_gives_32_keys_and_a_partial_one_its_full_blocks():
    hashes = BlockHashes([mooncake(1100, (7, 8, 9)), mooncake(1024, (7, 8)), mooncake(600, (7, 5))], 16)
    first, second, third = hashes(0), hashes(1), hashes(2)
    assert len(first) == 32 + 32 + 76 // 16 == (1100 - 1) // 16 == hashes.count(0)
    assert len(second) == 63 and second == first[:63]  # equal ids, equal keys; capped at (1024 - 1) // 16
    assert third[:32] == first[:32] and not set(third[32:]) & set(first)  # another second block
    assert len(third) == 32 + 88 // 16 and len(set(first + third)) == len(first) + len(third) - 32
    assert all(type(k) is int and 0 <= k < 2**63 for k in first)


def test_keys_are_chained_equal_ids_after_other_prefixes_differ():
    hashes = BlockHashes([servegen(40, (1, 2, 3)), servegen(40, (9, 2, 3)), servegen(33, (1, 2, 4))], 16)
    assert hashes(0) == (0, 1)  # numbered in order of first appearance; the partial block 3 has no key
    assert not set(hashes(1)) & set(hashes(0))  # ids 2 after 9 are another prefix than 2 after 1
    assert hashes(2) == (0, 1)  # 33 tokens: 2 full blocks, both already seen


@pytest.mark.parametrize("block_size, count", [(16, 31), (8, 63), (32, 15), (512, 0)])
def test_the_schedulers_block_size_divides_the_traces(block_size, count):
    hashes = BlockHashes([mooncake(512, (3,))], block_size)
    assert len(hashes(0)) == hashes.count(0) == count


def test_bad_hashes_are_refused_by_request():
    with pytest.raises(ValueError, match="request 1: its hash ids cover 16 tokens each, which blocks of 32"):
        BlockHashes([servegen(4, ()), servegen(20, (1, 2))], 32)
    with pytest.raises(ValueError, match="request 0: 1 hash ids of 512 tokens for a prompt of 600 tokens"):
        BlockHashes([mooncake(600, (1,))], 16)
    with pytest.raises(ValueError, match="block_size=0"):
        BlockHashes([], 0)


def test_requests_without_ids_have_no_keys():
    hashes = BlockHashes([TraceRequest(0.0, 100, 1), servegen(20, (1, 2))], 16)
    assert hashes(0) == () and hashes.count(0) == 0 and hashes.any
    assert not BlockHashes([TraceRequest(0.0, 100, 1)], 16).any


def test_the_bound_is_the_leading_run_an_unbounded_cache_serves():
    requests = [servegen(49, (1, 2, 3, 4)), servegen(49, (1, 2, 5, 6)), servegen(17, (1, 2)), servegen(17, (7, 1))]
    hashes = BlockHashes(requests, 16)
    assert list(hashes.unbounded(range(4))) == [0, 32, 16, 0]  # the third is capped at (17 - 1) // 16 keys
    assert hashes.bound() == pytest.approx(48 / (49 + 49 + 17 + 17))
    assert list(hashes.unbounded([0, 0, 2])) == [0, 48, 16]  # an admission again: its own blocks are cached


def test_the_bundled_traces_bounds():
    assert BlockHashes(read_replay("servegen-offline"), 16).bound() == pytest.approx(0.4806, abs=1e-4)
    mooncake_hashes = BlockHashes(read_replay("mooncake"), 16)
    assert mooncake_hashes.bound() == pytest.approx(0.3736, abs=1e-4)
    assert len(mooncake_hashes(0)) == (6758 - 1) // 16

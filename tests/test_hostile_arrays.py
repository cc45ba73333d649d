"""Hostile arrays and configs on every design: an array that claims more ints than it has
memory for, arrays of dates, and a frozen config whose layer ids were changed after it was
made. Each is a ValueError / TypeError naming the argument (and the size), decided by
arithmetic before anything is allocated, and the manager is left as it was."""

from __future__ import annotations

import numpy as np
import pytest

from disagmoe import BatchMetadata, CacheConfig, ModelConfig

from configs import LAYER_IDS
from harness import Harness

L0, L1 = LAYER_IDS[0], LAYER_IDS[1]


def running(make_manager) -> Harness:
    """Requests 10 (7 tokens) and 11 (2), known to the manager and its reference model."""
    h = Harness(make_manager(block_size=4, num_blocks=10, max_running_reqs=4, max_seq_len=32))
    h.step(h.batch([10, 11], [6, 2]))
    h.step(h.batch([10], []))
    return h


def zero_stride(count: int, dtype=np.int64) -> np.ndarray:
    """An array of `count` zeros over one item of memory (every item is that item)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=(count,), strides=(0,))


def calls(m, ids: object, lens: object) -> dict:
    """Every entry point that reads an array of ints, given `ids` where ids go and `lens`
    where lengths or hashes go."""
    return {
        "update-ids": lambda: m.update_block_table(BatchMetadata(L0, ids, 0, [])),
        "update-later-layer-ids": lambda: m.update_block_table(BatchMetadata(L1, ids, 0, [])),
        "pack-ids": lambda: m.pack_flash_attn_metadata(BatchMetadata(L0, ids, 0, [])),
        "update-lens": lambda: m.update_block_table(BatchMetadata(L0, [12], 1, lens)),
        "pack-lens": lambda: m.pack_flash_attn_metadata(BatchMetadata(L0, [10], 1, lens)),
        "release": lambda: m.release_seqs(ids),
        "match-prefix": lambda: m.match_prefix(12, lens),
    }


ARGUMENT = {
    "update-ids": "req_ids",
    "update-later-layer-ids": "req_ids",
    "pack-ids": "req_ids",
    "update-lens": "init_prefill_lens",
    "pack-lens": "init_prefill_lens",
    "release": "req_ids",
    "match-prefix": "block_hashes",
}


@pytest.mark.parametrize(
    "count, dtype", [(2**40, np.int64), (2**31, np.int8), (2**60, np.uint8)], ids=["2**40", "2**31", "2**60"]
)
@pytest.mark.parametrize("where", sorted(ARGUMENT))
def test_an_array_claiming_too_many_ints_is_refused_by_its_count(make_manager, where, count, dtype):
    """A stride of 0 lets an array claim 2**40 ints in 8 bytes: refused by the count it
    claims (past the int32 range of a count), never by trying to allocate for it (no
    MemoryError, no std::bad_alloc), whatever this machine's memory."""
    h = running(make_manager)
    huge = zero_stride(count, dtype)
    message = h.expect_error(calls(h.manager, huge, huge)[where], ValueError, ARGUMENT[where], count)
    assert "int32" in message and len(message) < 200, message


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32])
def test_a_short_zero_stride_array_is_read_as_its_ints(make_manager, dtype):
    """Below the bound, an array with a stride of 0 is an array like any other: its items."""
    h = running(make_manager)
    ones = np.lib.stride_tricks.as_strided(np.ones(1, dtype), shape=(2,), strides=(0,))
    h.manager.update_block_table(batch := BatchMetadata(L0, [12, 13], 2, ones))
    assert batch.seq_lens == [1, 1]
    h.manager.check_integrity()


DATES = {
    "datetime64": np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]"),
    "datetime64-ns": np.array([1, 2], dtype="datetime64[ns]"),
    "timedelta64": np.array([1, 2], dtype="timedelta64[s]"),
}


@pytest.mark.parametrize("where", sorted(ARGUMENT))
@pytest.mark.parametrize("kind", sorted(DATES))
def test_an_array_of_dates_is_a_type_error(make_manager, kind, where):
    h = running(make_manager)
    dates = DATES[kind]
    message = h.expect_error(calls(h.manager, dates, dates[:1])[where], TypeError, ARGUMENT[where])
    assert "Invoked with" not in message, message


@pytest.mark.parametrize("kind", sorted(DATES))
def test_a_date_in_a_list_is_a_type_error(make_manager, kind):
    h = running(make_manager)
    date = DATES[kind][0]
    h.expect_error(
        lambda: h.manager.update_block_table(BatchMetadata(L0, [12, date], 2, [1, 1])), TypeError, "req_ids[1]"
    )
    h.expect_error(
        lambda: h.manager.update_block_table(BatchMetadata(L0, [12], 1, [date])), TypeError, "init_prefill_lens[0]"
    )


# -- a frozen config changed after it was made ----------------------------------------------


@pytest.mark.parametrize(
    "layer_ids, error, said",
    [
        ((3, 3, 5), ValueError, "repeats layer 3"),
        ((3, 5, 7, 5), ValueError, "repeats layer 5"),
        ((3, 1.5), TypeError, "layer_ids[1]=1.5"),
        ((3, True), TypeError, "layer_ids[1]=True"),
        ((2**63,), ValueError, "layer_ids[0]=9223372036854775808"),
        ([3, 5], TypeError, "is not a non-empty tuple"),
        ((), TypeError, "is not a non-empty tuple"),
    ],
    ids=["repeat-first", "repeat-later", "float", "bool", "past-int64", "list", "empty"],
)
def test_layer_ids_changed_after_the_config_was_made(config, layer_ids, error, said):
    """ModelConfig is frozen, but object.__setattr__ gets past that: a manager checks the
    layer ids again when it is built, and names them."""
    model = ModelConfig(LAYER_IDS, 32, 4)
    object.__setattr__(model, "layer_ids", layer_ids)
    with pytest.raises(error) as info:
        config.cls(model, CacheConfig(4, 10), 4, device=config.device, **config.kwargs)
    assert "layer_ids" in str(info.value) and said in str(info.value), str(info.value)


def test_a_config_cannot_be_changed_by_assignment():
    model = ModelConfig(LAYER_IDS, 32, 4)
    with pytest.raises(AttributeError):
        model.layer_ids = (3, 3)  # type: ignore[misc]


def test_a_repeated_layer_is_named_when_the_config_is_made():
    with pytest.raises(ValueError, match=r"ModelConfig: layer_ids=\(3, 5, 3\) repeats layer 3"):
        ModelConfig((3, 5, 3), 32, 4)

"""Every error row of the contract: the right exception, a message naming the bad value,
and a manager left exactly as it was (and still usable)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from disagmoe import BatchMetadata, CacheConfig, GPUBlockManager, KVCacheExhausted, ModelConfig

from harness import Harness

L0, L1 = 3, 5  # the first layer and a later one (configs.LAYER_IDS)
per_block_size = pytest.mark.parametrize("block_size", [1, 4])


def b(req_ids, num_prefill, lens, layer=L0) -> BatchMetadata:
    return BatchMetadata(layer, req_ids, num_prefill, lens)


# (id, batch, error, values the message must name). Running: 10 (7 tokens), 11 (2), 12 (1);
# one of four request rows is free; 40 slots; max_seq_len 32.
BAD_UPDATES = [
    ("pool", b([100, 101], 2, [20, 20]), KVCacheExhausted, ["free"]),
    ("rows", b([100, 101], 2, [1, 1]), KVCacheExhausted, [2, 1]),
    ("max-seq-len-chunk", b([10], 1, [26]), KVCacheExhausted, [10, 33, 32]),
    ("max-seq-len-new", b([100], 1, [33]), KVCacheExhausted, [100, 33]),
    ("duplicate-decode", b([10, 11, 10], 0, []), ValueError, [10]),
    ("duplicate-chunk-decode", b([11, 11], 1, [2]), ValueError, [11]),
    ("duplicate-new", b([100, 100], 2, [1, 2]), ValueError, [100]),
    ("lens-longer", b([100], 1, [1, 2]), ValueError, ["init_prefill_lens", 2]),
    ("lens-shorter", b([100, 10], 1, []), ValueError, ["init_prefill_lens", 0]),
    ("len-zero", b([100], 1, [0]), ValueError, [0]),
    ("len-negative", b([10, 100], 2, [2, -3]), ValueError, [-3]),
    ("num-prefill-over", b([100], 2, [1, 1]), ValueError, ["num_prefill_seqs", 2]),
    ("num-prefill-negative", b([10], -1, []), ValueError, ["num_prefill_seqs", -1]),
    ("unknown-layer", b([10], 0, [], layer=4), ValueError, ["layer_id", 4]),
    ("decode-unknown", b([555], 0, []), KeyError, [555]),
    ("decode-unknown-after-new", b([100, 10, 555], 1, [2]), KeyError, [555]),
    ("later-layer-unknown-decode", b([10, 555], 0, [], layer=L1), KeyError, [555]),
    ("later-layer-unknown-prefill", b([100], 1, [3], layer=L1), KeyError, [100]),
    ("later-layer-query-over-length", b([11], 1, [3], layer=L1), ValueError, [11, 3]),
    ("id-str", b(["a"], 1, [1]), TypeError, ["'a'"]),
    ("id-float", b([10, 1.5], 1, [1]), TypeError, ["1.5"]),
    ("id-none", b([None], 0, []), TypeError, ["None"]),
    ("len-str", b([100], 1, ["3"]), TypeError, ["'3'"]),
    ("id-over-int64", b([2**64], 1, [1]), (ValueError, OverflowError, TypeError), [2**64]),
]
# The same faults for pack, on running requests only (pack reserves nothing).
BAD_PACKS = [
    ("duplicate-decode", b([10, 11, 10], 0, []), ValueError, [10]),
    ("duplicate-chunk-decode", b([11, 11], 1, [2]), ValueError, [11]),
    ("lens-longer", b([10], 1, [1, 2]), ValueError, ["init_prefill_lens", 2]),
    ("lens-shorter", b([11, 10], 1, []), ValueError, ["init_prefill_lens", 0]),
    ("len-zero", b([10], 1, [0]), ValueError, [0]),
    ("len-negative", b([10, 11], 2, [2, -3]), ValueError, [-3]),
    ("num-prefill-over", b([10], 2, [1, 1]), ValueError, ["num_prefill_seqs", 2]),
    ("num-prefill-negative", b([10], -1, []), ValueError, ["num_prefill_seqs", -1]),
    ("unknown-layer", b([10], 0, [], layer=4), ValueError, ["layer_id", 4]),
    ("decode-unknown", b([10, 555], 0, []), KeyError, [555]),
    ("prefill-unknown", b([100], 1, [3]), KeyError, [100]),
    ("query-over-length", b([11], 1, [3]), ValueError, [11, 3]),
    ("id-str", b(["a"], 0, []), TypeError, ["'a'"]),
    ("id-float", b([10, 1.5], 1, [1]), TypeError, ["1.5"]),
    ("len-str", b([10], 1, ["3"]), TypeError, ["'3'"]),
    ("id-over-int64", b([2**64], 0, []), (ValueError, OverflowError, TypeError), [2**64]),
]


def ids(cases):
    return [case[0] for case in cases]


def running(make_manager, block_size: int) -> Harness:
    h = Harness(make_manager(block_size=block_size, num_blocks=40 // block_size, max_running_reqs=4, max_seq_len=32))
    h.step(h.batch([10, 11], [6, 2]))
    h.step(h.batch([12, 10], [1]))
    return h


def assert_names(message: str, values) -> None:
    for value in values:
        pattern = rf"(?<![\w.-]){re.escape(str(value))}(?![\w.])"
        assert re.search(pattern, message), f"{value!r} is not named in {message!r}"


def assert_still_usable(h: Harness) -> None:
    h.step(h.batch([13, 10, 11, 12], [2]))
    h.step(h.batch([10, 11, 12, 13], [], layer=L1))


@per_block_size
@pytest.mark.parametrize("name, batch, error, names", BAD_UPDATES, ids=ids(BAD_UPDATES))
def test_update_block_table_rejects(make_manager, block_size, name, batch, error, names):
    h = running(make_manager, block_size)
    batch = b(list(batch.req_ids), batch.num_prefill_seqs, list(batch.init_prefill_lens), batch.layer_id)
    if error is KVCacheExhausted:
        with pytest.raises(KVCacheExhausted):  # the reference agrees it does not fit
            h.ref.update(batch)
    message = h.expect_error(lambda: h.manager.update_block_table(batch), error)
    assert batch.seq_lens is None
    assert_names(message, names)
    assert_still_usable(h)


def test_kv_cache_exhausted_is_a_runtime_error():
    assert issubclass(KVCacheExhausted, RuntimeError)


@per_block_size
@pytest.mark.parametrize("name, batch, error, names", BAD_PACKS, ids=ids(BAD_PACKS))
def test_pack_flash_attn_metadata_rejects(make_manager, block_size, name, batch, error, names):
    h = running(make_manager, block_size)
    batch = b(list(batch.req_ids), batch.num_prefill_seqs, list(batch.init_prefill_lens), batch.layer_id)
    message = h.expect_error(lambda: h.manager.pack_flash_attn_metadata(batch), error)
    assert_names(message, names)
    assert_still_usable(h)


@per_block_size
@pytest.mark.parametrize(
    "op, layer, req_ids",
    [
        ("update_block_table", L0, [10, 555]),
        ("update_block_table", L1, [10, 555]),
        ("pack_flash_attn_metadata", L0, [10, 555]),
    ],
    ids=["update-first-layer", "update-later-layer", "pack"],
)
def test_errors_name_the_operation(make_manager, block_size, op, layer, req_ids):
    """Every entry point's errors name the operation."""
    h = running(make_manager, block_size)
    batch = b(req_ids, 0, [], layer=layer)
    message = h.expect_error(lambda: getattr(h.manager, op)(batch), KeyError)
    assert op in message


@per_block_size
@pytest.mark.parametrize(
    "release, error, names",
    [
        ([555], KeyError, [555]),
        ([10, 555], KeyError, [555]),  # all or nothing: 10 stays
        ([11, 11], ValueError, [11]),
        ([10, "x"], TypeError, ["'x'"]),
    ],
    ids=["unknown", "known-and-unknown", "duplicate", "non-int"],
)
def test_release_seqs_rejects(make_manager, block_size, release, error, names):
    h = running(make_manager, block_size)
    message = h.expect_error(lambda: h.manager.release_seqs(release), error)
    assert_names(message, names)
    assert_still_usable(h)


@per_block_size
@pytest.mark.parametrize("method", ["seq_len", "token_slots"])
def test_unknown_request_lookups(make_manager, block_size, method):
    h = running(make_manager, block_size)
    message = h.expect_error(lambda: getattr(h.manager, method)(555), KeyError)
    assert_names(message, [555])


@per_block_size
def test_batch_wider_than_request_rows_at_later_layer(make_manager, block_size):
    """More entries than request rows, at a layer that only reads: the unknown id is a
    KeyError, not a complaint about an internal buffer."""
    h = running(make_manager, block_size)
    batch = b([10, 11, 12, 600, 601], 0, [], layer=L1)
    message = h.expect_error(lambda: h.manager.update_block_table(batch), KeyError)
    assert_names(message, [600])
    h.expect_error(lambda: h.manager.pack_flash_attn_metadata(batch), KeyError)


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from configs import BY_ID
    from disagmoe import BatchMetadata, KVCacheExhausted
    manager = BY_ID[{config!r}].make(block_size=4, num_blocks=64, max_running_reqs=2)
    n = 10
    try:
        manager.update_block_table(BatchMetadata(3, list(range(100, 100 + n)), n, [1] * n))
    except KVCacheExhausted as exc:
        print("KVCacheExhausted", exc)
    manager.check_integrity()
    assert manager.num_running_reqs() == 0 and manager.num_free_slots() == manager.capacity
    manager.update_block_table(BatchMetadata(3, [1, 2], 2, [1, 1]))
    manager.check_integrity()
    print("OK")
""")


def test_more_new_requests_than_request_rows(config):
    """A first-layer batch of 10 new requests for 2 request rows: KVCacheExhausted, and
    nothing changed. Run in a child process: a buffer overrun may kill it."""
    script = SCRIPT.format(tests=__file__.rsplit("/", 1)[0], config=config.id)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr[-2000:]}"
    assert run.stdout.startswith("KVCacheExhausted") and run.stdout.rstrip().endswith("OK"), run.stdout
    assert_names(run.stdout.splitlines()[0], [10, 2])


@per_block_size
def test_bad_configuration(config, block_size):
    model = ModelConfig(layer_ids=(0,), max_seq_len=8, max_batch_size_attn=2)
    cache = CacheConfig(block_size=block_size, num_gpu_blocks=4)
    with pytest.raises(ValueError, match="max_running_reqs=0"):
        config.cls(model, cache, 0, device=config.device, **config.kwargs)
    for bad in (dict(layer_ids=()), dict(layer_ids=(1, 1)), dict(max_seq_len=0)):
        with pytest.raises(ValueError):
            ModelConfig(**{**dict(layer_ids=(0,), max_seq_len=8, max_batch_size_attn=2), **bad})
    for bad in (dict(block_size=0), dict(num_gpu_blocks=0)):
        with pytest.raises(ValueError, match="=0"):
            CacheConfig(**{**dict(block_size=block_size, num_gpu_blocks=4), **bad})


@per_block_size
def test_gpu_kernels_argument(block_size):
    model = ModelConfig(layer_ids=(0,), max_seq_len=8, max_batch_size_attn=2)
    cache = CacheConfig(block_size=block_size, num_gpu_blocks=4)
    with pytest.raises(ValueError, match="'bogus'"):
        GPUBlockManager(model, cache, 2, device="cpu", kernels="bogus")
    with pytest.raises(ValueError, match="triton"):
        GPUBlockManager(model, cache, 2, device="cpu", kernels="triton")
    assert GPUBlockManager(model, cache, 2, device="cpu").kernels == "torch"
    with pytest.raises(ValueError, match="pack_launch=.*kernels='torch'"):
        GPUBlockManager(model, cache, 2, device="cpu", pack_launch="a launch shape")

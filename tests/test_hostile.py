"""Hostile input through the public API: every class of defect a hostile test found, with
cases beyond its examples. Each call either works as with plain ints, or raises one of
the contract's errors naming the argument and the value, and leaves the manager as it
was (Harness.expect_error snapshots it and runs check_integrity).

Cases that crashed or hung the process before run in a child process, so that a
regression fails one test instead of killing the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch

from disagmoe import BatchMetadata, CacheConfig, GPUBlockManager, KVCacheExhausted, ModelConfig

from configs import BY_ID, LAYER_IDS
from harness import Harness, to_host
from hostile import INT_LIKE, NOT_INTS, EqualsAnything, Index, IndexRaises, clears

L0, L1 = LAYER_IDS[0], LAYER_IDS[1]
TESTS = __file__.rsplit("/", 1)[0]
CONTRACT_ERRORS = (ValueError, TypeError, KeyError, KVCacheExhausted)


def b(req_ids, num_prefill, lens, layer=L0) -> BatchMetadata:
    return BatchMetadata(layer, req_ids, num_prefill, lens)


def running(make_manager, block_size: int = 4) -> Harness:
    """Requests 10 (7 tokens), 11 (2), 12 (1); one of four request rows free; 40 slots."""
    h = Harness(make_manager(block_size=block_size, num_blocks=40 // block_size, max_running_reqs=4, max_seq_len=32))
    h.step(h.batch([10, 11], [6, 2]))
    h.step(h.batch([12, 10], [1]))
    return h


def assert_still_usable(h: Harness) -> None:
    h.step(h.batch([13, 10, 11, 12], [2]))
    h.step(h.batch([10, 11, 12, 13], [], layer=L1))


def run_child(body: str, config_id: str, timeout: float = 60) -> str:
    """Runs `body` (with `make` building a manager of the configuration) in a child process;
    returns its stdout. A crash or a hang fails the test with the child's output."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from configs import BY_ID
        from disagmoe import *
        make = BY_ID[{config_id!r}].make
    """) + textwrap.dedent(body)
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child hung for {timeout} s:\n{body}")
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    return run.stdout


# -- 1. crashes: a list changed while it is read, sizes that wrap ---------------------------

MUTATING_LISTS = """
    from hostile import clears, grows

    def running_ids(m, candidates):
        known = []
        for r in candidates:
            try:
                m.seq_len(r)
                known.append(r)
            except KeyError:
                pass
        return known

    m = make(block_size=4, num_blocks=64, max_running_reqs=8, max_seq_len=64)
    for rounds in range(3):
        ids = list(range(1000, 3000))
        ids.insert(0, clears(ids, 99))
        try:
            m.update_block_table(BatchMetadata(3, ids, len(ids), [1] * len(ids)))
        except KVCacheExhausted as exc:  # 2001 new requests for 8 rows: read, then refused
            assert "2001" in str(exc), exc
        assert ids == [] and m.num_running_reqs() == 0
        ids = [100, 101, 102, 103]
        ids.insert(1, clears(ids, 104))
        m.update_block_table(BatchMetadata(3, ids, 5, [1, 2, 3, 4, 5]))
        assert ids == [] and running_ids(m, range(99, 106)) == [100, 101, 102, 103, 104]
        assert [m.seq_len(r) for r in (100, 104, 101, 102, 103)] == [1, 2, 3, 4, 5]
        lens = [1, 1]
        lens.insert(1, grows(lens, 2))
        m.update_block_table(BatchMetadata(3, [200, 201, 202], 3, lens))
        assert [m.seq_len(r) for r in (200, 201, 202)] == [1, 2, 1]
        ids = [100, 101]
        ids.insert(1, clears(ids, 102))
        m.release_seqs(ids)
        assert running_ids(m, range(99, 106)) == [103, 104]
        m.release_seqs([103, 104, 200, 201, 202])
        m.check_integrity()
        assert m.num_running_reqs() == 0 and m.num_free_slots() == m.capacity
    print("OK")
"""


@pytest.mark.parametrize("config_id", ["cpu", "gpu-torch", "hybrid-torch"])
def test_list_changed_by_an_items_index(config_id):
    """An __index__ that empties the list holding it (and writes over the memory it freed),
    or grows it so that it reallocates: the call reads the items as they were when it
    started. (A reader that kept the list's array read freed memory and crashed.)"""
    assert run_child(MUTATING_LISTS, config_id).strip().endswith("OK")


HUGE_CONFIGS = """
    cls = BY_ID[CONFIG].cls
    device = BY_ID[CONFIG].device
    cases = [
        ("max_seq_len", lambda: cls(ModelConfig([0], 2**62, 8), CacheConfig(4, 8), 2, device=device)),
        ("max_seq_len", lambda: cls(ModelConfig([0], 2**31, 8), CacheConfig(4, 8), 2, device=device)),
        ("max_running_reqs", lambda: cls(ModelConfig([0], 8, 8), CacheConfig(4, 8), 2**62 + 1, device=device)),
        ("max_running_reqs", lambda: cls(ModelConfig([0], 8, 8), CacheConfig(4, 8), 2**64, device=device)),
        ("max_running_reqs", lambda: cls(ModelConfig([0], 8, 8), CacheConfig(4, 8), 2**31, device=device)),
        ("num_gpu_blocks", lambda: CacheConfig(4, 2**62)),
        ("block_size", lambda: CacheConfig(2**62, 1)),
        ("x block_size", lambda: CacheConfig(2**16, 2**16)),
        ("bytes", lambda: cls(ModelConfig([0], 2**31 - 1, 8), CacheConfig(1, 8), 2**31 - 1, device=device)),
        ("bytes", lambda: cls(ModelConfig([0], 2**31 - 1, 8), CacheConfig(1, 8), 2**20, device=device)),
    ]
    for named, make_it in cases:
        try:
            make_it()
        except ValueError as exc:
            assert named in str(exc), (named, str(exc))
        else:
            raise AssertionError(f"no error for {named}")
    print("OK")
"""


@pytest.mark.parametrize("config_id", ["cpu", "gpu-torch", "hybrid-torch"])
def test_huge_sizes_are_refused_before_allocating(config_id):
    """A table size that wrapped to 0, a capacity loop that never ended, std::bad_alloc:
    each is now a ValueError naming the argument, raised before anything is allocated."""
    out = run_child(f"CONFIG = {config_id!r}\n" + textwrap.dedent(HUGE_CONFIGS), config_id, timeout=120)
    assert out.strip().endswith("OK")


# -- 2 and 3. state after an error ---------------------------------------------------------


@pytest.mark.parametrize("n", [2**63 - 1, 2**63 - 7, 2**62, 2**31, 2**31 - 1, 26])
def test_chunk_length_near_int64(make_manager, n):
    """old_len + n past int64: KVCacheExhausted (it cannot fit), nothing changed; 2**63 and
    beyond are not int64 at all (ValueError)."""
    h = running(make_manager)
    message = h.expect_error(lambda: h.manager.update_block_table(b([10], 1, [n])), KVCacheExhausted)
    assert "max_seq_len=32" in message and "req_ids[0]=10" in message
    h.expect_error(lambda: h.manager.update_block_table(b([10, 100], 2, [1, n])), KVCacheExhausted)
    assert_still_usable(h)


@pytest.mark.parametrize("n", [2**63, 2**64, 10**30, -(2**63) - 1])
def test_lengths_past_int64(make_manager, n):
    h = running(make_manager)
    message = h.expect_error(lambda: h.manager.update_block_table(b([10], 1, [n])), ValueError)
    assert f"init_prefill_lens[0]={n}" in message
    h.expect_error(lambda: h.manager.pack_flash_attn_metadata(b([10], 1, [n])), ValueError)
    assert_still_usable(h)


def test_index_that_steps_another_manager(make_manager):
    """The parsed arguments of one call are its own: an __index__ that steps another
    manager (a second design's, or one of the same) changes nothing of this call."""
    h, other = running(make_manager), running(make_manager)
    step = lambda: other.step(other.batch([500, 10], [3]))  # noqa: E731
    batch = h.batch([100, 10, 11], [Index(4, step), 2])
    h.manager.update_block_table(batch)
    assert batch.seq_lens == [4, 9, 3]
    h.ref.update(h.batch([100, 10, 11], [4, 2]))
    h.check_state()
    assert other.manager.seq_len(500) == 3 and other.manager.seq_len(10) == 8
    other.check_state()
    with pytest.raises(KeyError):
        h.manager.seq_len(500)  # the other's request, never this one's
    with pytest.raises(KeyError):
        other.manager.seq_len(100)
    pack = lambda: other.manager.pack_flash_attn_metadata(other.batch([500, 10]))  # noqa: E731
    md = h.manager.pack_flash_attn_metadata(h.batch([100, 10], [Index(4, pack)]))
    assert md.seq_lens == [4, 9] and md.num_prefills == 1


def test_index_that_calls_the_same_manager(make_manager):
    """An __index__ that changes the manager whose call is reading it: that inner call is
    refused (RuntimeError), so the outer call sees its argument fail (TypeError), and the
    manager is as it was. An inner call that only reads works."""
    h = running(make_manager)
    m = h.manager
    reenter = Index(2, lambda: m.update_block_table(b([13], 1, [1])))
    message = h.expect_error(lambda: m.update_block_table(b([100], 1, [reenter])), TypeError)
    assert "init_prefill_lens[0]=Index(2)" in message
    cause = None
    try:
        m.update_block_table(b([100], 1, [reenter]))
    except TypeError as exc:
        cause = exc.__cause__
    assert isinstance(cause, RuntimeError) and "another call" in str(cause)
    for inner in (lambda: m.release_seqs([10]), m.reset_state, lambda: m.pack_flash_attn_metadata(b([10], 0, []))):
        h.expect_error(lambda: m.pack_flash_attn_metadata(b([10], Index(0, inner), [])), TypeError)
    reads = Index(1, lambda: (m.seq_len(10), m.token_slots(10), m.num_free_slots()))
    batch = h.batch([100], [reads])
    m.update_block_table(batch)
    md = m.pack_flash_attn_metadata(batch)
    assert reads.calls == 2 and batch.seq_lens == md.seq_lens == [1]  # read once a call
    h.ref.update(h.batch([100], [1]))
    h.check_state()
    h.release([100])
    assert_still_usable(h)


def test_pack_that_grows_its_buffer_reads_the_batch_once(config):
    """A batch too big for the metadata buffer made at construction: the buffer grows
    within the one call that read the batch. (Packing again after growing read the batch
    a second time, and a list emptied by the first read was then an empty batch.)"""
    plain, odd = (
        Harness(config.make(block_size=4, num_blocks=64, max_running_reqs=2, max_seq_len=64)) for _ in range(2)
    )
    for h in (plain, odd):
        h.update(h.batch([1, 2], [60, 60]))
    want = plain.pack(plain.batch([1, 2], [60, 60]))
    ids = [1]
    ids.append(clears(ids, 2))
    lens = [60, Index(60)]
    got = to_host(odd.manager.pack_flash_attn_metadata(BatchMetadata(L0, ids, 2, lens)), odd.manager.device)
    assert got == want and lens[1].calls == 1 and ids == []


def test_token_slots_reads_the_id_once(make_manager):
    """token_slots asks the core twice about one id: it reads the id once, so an id whose
    __index__ changes its answer cannot mix two requests' slots."""
    h = running(make_manager)
    answers = iter([10, 11, 12])
    shifty = Index(0)
    shifty.__class__ = type("Shifty", (Index,), {"__index__": lambda self: next(answers)})
    assert h.manager.token_slots(shifty) == h.manager.token_slots(10)


def test_batch_memo_compares_the_ints_the_core_reads(make_manager):
    """A later layer's batch of the same ids gets the earlier layer's metadata from memory;
    an id that equals anything by __eq__ but reads as another int is not that batch."""
    h = running(make_manager)
    m = h.manager
    m.pack_flash_attn_metadata(b([10, 11], 0, [], layer=L0))
    liar = EqualsAnything(555)
    for call in (m.pack_flash_attn_metadata, m.update_block_table):
        message = h.expect_error(lambda: call(b([10, liar], 0, [], layer=L1)), KeyError)
        assert "555" in message
    md = m.pack_flash_attn_metadata(b([10, EqualsAnything(11)], 0, [], layer=L1))
    assert md.seq_lens == [7, 2]


# -- 4. wrong results ----------------------------------------------------------------------


@pytest.mark.parametrize("block_size, num_blocks", [(1, 2**31), (2, 2**30), (16, 2**27), (2**31, 1)])
def test_pool_past_int32_slots(config, block_size, num_blocks):
    """Slots are int32 in block tables: a pool past 2**31 - 1 slots is refused on every
    design, by the same rule (it handed out negative slots on gpu)."""
    with pytest.raises(ValueError, match="2147483647"):
        cache = CacheConfig(block_size, num_blocks)
        config.cls(ModelConfig(LAYER_IDS, 8, 2), cache, 2, device=config.device, **config.kwargs)


def test_default_block_size_pool_past_int32_slots():
    """With block_size=None the product is known only to the manager: at its default of
    16 slots a block (every design's), 2**28 blocks pass the int32 range of slots."""
    cache = CacheConfig(None, 2**28)
    with pytest.raises(ValueError, match="num_gpu_blocks=268435456 x block_size=16"):
        BY_ID["cpu"].cls(ModelConfig(LAYER_IDS, 8, 2), cache, 2, device="cpu")


@pytest.mark.parametrize("layer", [L0, L1], ids=["first-layer", "later-layer"])
@pytest.mark.parametrize(
    "req_ids, error, named",
    [
        ([10, 11, 12, 10, 13], ValueError, "10"),  # a repeat, and more entries than rows
        ([10, 11, 12, 600, 601], KeyError, "600"),  # unknown decode ids, more entries than rows
        ([10, 10, 10, 10, 10, 10], ValueError, "10"),
        (list(range(600, 700)), KeyError, "600"),
    ],
)
def test_malformed_batch_longer_than_the_rows(make_manager, layer, req_ids, error, named):
    """KVCacheExhausted is back-pressure (retry later); a malformed batch never fits, so it
    is a ValueError / KeyError even when it also holds more entries than request rows."""
    h = running(make_manager)
    for call in (h.manager.update_block_table, h.manager.pack_flash_attn_metadata):
        message = h.expect_error(lambda: call(b(req_ids, 0, [], layer)), error)
        assert named in message


def test_malformed_batch_past_max_seq_len(make_manager):
    """A repeated id in a batch whose first entry is also past max_seq_len: ValueError."""
    h = running(make_manager)
    h.expect_error(lambda: h.manager.update_block_table(b([10, 11, 11], 1, [30])), ValueError)
    h.expect_error(lambda: h.manager.update_block_table(b([100, 11, 555], 1, [40])), KeyError)


@pytest.mark.parametrize(
    "value",
    [1.5, Fraction(3, 2), torch.tensor(1.5), 1.0, True, "1", None, np.float64(1.0)],
    ids=["float", "fraction", "float-tensor", "integral-float", "bool", "str", "none", "numpy-float"],
)
def test_num_prefill_seqs_not_an_int(make_manager, value):
    """Never truncated: a TypeError naming num_prefill_seqs and the value, no signature."""
    h = running(make_manager)
    for call in (h.manager.update_block_table, h.manager.pack_flash_attn_metadata):
        message = h.expect_error(lambda: call(b([10, 11], value, [1])), TypeError)
        assert "num_prefill_seqs=" in message and "Invoked with" not in message
        assert len(message) < 200


# -- 5. errors that name the argument and the value ----------------------------------------


@pytest.mark.parametrize("name", sorted(NOT_INTS))
@pytest.mark.parametrize("where", ["req_id", "prefill_len", "num_prefill_seqs", "layer_id", "release", "seq_len"])
def test_not_an_int_anywhere(make_manager, where, name):
    """Every int argument refuses every non-int the same way: TypeError naming it."""
    value = NOT_INTS[name]
    h = running(make_manager)
    m = h.manager
    calls = {
        "req_id": [
            lambda: m.update_block_table(b([100, value], 2, [1, 1])),
            lambda: m.pack_flash_attn_metadata(b([10, value], 0, [])),
        ],
        "prefill_len": [
            lambda: m.update_block_table(b([100, 10], 2, [1, value])),
            lambda: m.pack_flash_attn_metadata(b([10], 1, [value])),
        ],
        "num_prefill_seqs": [
            lambda: m.update_block_table(b([10], value, [1])),
            lambda: m.pack_flash_attn_metadata(b([10], value, [1])),
        ],
        "layer_id": [
            lambda: m.update_block_table(b([10], 0, [], layer=value)),
            lambda: m.pack_flash_attn_metadata(b([10], 0, [], layer=value)),
        ],
        "release": [lambda: m.release_seqs([10, value])],
        "seq_len": [lambda: m.seq_len(value), lambda: m.token_slots(value)],
    }[where]
    for call in calls:
        message = h.expect_error(call, TypeError)
        assert "Invoked with" not in message and len(message) < 300, message
        if name != "bad-repr":
            assert repr(value)[:20] in message or where == "seq_len", message
    assert_still_usable(h)


@pytest.mark.parametrize("kind", sorted(INT_LIKE))
def test_int_like_values_act_as_ints(config, kind):
    """numpy ints, integer tensors and int subclasses are read as their int, everywhere."""
    as_int = INT_LIKE[kind]
    plain, odd = running(config.make), running(config.make)
    steps = [([100, 10, 11], [3, 2]), ([12, 100, 10], [])]
    for ids, lens in steps:
        want = plain.step(plain.batch(ids, lens))
        batch = BatchMetadata(as_int(L0), [as_int(r) for r in ids], as_int(len(lens)), [as_int(n) for n in lens])
        odd.manager.update_block_table(batch)
        assert batch.seq_lens == want.seq_lens and all(type(n) is int for n in batch.seq_lens)
        got = to_host(odd.manager.pack_flash_attn_metadata(batch), odd.manager.device)
        assert got == want
    odd.manager.release_seqs([as_int(100)])
    assert odd.manager.seq_len(as_int(10)) == plain.manager.seq_len(10)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("max_seq_len", 0, ValueError),
        ("max_seq_len", -1, ValueError),
        ("max_seq_len", 8.0, TypeError),
        ("max_seq_len", None, TypeError),
        ("max_seq_len", "8", TypeError),
        ("max_seq_len", True, TypeError),
        ("max_seq_len", 2**31, ValueError),
        ("max_batch_size_attn", 0, ValueError),
        ("max_batch_size_attn", 2.5, TypeError),
        ("layer_ids", (), ValueError),
        ("layer_ids", (1, 1), ValueError),
        ("layer_ids", (1.0,), TypeError),
        ("layer_ids", 3, TypeError),
        ("layer_ids", "012", TypeError),
        ("layer_ids", [0, None], TypeError),
        ("layer_ids", (IndexRaises(ValueError("no")),), TypeError),
    ],
)
def test_model_config_rejects(field, value, error):
    kwargs = dict(layer_ids=(0, 1), max_seq_len=8, max_batch_size_attn=2)
    with pytest.raises(error, match=field) as info:
        ModelConfig(**{**kwargs, field: value})
    assert "not supported between" not in str(info.value)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("block_size", 0, ValueError),
        ("block_size", 1.5, TypeError),
        ("block_size", "4", TypeError),
        ("block_size", False, TypeError),
        ("block_size", 2**31, ValueError),
        ("num_gpu_blocks", 0, ValueError),
        ("num_gpu_blocks", None, TypeError),
        ("num_gpu_blocks", 2**63, ValueError),
        ("num_gpu_blocks", Fraction(4, 1), TypeError),
    ],
)
def test_cache_config_rejects(field, value, error):
    kwargs = dict(block_size=4, num_gpu_blocks=8)
    with pytest.raises(error, match=f"{field}=") as info:
        CacheConfig(**{**kwargs, field: value})
    assert "num_gpu_blocks" not in str(info.value) or field == "num_gpu_blocks"


def test_configs_keep_the_int():
    model = ModelConfig(layer_ids=np.array([3, 5]), max_seq_len=np.int64(8), max_batch_size_attn=torch.tensor(2))
    cache = CacheConfig(block_size=np.int32(4), num_gpu_blocks=torch.tensor(8))
    assert model == ModelConfig((3, 5), 8, 2) and cache == CacheConfig(4, 8)
    assert all(type(v) is int for v in (*model.layer_ids, model.max_seq_len, cache.block_size, cache.num_gpu_blocks))


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (-5, ValueError),
        (2.0, TypeError),
        (None, TypeError),
        (True, TypeError),
        (2**31, ValueError),
        ("4", TypeError),
    ],
)
def test_max_running_reqs_rejects(config, value, error):
    with pytest.raises(
        error, match=f"max_running_reqs={value!r}" if error is TypeError else f"max_running_reqs={value}"
    ):
        config.cls(ModelConfig(LAYER_IDS, 8, 2), CacheConfig(4, 8), value, device=config.device, **config.kwargs)


@pytest.mark.parametrize(
    "model, cache, error",
    [
        ("not a config", CacheConfig(4, 8), TypeError),
        (ModelConfig(LAYER_IDS, 8, 2), (4, 8), TypeError),
    ],
)
def test_constructor_argument_types(config, model, cache, error):
    with pytest.raises(error, match="config"):
        config.cls(model, cache, 2, device=config.device, **config.kwargs)


@pytest.mark.parametrize(
    "device, error",
    [
        ("bogus", ValueError),
        ("meta", ValueError),
        (3.5, TypeError),
        (["cpu"], TypeError),
        ("cuda:99", ValueError),
        *([] if torch.cuda.is_available() else [("cuda", ValueError)]),
    ],
)
def test_bad_device(config, device, error):
    model, cache = ModelConfig(LAYER_IDS, 8, 2), CacheConfig(4, 8)
    with pytest.raises(error, match="device="):
        config.cls(
            model,
            cache,
            2,
            device=device,
            **{**config.kwargs, "kernels": "torch"} if config.cls is GPUBlockManager else {},
        )


@pytest.mark.parametrize("req_ids", [None, 3, 2.5])
def test_release_of_a_non_sequence(make_manager, req_ids):
    h = running(make_manager)
    message = h.expect_error(lambda: h.manager.release_seqs(req_ids), TypeError)
    assert f"req_ids={req_ids!r}" in message


def test_keyboard_interrupt_passes_through(make_manager):
    """An interrupt raised by an __index__ is not turned into a TypeError."""
    h = running(make_manager)
    h.expect_error(
        lambda: h.manager.update_block_table(b([100], 1, [IndexRaises(KeyboardInterrupt())])), KeyboardInterrupt
    )

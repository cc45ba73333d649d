"""What a caller can do to a manager through its arguments and its results, on every design:
nothing wrong is handed out, nothing is corrupted.

The memo of the last pack remembers the ints the step read (never the caller's lists);
each pack hands out objects of its own; a step is all or nothing whatever raises where
Python code runs (a setter, an interrupt); two threads on one manager are refused; odd
values are named."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import threading

import numpy as np
import pytest
import torch

from disagmoe import BatchMetadata, CacheConfig, ModelConfig

from harness import Harness, to_host
from hostile import Index


def running(make_manager) -> Harness:
    """Requests 1 (3 tokens) and 2 (5 tokens) running."""
    h = Harness(make_manager(block_size=2, num_blocks=64, max_running_reqs=8, max_seq_len=64))
    h.step(h.batch([1, 2], [3, 5]))
    return h


def later(h: Harness, req_ids: list[int]) -> BatchMetadata:
    return h.batch(req_ids, layer=h.ref.layer_ids[1])


def test_memo_remembers_what_the_step_read_not_the_list(make_manager):
    """An __index__ that rewrites its own list while the pack reads it: a later ordinary
    batch equal to the list as it is after the call is not the batch that was packed."""
    h = running(make_manager)
    m = h.manager
    ids: list = [1]
    ids.append(Index(2, lambda: ids.__setitem__(0, 2) or ids.pop()))  # the list becomes [2]
    m.pack_flash_attn_metadata(BatchMetadata(h.ref.layer_ids[1], ids, 0, []))
    assert ids == [2]
    md = to_host(m.pack_flash_attn_metadata(BatchMetadata(h.ref.layer_ids[2], [2], 0, [])), m.device)
    assert md.seq_lens == [5] and md.block_tables == [[m.token_slots(2)[p] // 2 for p in (0, 2, 4)]]


def test_a_property_that_answers_differently_each_read(make_manager):
    """req_ids is read once a call; a batch whose ids change from read to read is packed as
    read, and the next layer's ordinary batch gets its own metadata."""
    h = running(make_manager)
    m = h.manager
    answers = iter([[1], [2], [1, 2], [2, 1]])

    class Shifty(BatchMetadata):
        @property  # type: ignore[override]
        def req_ids(self):
            return next(answers)

        @req_ids.setter
        def req_ids(self, value):
            pass

    batch = Shifty(h.ref.layer_ids[1], [], 0, [])
    assert m.pack_flash_attn_metadata(batch).seq_lens == [3]
    assert m.pack_flash_attn_metadata(later(h, [2])).seq_lens == [5]
    h.pack(later(h, [1, 2]))
    h.check_state()


def test_edits_of_a_returned_metadata_reach_nothing(make_manager):
    """The first pack's list, fields and tensor shapes edited: the next layer's pack of the
    same batch (from memory) and the next update are as if nothing happened."""
    h = running(make_manager)
    m = h.manager
    first = h.batch([1, 2])
    m.update_block_table(first)
    h.ref.update(first)
    md = m.pack_flash_attn_metadata(first)
    want = to_host(md, m.device)
    md.seq_lens[0] = 999
    md.seq_lens.append(0)
    md.max_query_len = 77
    md.num_prefills = 5
    md.block_tables.unsqueeze_(0)
    md.slot_mapping.resize_(1)
    md.seq_lens_tensor.t_()
    nxt = later(h, [1, 2])
    m.update_block_table(nxt)
    assert nxt.seq_lens == [4, 6]
    again = m.pack_flash_attn_metadata(nxt)
    assert to_host(again, m.device) == want
    assert again.seq_lens == [4, 6] and again.max_query_len == 1 and again.num_prefills == 0
    again.seq_lens.clear()
    assert to_host(m.pack_flash_attn_metadata(BatchMetadata(h.ref.layer_ids[2], [1, 2], 0, [])), m.device) == want
    h.step(h.batch([1, 2]))


def test_writes_into_returned_tensors_do_not_corrupt_the_next_step(make_manager):
    """A caller that writes into the tensors (on torch's CPU device too, where the cpu
    design once handed out its staging buffer): the next step's metadata is right."""
    h = running(make_manager)
    md = h.manager.pack_flash_attn_metadata(h.batch([1, 2], layer=h.ref.layer_ids[1]))
    for tensor in (
        md.block_tables,
        md.slot_mapping,
        md.seq_lens_tensor,
        md.context_lens_tensor,
        md.query_start_loc,
        md.seq_start_loc,
    ):
        tensor.fill_(77)
    for _ in range(3):
        h.step(h.batch([1, 2]))
        h.step(h.batch([3], [1]))
        h.release([3])


def test_a_seq_lens_setter_that_raises_changes_nothing(make_manager):
    h = running(make_manager)

    class Refuses(BatchMetadata):
        def __setattr__(self, name, value):
            if name == "seq_lens" and value is not None:
                raise RuntimeError("not today")
            super().__setattr__(name, value)

    batch = Refuses(h.first_layer, [9, 1, 2], 1, [4])
    h.expect_error(lambda: h.manager.update_block_table(batch), RuntimeError, "not today")
    h.step(h.batch([1, 2]))


def test_an_interrupt_inside_a_step_changes_nothing(make_manager):
    """KeyboardInterrupt raised where Python code runs during a step (an argument's
    __index__, the setter): nothing changed, and the manager takes the next call."""
    h = running(make_manager)
    m = h.manager

    def interrupt():
        raise KeyboardInterrupt

    for batch in (
        BatchMetadata(h.first_layer, [1, Index(2, interrupt)], 0, []),
        BatchMetadata(h.first_layer, [Index(9, interrupt)], 1, [2]),
        BatchMetadata(h.first_layer, [9], 1, [Index(2, interrupt)]),
    ):
        h.expect_error(lambda: m.update_block_table(batch), KeyboardInterrupt)
        h.expect_error(lambda: m.pack_flash_attn_metadata(batch), KeyboardInterrupt)

    class Interrupted(BatchMetadata):
        def __setattr__(self, name, value):
            if name == "seq_lens" and value is not None:
                raise KeyboardInterrupt
            super().__setattr__(name, value)

    h.expect_error(lambda: m.update_block_table(Interrupted(h.first_layer, [1, 2], 0, [])), KeyboardInterrupt)
    h.expect_error(lambda: m.release_seqs([1, Index(2, interrupt)]), KeyboardInterrupt)
    h.step(h.batch([1, 2]))
    h.release([1])
    h.step(h.batch([2]))


def test_two_threads_on_one_manager_are_refused(make_manager):
    """A call from a second thread while the first's call is under way (held inside it, in
    an argument's __index__): refused with RuntimeError, whatever the call; the manager
    stays consistent, and the first call completes."""
    h = running(make_manager)
    m = h.manager
    inside, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        inside.set()
        assert resume.wait(timeout=30)

    def worker() -> None:
        try:
            m.pack_flash_attn_metadata(BatchMetadata(h.ref.layer_ids[1], [Index(1, hold), 2], 0, []))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(timeout=30)
    refused = 0
    for call in (
        lambda: m.update_block_table(h.batch([1, 2])),
        lambda: m.release_seqs([2]),
        lambda: m.pack_flash_attn_metadata(h.batch([1, 2], layer=h.ref.layer_ids[1])),
        m.reset_state,
        m.synchronize,
        lambda: m.warm_up(),
    ):
        with pytest.raises(RuntimeError, match="another call"):
            call()
        refused += 1
    assert m.seq_len(1) == 3 and m.num_running_reqs() == 2  # reads work meanwhile
    resume.set()
    t.join(timeout=30)
    assert not errors and refused == 6
    h.check_state()
    h.step(h.batch([1, 2]))


@pytest.mark.parametrize("where", ["req_ids", "init_prefill_lens", "num_prefill_seqs", "layer_id"])
def test_a_bool_tensor_is_not_an_int(make_manager, where):
    h = running(make_manager)
    args = dict(layer_id=h.first_layer, req_ids=[9], num_prefill_seqs=1, init_prefill_lens=[2])
    value = torch.tensor(True)
    if where == "req_ids":
        args[where] = [value]
    elif where == "init_prefill_lens":
        args[where] = [value]
    else:
        args[where] = value
    batch = BatchMetadata(**args)
    h.expect_error(lambda: h.manager.update_block_table(batch), TypeError, "bool")
    h.expect_error(lambda: h.manager.release_seqs([torch.tensor(True)]), TypeError, "bool")


def test_bool_tensors_in_configs_are_refused():
    with pytest.raises(TypeError, match="block_size"):
        CacheConfig(torch.tensor(True), 8)
    with pytest.raises(TypeError, match="max_seq_len"):
        ModelConfig((0,), torch.tensor(True), 8)


@pytest.mark.parametrize("batch", [None, 42, {"layer_id": 3}, "batch", [3, [1], 0, []]])
def test_a_batch_that_is_not_a_batch(make_manager, batch):
    h = running(make_manager)
    for call in (h.manager.update_block_table, h.manager.pack_flash_attn_metadata):
        message = h.expect_error(lambda: call(batch), TypeError)
        assert "batch=" in message and "BatchMetadata" in message


def test_an_array_of_dates_is_named(make_manager):
    h = running(make_manager)
    dates = np.array(["2024-01-01"], dtype="datetime64[D]")
    h.expect_error(
        lambda: h.manager.update_block_table(BatchMetadata(h.first_layer, dates, 1, [2])),
        (TypeError, ValueError),
        "req_ids",
    )  # type: ignore[arg-type]
    h.expect_error(lambda: h.manager.release_seqs(dates), (TypeError, ValueError), "req_ids")


def test_a_manager_cannot_be_copied(make_manager):
    m = make_manager()
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be"):
            attempt(m)


def test_a_frozen_config_changed_after_it_was_made_is_checked_again(config):
    model = ModelConfig((3, 5), 64, 8)
    object.__setattr__(model, "layer_ids", ("a",))
    with pytest.raises(TypeError, match="layer_ids"):
        config.cls(model, CacheConfig(4, 32), 8, device=config.device, **config.kwargs)
    model = ModelConfig((3, 5), 64, 8)
    object.__setattr__(model, "layer_ids", ())
    with pytest.raises(TypeError, match="layer_ids"):
        config.cls(model, CacheConfig(4, 32), 8, device=config.device, **config.kwargs)
    cache = CacheConfig(4, 32)
    object.__setattr__(cache, "num_gpu_blocks", 2.5)
    with pytest.raises(TypeError, match="num_gpu_blocks"):
        config.cls(ModelConfig((0,), 64, 8), cache, 8, device=config.device, **config.kwargs)


def test_returned_metadata_objects_are_distinct(make_manager):
    """Two packs never hand out the same object, list or tensor object."""
    h = running(make_manager)
    a = h.manager.pack_flash_attn_metadata(later(h, [1, 2]))
    b = h.manager.pack_flash_attn_metadata(h.batch([1, 2], layer=h.ref.layer_ids[2]))
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, (list, torch.Tensor)):
            assert x is not y, field.name

"""What the contract promises about fork (BlockManager's docstring, "Fork"): a manager made
before a fork either works in the child (the cpu design on torch's CPU device) or refuses
every call and every read of the device with a RuntimeError that names the fork (the
device-table designs, whose torch kernels GNU OpenMP may hang in a child; anything on
CUDA); never a hang. A manager made in the child is as torch is there: with one intra-op
thread (what the lab sets, and asv's fork server's children make theirs so) it works. Each
child runs with a deadline, and is killed past it.
"""

from __future__ import annotations

import os
import pickle
import time

import pytest
import torch

from disagmoe import BatchMetadata, BlockManager

from configs import Config
from harness import to_host

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DEADLINE_S = 60


def make(config: Config) -> BlockManager:
    return config.make(block_size=4, num_blocks=64, max_running_reqs=4, max_seq_len=256)


def steps(m: BlockManager) -> list[BatchMetadata]:
    first = m.model_config.layer_ids[0]
    return [BatchMetadata(first, [1, 2], 2, [9, 5]), BatchMetadata(first, [3, 1, 2], 1, [6])]


def step(m: BlockManager, batch: BatchMetadata):
    m.update_block_table(batch)
    return to_host(m.pack_flash_attn_metadata(batch), m.device)


def in_child(fn) -> object:
    """fn()'s result (or the exception it raised) in a forked child, pickled back; fails if
    the child runs past DEADLINE_S (a hang) or dies."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            try:
                result: object = ("returned", fn())
            except BaseException as exc:  # noqa: BLE001 (sent to the parent)
                result = ("raised", type(exc).__name__, str(exc))
            with os.fdopen(write, "wb") as out:
                pickle.dump(result, out)
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
        pytest.fail(f"the forked child ran past {DEADLINE_S} s: a hang")
    with os.fdopen(read, "rb") as got:
        data = got.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child died: status {status}"
    return pickle.loads(data)


def test_a_manager_made_before_a_fork_works_or_refuses_in_the_child(config):
    m = make(config)
    first, second = steps(m)
    step(m, first)

    def use_inherited():
        return step(m, second), m.token_slots(1), m.num_free_slots()

    outcome = in_child(use_inherited)
    if config.device == "cpu" and not config.kwargs:  # the cpu design: runs in the child
        fresh = make(config)
        a, b = steps(fresh)
        step(fresh, a)
        assert outcome == ("returned", (step(fresh, b), fresh.token_slots(1), fresh.num_free_slots()))
    else:
        kind, name, message = outcome  # type: ignore[misc]
        assert (kind, name) == ("raised", "RuntimeError")
        assert "fork" in message and type(m).__name__ in message
    # The parent's manager is untouched by what the child did.
    m.check_integrity()
    assert step(m, second).seq_lens == [6, 10, 6]


def test_every_call_and_device_read_refuses_in_the_child(config):
    """In the child, an inherited manager that does not run there refuses each call and
    each read that needs its device, and answers the host's reads."""
    if config.device == "cpu" and not config.kwargs:
        pytest.skip("the cpu design on torch's CPU device runs in a child")
    m = make(config)
    first, second = steps(m)
    step(m, first)

    def try_each():
        answers = {}
        for name, call in [
            ("update", lambda: m.update_block_table(second)),
            ("pack", lambda: m.pack_flash_attn_metadata(first)),
            ("release", lambda: m.release_seqs([1])),
            ("reset", m.reset_state),
            ("match_prefix", lambda: m.match_prefix(7, [1])),
            ("warm_up", m.warm_up),
            ("synchronize", m.synchronize),
            ("check_integrity", m.check_integrity),
        ]:
            try:
                call()
                answers[name] = "ran"
            except RuntimeError as exc:
                answers[name] = "refused" if "fork" in str(exc) else str(exc)
        answers["seq_len"] = m.seq_len(1)
        answers["num_running_reqs"] = m.num_running_reqs()
        return answers

    kind, answers = in_child(try_each)  # type: ignore[misc]
    assert kind == "returned"
    assert answers.pop("seq_len") == 9 and answers.pop("num_running_reqs") == 2
    assert set(answers.values()) == {"refused"}, answers


def test_a_manager_made_in_the_child_works(config):
    if config.device == "cuda":
        pytest.skip("CUDA does not run in a forked child")

    def make_and_step():
        torch.set_num_threads(1)  # (torch's own parallel operations may hang in a child)
        m = make(config)
        for batch in steps(m):
            md = step(m, batch)
        m.check_integrity()
        return md

    fresh = make(config)
    for batch in steps(fresh):
        expected = step(fresh, batch)
    assert in_child(make_and_step) == ("returned", expected)

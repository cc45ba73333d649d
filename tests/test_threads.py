"""What the contract promises about threads (BlockManager's docstring, "Threads"): one
manager per thread works, with the threads' calls interleaved as finely as the GIL allows,
even in the middle of reading their arguments; a call that would change a manager while
another thread's call on it reads its arguments is refused and changes nothing."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from disagmoe import BatchMetadata

from harness import Harness
from hostile import Index

THREADS = 4


@pytest.fixture
def fine_switching():
    """Let the GIL switch threads every microsecond."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def yielding(n: int) -> Index:
    """The int n, whose __index__ sleeps (releasing the GIL) before it answers."""
    return Index(n, lambda: time.sleep(0))


def workload(h: Harness, seed: int) -> None:
    """Prefills, chunked prefills, decodes and releases, with ids unique to the thread and
    every argument read through a GIL-releasing __index__ (half of the time)."""
    base = 1000 * (seed + 1)
    for round_ in range(12):
        new = base + round_
        running = sorted(h.ref.seq_lens)
        if len(running) == 4:
            h.release(running[:2])
            running = running[2:]
        lens = [1 + (seed + round_) % 5]
        if round_ % 2:
            ids = [yielding(new), *(yielding(r) for r in running)]
            batch = BatchMetadata(h.first_layer, ids, yielding(1), [yielding(n) for n in lens])
            h.manager.update_block_table(batch)
            plain = h.batch([new, *running], lens)
            assert batch.seq_lens == h.ref.update(plain)
            md = h.manager.pack_flash_attn_metadata(batch)
            assert md.seq_lens == batch.seq_lens and md.num_prefills == 1
            h.check_state()
        else:
            h.step(h.batch([new, *running], lens))
        h.step(h.batch(sorted(h.ref.seq_lens), layer=h.ref.layer_ids[1]))


def run_threads(threads: list[threading.Thread], errors: list[BaseException], timeout: float) -> None:
    """Starts `threads`, waits for them (a thread still alive after `timeout` seconds hung),
    then raises the first error they reported."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_one_manager_per_thread(config, fine_switching):
    harnesses = [
        Harness(config.make(block_size=2, num_blocks=64, max_running_reqs=4, max_seq_len=64)) for _ in range(THREADS)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def run(i: int) -> None:
        try:
            start.wait()
            workload(harnesses[i], i)
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(exc)

    run_threads([threading.Thread(target=run, args=(i,)) for i in range(THREADS)], errors, timeout=120)
    for h in harnesses:
        h.check_state()


def test_a_call_from_another_thread_while_one_reads_is_refused(config):
    """Thread A's update is stopped inside an __index__ of its arguments; thread B's calls
    on the same manager that would change it are refused, its reads work; then A's update
    completes as if it had been alone."""
    h = Harness(config.make(block_size=2, num_blocks=64, max_running_reqs=4, max_seq_len=64))
    h.step(h.batch([1, 2], [3, 4]))
    m = h.manager
    reading, resume = threading.Event(), threading.Event()

    def wait_inside():
        reading.set()
        assert resume.wait(timeout=60)

    batch = BatchMetadata(h.first_layer, [Index(3, wait_inside), 1], 1, [5])
    outcome: list = []
    a = threading.Thread(target=lambda: outcome.append(m.update_block_table(batch)))
    a.start()
    assert reading.wait(timeout=60)
    refused = []
    for call in (
        lambda: m.update_block_table(h.batch([9], [1])),
        lambda: m.pack_flash_attn_metadata(h.batch([1, 2])),
        lambda: m.release_seqs([2]),
        m.reset_state,
    ):
        with pytest.raises(RuntimeError, match="another call") as info:
            call()
        refused.append(info.value)
    assert m.seq_len(1) == 3 and m.num_running_reqs() == 2  # reads still work
    resume.set()
    a.join(timeout=60)
    assert outcome == [None] and batch.seq_lens == [5, 4]
    h.ref.update(h.batch([3, 1], [5]))
    h.check_state()
    assert len(refused) == 4


def test_reads_from_another_thread_see_no_call_half_done(config, fine_switching):
    """One thread runs steps, releases and resets; another reads the whole time (the reads
    the contract names). No read is refused, check_integrity finds nothing wrong, and what
    each read answers is a state the manager had: the slots of a request are distinct, in
    range and as many as some length it had."""
    h = Harness(config.make(block_size=2, num_blocks=64, max_running_reqs=4, max_seq_len=64))
    m = h.manager
    lengths: dict[int, set[int]] = {}  # every length each request had, from the worker
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def work() -> None:
        try:
            for seed in range(6):
                workload(h, seed)
                for req_id, seq_len in h.ref.seq_lens.items():
                    lengths.setdefault(req_id, set()).add(seq_len)
                h.reset()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set() or reads[0] < 50:
                m.check_integrity()
                free = m.num_free_slots()
                assert 0 <= free <= m.capacity and free % m.block_size == 0
                assert 0 <= m.num_running_reqs() <= m.max_running_reqs
                for req_id in list(lengths):
                    try:
                        slots = m.token_slots(req_id)
                        m.seq_len(req_id)
                    except KeyError:  # released (or not yet registered) meanwhile
                        continue
                    assert len(set(slots)) == len(slots) and all(0 <= s < m.capacity for s in slots)
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    # The worker records lengths as the steps run: every step's, through the reference.
    original = h.ref.update

    def recording_update(batch):
        seq_lens = original(batch)
        for req_id, seq_len in zip(batch.req_ids, seq_lens):
            lengths.setdefault(int(req_id), set()).add(seq_len)
        return seq_lens

    h.ref.update = recording_update  # type: ignore[method-assign]
    run_threads([threading.Thread(target=work), threading.Thread(target=read)], errors, timeout=300)
    assert reads[0] >= 50
    h.check_state()

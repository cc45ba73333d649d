"""What the contract promises about interrupts (BlockManager's docstring, "Interrupts"): a
signal whose handler raises, delivered at any moment of a call (while a buffer grows
included), leaves the manager as before the call or as after it, the exception is raised
(no signal is lost), and no signal stays blocked afterwards.

The signals are process-directed (setitimer's SIGALRM, os.kill's SIGINT from another
thread), so the kernel may hand them to any thread of the process (torch's own, the
sender), as a Ctrl-C or a timer would be. Each loop makes a manager whose buffers are
small, interrupts a sequence of calls that grows every buffer at a random moment, then
checks `check_integrity`, and the next step's metadata against a fresh manager fed the
calls that took effect. DISAGMOE_INTERRUPT_LOOPS sets the loops of the cpu design on torch's
CPU device (3000); the other configurations (kernels each step, or CUDA) make a twentieth.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time

import pytest

from disagmoe import BatchMetadata, BlockManager

from configs import Config
from harness import to_host

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX signals")

LOOPS = int(os.environ.get("DISAGMOE_INTERRUPT_LOOPS", "3000"))
WARM_TOKENS = 16500  # warm_up to this many tokens grows the hybrid design's staging ring


class Interrupted(BaseException):
    """What the SIGALRM handler raises (a BaseException, as KeyboardInterrupt is)."""


def checkpoint() -> None:
    """A Python call: a signal caught meanwhile has its handler run by now."""


def loops(config: Config) -> int:
    return LOOPS if not config.kwargs and config.device == "cpu" else max(1, LOOPS // 20)


def await_handler(count: list[int], sent: int) -> None:
    """Waits until the handler has run for every signal sent: the kernel may hand one to a
    thread that runs later, and two pending at once would be one."""
    deadline = time.monotonic() + 30
    while count[0] < sent and time.monotonic() < deadline:
        time.sleep(1e-4)
    checkpoint()


def make(config: Config) -> BlockManager:
    return config.make(block_size=4, num_blocks=64, max_running_reqs=4, max_seq_len=256)


def batches(m: BlockManager) -> dict[str, BatchMetadata]:
    first = m.model_config.layer_ids[0]
    return {
        "a": BatchMetadata(first, [1, 2], 2, [23, 9]),  # more tokens than the buffers hold
        "b": BatchMetadata(first, [3, 1, 2], 1, [30]),
        "c": BatchMetadata(first, [1, 2, 3], 0, []),
    }


def calls(m: BlockManager) -> list[tuple[str, object]]:
    """The sequence interrupted: every call that can grow a buffer (the gpu design's staging
    at its first match_prefix, the metadata buffers at the first large pack, the hybrid
    design's staging ring at warm_up), in the order a serving loop makes them."""
    b = batches(m)
    return [
        ("match", lambda: m.match_prefix(1, [101, 102])),
        ("update a", lambda: m.update_block_table(b["a"])),
        ("pack a", lambda: m.pack_flash_attn_metadata(b["a"])),
        ("warm_up", lambda: m.warm_up(WARM_TOKENS)),
        ("update b", lambda: m.update_block_table(b["b"])),
        ("pack b", lambda: m.pack_flash_attn_metadata(b["b"])),
    ]


def took_effect(m: BlockManager, name: str) -> bool:
    """Whether the call `name`, interrupted, changed the books (the others change none)."""
    held = {req_id: _seq_len(m, req_id) for req_id in (1, 2, 3)}
    if name == "match":
        return held[1] is not None
    if name == "update a":
        return held[2] is not None
    if name == "update b":
        return held[3] is not None
    return False


def _seq_len(m: BlockManager, req_id: int) -> int | None:
    try:
        return m.seq_len(req_id)
    except KeyError:
        return None


def finish(m: BlockManager, done: list[str]):
    """Runs the calls of the sequence that did not take effect (packs aside), then the next
    step; returns that step's metadata, on the host."""
    for name, call in calls(m):
        if name not in done and not name.startswith("pack"):
            call()
    step = batches(m)["c"]
    m.update_block_table(step)
    return step.seq_lens, to_host(m.pack_flash_attn_metadata(step), m.device), m.num_free_slots()


def fresh_outcome(config: Config):
    """What a fresh manager fed the whole sequence answers to the next step: what every
    interrupted manager, once it ran the calls that did not take effect, must answer."""
    m = make(config)
    run_sequence(m, [])
    return finish(m, [name for name, _ in calls(m)])


def check_against_fresh(m: BlockManager, done: list[str], expected) -> None:
    """m, whose calls `done` took effect (and no other), is whole, and answers the next
    step as a fresh manager fed the same calls does."""
    m.check_integrity()
    assert finish(m, done) == expected
    m.check_integrity()


def run_sequence(m: BlockManager, done: list[str]) -> None:
    for name, call in calls(m):
        call()
        done.append(name)


def sequence_seconds(config: Config) -> float:
    """How long the uninterrupted sequence takes here (the range of the random moments)."""
    times = []
    for _ in range(5):
        m = make(config)
        start = time.perf_counter()
        run_sequence(m, [])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interrupted_call(done: list[str], names: list[str]) -> str | None:
    """The call an interrupt stopped: the first not done, if the sequence was not over."""
    return names[len(done)] if len(done) < len(names) else None


@pytest.fixture
def alarm_raises():
    """SIGALRM raises Interrupted while `armed[0]` (a late one, in the next loop: one more
    moment). Whether each alarm that fired was handled is not checked here: the timer's
    remaining time can read 0 for one that never fires (see the SIGINT test for that)."""
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            raise Interrupted

    before = signal.signal(signal.SIGALRM, handler)
    try:
        yield armed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_an_alarm_at_any_moment_leaves_the_manager_whole(config, alarm_raises):
    armed = alarm_raises
    # A thread that takes signals the main thread does not: the kernel may pick it.
    idle = threading.Event()
    bystander = threading.Thread(target=idle.wait, daemon=True)
    bystander.start()
    span, expected = sequence_seconds(config), fresh_outcome(config)
    names = [name for name, _ in calls(make(config))]
    rng = random.Random(1234)
    interrupted = 0
    stopped = dict.fromkeys(names, 0)
    try:
        for _ in range(loops(config)):
            m = make(config)
            done: list[str] = []
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, span))
                    run_sequence(m, done)
                finally:
                    armed[0] = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except Interrupted:
                interrupted += 1
                name = interrupted_call(done, names)
                if name is not None:
                    stopped[name] += 1
                    if took_effect(m, name):
                        done.append(name)
            check_against_fresh(m, done, expected)
    finally:
        idle.set()
    assert interrupted > 0 and sum(stopped.values()) > 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


def test_sigint_from_another_thread_raises_keyboard_interrupt_at_once(config):
    """Ctrl-C as a process gets it: SIGINT to the process from another thread, at a random
    moment of the sequence, handled by Python's own handler (counted). Each one raises
    exactly one KeyboardInterrupt, and the manager is whole after it."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has another handler here")
    handled = [0]

    def counting_handler(signum, frame):
        handled[0] += 1
        signal.default_int_handler(signum, frame)

    span, expected = sequence_seconds(config), fresh_outcome(config)
    names = [name for name, _ in calls(make(config))]
    rng = random.Random(99)
    raised = 0
    sigints = max(1, loops(config) // 4)
    signal.signal(signal.SIGINT, counting_handler)
    try:
        for sent in range(1, sigints + 1):
            m = make(config)
            done: list[str] = []
            go = threading.Event()
            delay = rng.uniform(0, span)

            def send() -> None:
                go.wait()
                time.sleep(delay)
                os.kill(os.getpid(), signal.SIGINT)

            sender = threading.Thread(target=send)
            sender.start()
            try:
                go.set()
                run_sequence(m, done)
                sender.join()
                await_handler(handled, sent)
            except KeyboardInterrupt:
                raised += 1
                name = interrupted_call(done, names)
                if name is not None and took_effect(m, name):
                    done.append(name)
            sender.join()
            check_against_fresh(m, done, expected)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert handled[0] == sigints, "a SIGINT was not handled"
    assert raised == sigints, "a SIGINT did not raise KeyboardInterrupt"
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


def test_a_child_started_after_the_loops_takes_sigterm():
    """Nothing leaves a signal blocked in the main thread, which a child would inherit."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()

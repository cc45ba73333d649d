"""The fuzz target's child process: runs the cases runner.py sends, one at a time.

Protocol: length-prefixed pickles, cases on stdin, replies on stdout: None when the case
passed, else the text of what failed. `python3 tests/fuzz/worker.py --case "<case>"`
runs one case (as hypothesis printed it) in this process instead, with this checkout's
package.

An API case runs its operations on a manager and on the reference model side by side.
The arguments are read in a known order (layer_id in Python, then req_ids, num_prefill_seqs
and init_prefill_lens in the core), so the first argument that cannot be read decides the
error: TypeError for a non-int (or an __index__ whose call into the same manager was
refused), ValueError for an int past int64, KeyboardInterrupt for an interrupt. Once every
argument reads as an int, the reference model decides: malformed (ValueError or KeyError),
KVCacheExhausted, or the exact result. After an error the manager must be as it was.

Two more kinds of operation: a pack whose returned metadata the case then edits (its list
of lengths, its fields, its tensors' shapes: nothing of it may reach the manager, which the
operations after check), and an operation interrupted by a timer at a random microsecond
(SIGALRM, whose handler raises KeyboardInterrupt wherever Python code runs, inside the
call or after it): the manager must then be as before the operation or as after it, never
in between, and take the next ones.

A step case calls a manager's native step and books directly (StepCase): a call that
raises must change nothing, and the manager's integrity must hold after every call.
"""

from __future__ import annotations

import ast
import copy
import faulthandler
import os
import pickle
import signal
import struct
import sys
import traceback
import weakref

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The package the parent imported (runner.py says where), else this checkout's.
sys.path.insert(0, os.environ.get("DISAGMOE_FUZZ_PACKAGE_ROOT", os.path.dirname(TESTS)))
sys.path.insert(0, TESTS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from disagmoe import _C, BatchMetadata, CacheConfig, KVCacheExhausted, ModelConfig  # noqa: E402

from configs import BY_ID, LAYER_IDS  # noqa: E402
from harness import Harness, assert_matches_reference, assert_tables_consistent, to_host  # noqa: E402
from hostile import INT_LIKE, NOT_INTS, Index, IndexRaises, clears, grows  # noqa: E402

INT64 = (-(2**63), 2**63 - 1)
INT32_MAX = 2**31 - 1
PLAIN, TYPE, VALUE, REFUSED, INTERRUPT = "plain", "type", "value", "refused", "interrupt"
OUTCOME = {TYPE: TypeError, VALUE: ValueError, REFUSED: TypeError, INTERRUPT: KeyboardInterrupt}
MALFORMED = (ValueError, KeyError)
SAME_MANAGER_CALLS = ("update_same", "pack_same", "release_same", "reset_same")


class Read:
    """One argument (or list item) as the manager will read it: its marker and plain int."""

    def __init__(self, marker: str, plain: int | None = None, action: str | None = None) -> None:
        self.marker, self.plain, self.action = marker, plain, action


def in_int64(n: int) -> bool:
    return INT64[0] <= n <= INT64[1]


class ApiCase:
    def __init__(self, config_id: str, sizes: dict, ops: list) -> None:
        self.config = BY_ID[config_id]
        self.sizes, self.ops = sizes, ops
        self.fresh = 10_000
        self.other: Harness | None = None
        self.refused: list[str] = []

    # -- values ----------------------------------------------------------------------------

    def base(self, base: tuple) -> int:
        kind = base[0]
        if kind == "raw":
            return base[1]
        live = sorted(self.h.ref.seq_lens) if hasattr(self, "h") else []
        if kind == "live" and live:
            return live[base[1] % len(live)]
        return self.fresh + base[1]

    def value(self, spec: tuple, holder: list | None = None, auto: int = 0) -> tuple[object, Read]:
        """(the object to pass, how it reads)."""
        wrapper, base = spec
        n = auto if base == ("auto",) else self.base(base)
        plain = Read(PLAIN if in_int64(n) else VALUE, n)
        if wrapper == "plain":
            return n, plain
        if wrapper == "interrupt":
            return IndexRaises(KeyboardInterrupt()), Read(INTERRUPT)
        if wrapper == "clears":
            return clears(holder, n), plain
        if wrapper == "grows":
            return grows(holder, n, 1000), plain
        kind, arg = wrapper
        if kind == "not":
            return NOT_INTS[arg], Read(TYPE)
        if kind == "like":
            try:
                obj = INT_LIKE[arg](n)
                if int(obj.__index__()) != n:
                    raise OverflowError
            except (OverflowError, RuntimeError, ValueError, TypeError):
                return n, plain  # no such value of that type: the int itself
            return obj, plain
        if kind == "reenter":
            marker = REFUSED if arg in SAME_MANAGER_CALLS else plain.marker
            return Index(n, lambda: self.reenter(arg)), Read(marker, n, arg)
        raise AssertionError(f"unknown wrapper {wrapper!r}")

    def int_list(self, spec: tuple) -> tuple[object, list[Read] | Read]:
        container, items = spec
        if container == "bad":
            return {
                "str": "12",
                "none": None,
                "dict": {1: 1},
                "float-array": np.ones(2),
                "2d-array": np.ones((1, 2), np.int64),
                "tensor": torch.tensor([1, 2]),
                "generator": (i for i in range(2)),
            }[items], Read(TYPE)
        if container == "array":
            values = [self.base(base) for _, base in items]
            if not all(in_int64(v) for v in values):
                values = [v if in_int64(v) else 0 for v in values]
            return np.array(values, dtype=np.int64), [Read(PLAIN, v) for v in values]
        holder: list = []
        reads = []
        for item in items:
            obj, read = self.value(item, holder)
            holder.append(obj)
            reads.append(read)
        return (tuple(holder) if container == "tuple" else holder), reads

    def reenter(self, action: str) -> None:
        m = self.h.manager
        try:
            if action == "update_same":
                m.update_block_table(BatchMetadata(LAYER_IDS[0], [99_999], 1, [1]))
            elif action == "pack_same":
                m.pack_flash_attn_metadata(BatchMetadata(LAYER_IDS[0], [], 0, []))
            elif action == "release_same":
                m.release_seqs([])
            elif action == "reset_same":
                m.reset_state()
            elif action == "read_same":
                m.num_free_slots()
                for req_id in self.running[:2]:
                    m.seq_len(req_id), m.token_slots(req_id)
            elif action == "step_other":
                self.step_other()
        except RuntimeError as exc:
            if action in SAME_MANAGER_CALLS and "another call" in str(exc):
                self.refused.append(action)
            raise
        if action in SAME_MANAGER_CALLS:
            raise AssertionError(f"{action}: a call into the manager reading its arguments ran")

    def step_other(self) -> None:
        """A valid step on a second manager, checked by its own harness."""
        if self.other is None:
            self.other = Harness(self.config.make(block_size=2, num_blocks=64, max_running_reqs=4, max_seq_len=64))
        o = self.other
        running = sorted(o.ref.seq_lens)
        if len(running) == 4 or any(o.ref.seq_lens[r] >= 60 for r in running):
            o.release(running[:1])
        else:
            self.fresh += 1
            o.step(o.batch([500_000 + self.fresh] + running, [3]))

    # -- the case ----------------------------------------------------------------------------

    def expected_config_error(self, values: dict, reads: dict[str, Read]) -> type | None:
        """The error the configs and the constructor raise, in the order they read."""
        if values["block_size"] is None:  # the design's default
            reads["block_size"] = Read(PLAIN, self.config.cls.default_block_size)
        for name in ("max_seq_len", "block_size", "num_blocks"):
            r = reads[name]
            if r.marker != PLAIN:
                return OUTCOME[r.marker]
            if not 1 <= r.plain <= INT32_MAX:
                return ValueError
        if reads["block_size"].plain * reads["num_blocks"].plain > INT32_MAX:
            return ValueError
        r = reads["max_reqs"]
        if r.marker != PLAIN:
            return OUTCOME[r.marker]
        return None if 1 <= r.plain <= INT32_MAX else ValueError

    def run(self) -> None:
        values, reads = {}, {}
        for name, spec in self.sizes.items():
            values[name], reads[name] = self.value(spec)
        error = self.expected_config_error(values, reads)
        try:
            model = ModelConfig(LAYER_IDS, values["max_seq_len"], 8)
            cache = CacheConfig(values["block_size"], values["num_blocks"])
            manager = self.config.cls(model, cache, values["max_reqs"], device=self.config.device, **self.config.kwargs)
        except (TypeError, ValueError) as exc:
            assert error is not None and isinstance(exc, error), (error, exc)
            return
        assert error is None, f"{error.__name__} expected from the sizes {values}"
        self.h = Harness(manager)
        for op in self.ops:
            self.fresh += 100
            getattr(self, "op_" + op[0])(*op[1:])
        self.h.check_state()
        if self.other is not None:
            self.other.check_state()

    def expect(self, call, reads: list[Read], reference) -> object:
        """Runs `call`; the first read that fails decides its error, else `reference()`
        (which raises the reference model's error, or returns its result)."""
        first = next((r for r in reads if r.marker != PLAIN), None)
        expected, result = None, None
        before = self.h.snapshot()  # before the reference model applies the operation
        self.running = sorted(self.h.ref.seq_lens)  # what read_same may ask about
        if first is not None:
            expected = OUTCOME[first.marker]
        else:
            try:
                result = reference()
            except (ValueError, KeyError):
                expected = MALFORMED
            except KVCacheExhausted:
                expected = KVCacheExhausted
        try:
            got = call()
        except BaseException as exc:  # noqa: BLE001 (KeyboardInterrupt is a case)
            if expected is None or not isinstance(exc, expected):
                raise AssertionError(f"expected {expected}, got {exc!r}") from exc
            if expected is not KVCacheExhausted:
                assert not isinstance(exc, KVCacheExhausted), f"malformed input as back-pressure: {exc}"
            if first is not None and first.marker == REFUSED:
                assert isinstance(exc.__cause__, RuntimeError), exc.__cause__
            assert self.h.snapshot() == before, "an error changed the manager"
            self.h.manager.check_integrity()
            return None
        assert expected is None, f"expected {expected}, nothing raised"
        return got, result

    def batch(self, spec) -> tuple[BatchMetadata, list[Read], BatchMetadata]:
        layer_spec, ids_spec, (num_prefill, nps_spec), lens_spec = spec
        layer, layer_read = self.value(layer_spec)
        if layer_read.marker == PLAIN and layer_read.plain not in LAYER_IDS:
            layer_read = Read(VALUE)
        req_ids, id_reads = self.int_list(ids_spec)
        nps, nps_read = self.value(nps_spec, auto=num_prefill)
        lens, len_reads = self.int_list(lens_spec)
        reads = [layer_read]
        for part in (id_reads, [nps_read], len_reads):
            if isinstance(part, Read):  # a container that is not a list of ints
                reads.append(part)
                break
            reads += part
        plain = BatchMetadata(
            layer_read.plain,
            [r.plain for r in id_reads] if isinstance(id_reads, list) else [],
            nps_read.plain,
            [r.plain for r in len_reads] if isinstance(len_reads, list) else [],
        )
        return BatchMetadata(layer, req_ids, nps, lens), reads, plain

    def op_update(self, spec) -> None:
        batch, reads, plain = self.batch(spec)
        out = self.expect(lambda: self.h.manager.update_block_table(batch), reads, lambda: self.h.ref.update(plain))
        if out is not None:
            assert batch.seq_lens == out[1], (batch.seq_lens, out[1])
            self.h.check_state()

    def op_pack(self, spec, edit: str | None = None) -> None:
        batch, reads, plain = self.batch(spec)
        out = self.expect(lambda: self.h.manager.pack_flash_attn_metadata(batch), reads, lambda: self.h.ref.pack(plain))
        if out is not None:
            md = to_host(out[0], self.h.manager.device)
            assert_matches_reference(md, out[1], self.h.manager.block_size)
            assert_tables_consistent(md, out[1], plain, self.h.manager)
            self.h.check_state()
            if edit is not None:
                edit_metadata(out[0], edit)

    def op_interrupted(self, kind: str, spec, delay_us: int) -> None:
        """`kind` (update, pack, release, reset) of plain arguments, a timer interrupting it
        after `delay_us`: the manager as before it or as after it."""
        h, m = self.h, self.h.manager
        ref_after = copy.deepcopy(h.ref)
        if kind in ("update", "pack"):
            _, _, plain = self.batch(spec)
            call = m.update_block_table if kind == "update" else m.pack_flash_attn_metadata
            args: tuple = (plain,)
        elif kind == "release":
            ids, _ = self.int_list(spec)
            call, args = m.release_seqs, (list(ids) if not isinstance(ids, (list, tuple)) else ids,)
        else:
            call, args = m.reset_state, ()
        try:  # what the operation does when nothing interrupts it
            if kind == "update":
                ref_after.update(copy.copy(args[0]))
            elif kind == "release":
                ref_after.release([int(i) for i in args[0]])
            elif kind == "reset":
                ref_after.reset()
        except (ValueError, KeyError, KVCacheExhausted, TypeError):
            ref_after = None  # an error: as before, interrupted or not
        before = {r: m.seq_len(r) for r in h.ref.seq_lens}
        armed = [True]

        def interrupt(signum, frame):
            if armed[0]:
                armed[0] = False
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(delay_us, 1) * 1e-6)
            try:
                call(*args)
            except (KeyboardInterrupt, ValueError, KeyError, TypeError, KVCacheExhausted):
                pass
            armed[0] = False
        except KeyboardInterrupt:  # after the call returned: it ran whole
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        m.check_integrity()
        now = {
            r: m.seq_len(r)
            for r in sorted(set(before) | set(ref_after.seq_lens if ref_after else {}))
            if self.running_now(r)
        }
        if ref_after is not None and now == ref_after.seq_lens and now != before:
            h.ref = ref_after  # it ran whole
            if kind in ("release", "reset"):
                for r in list(h.known_slots):
                    if r not in h.ref.seq_lens:
                        del h.known_slots[r]
        else:
            assert now == before, f"interrupted {kind}: {before} -> {now}, neither before nor after"
        h.check_state()

    def running_now(self, req_id: int) -> bool:
        try:
            self.h.manager.seq_len(req_id)
        except KeyError:
            return False
        return True

    def op_release(self, spec) -> None:
        req_ids, reads = self.int_list(spec)
        plain = [r.plain for r in reads]
        out = self.expect(lambda: self.h.manager.release_seqs(req_ids), reads, lambda: self.h.ref.release(plain))
        if out is not None:
            for req_id in plain:
                self.h.known_slots.pop(req_id, None)
            self.h.check_state()

    def op_query(self, method: str, spec) -> None:
        req_id, read = self.value(spec)
        ref = self.h.ref.seq_lens
        out = self.expect(lambda: getattr(self.h.manager, method)(req_id), [read], lambda: ref[read.plain])
        if out is not None:
            got, seq_len = out
            assert (got if method == "seq_len" else len(got)) == seq_len

    def op_reset(self) -> None:
        self.h.reset()


def edit_metadata(md, edit: str) -> None:
    """What a caller may do to the metadata it was handed (none of it may reach the manager)."""
    if edit == "list":
        md.seq_lens.append(12345)
        if len(md.seq_lens) > 1:
            md.seq_lens[0] = -1
    elif edit == "fields":
        md.max_query_len, md.num_prefills, md.block_size = 999, -3, 0
    elif edit == "shape":
        md.block_tables.unsqueeze_(0)
        md.slot_mapping.resize_(0)
        md.seq_lens_tensor.as_strided_((1,), (1,))
        md.query_start_loc.t_()


# -- direct calls into a manager's native step and books -----------------------------------

STEP_ERRORS = (ValueError, TypeError, KeyError, KVCacheExhausted, BufferError, RuntimeError)


class StepCase:
    """Calls a manager's native step and books directly, as the manager does, but with raw
    arguments (edge ints, non-ints, an __index__ that calls the same step) and grows that
    fail. A call that raises changes nothing; after every call the manager's integrity
    holds (its device rows and free stack against its books, on gpu and hybrid)."""

    def __init__(self, design: str, sizes: dict, small: bool, calls: list) -> None:
        self.m = BY_ID[design].make(**sizes)
        self.step, self.books = self.m._step, self.m._books
        self.on_device = isinstance(self.step, _C.DeviceStep)
        if small:  # buffers that the steps' calls must grow (through the manager's grow)
            self.m._grow("device", 8)
            if self.on_device:
                self.m._size_staging(_C.staged_words(sizes["max_running_reqs"], 0))
            else:
                self.m._set_head(0, 8)
        self.calls = calls
        self.last_pack = -1
        self.planned: tuple = ([], 0, [])  # the last batch planned

    def run(self) -> None:
        for call in self.calls:
            self.run_call(call)

    def value(self, v):
        if isinstance(v, tuple) and v[0] == "not":
            return NOT_INTS[v[1]]
        if isinstance(v, tuple) and v[0] == "live":  # the k-th running request, if any
            running = sorted(self.books.req_ids())
            return running[v[1] % len(running)]
        if isinstance(v, tuple) and v[0] == "reenter":  # refused: the step is busy reading
            return Index(v[1], lambda: self.step.reset(0) if self.on_device else self.step.reset())
        return v

    def ints(self, spec):
        """A list (or array) of ids or lengths; ("live", k) items only while requests run."""
        if isinstance(spec, tuple) and spec[0] != "array":
            return self.value(spec)
        items = spec[1] if isinstance(spec, tuple) else spec
        if not self.books.num_reqs:
            items = [v for v in items if not (isinstance(v, tuple) and v[0] == "live")]
        values = [self.value(v) for v in items]
        if isinstance(spec, list):
            return values
        return np.array([v if isinstance(v, int) and -(2**63) <= v < 2**63 else 0 for v in values], dtype=np.int64)

    def batch(self, spec: tuple) -> tuple:
        ids, num_prefill, lens = spec
        return self.ints(ids), self.value(num_prefill), self.ints(lens)

    def grow(self, kind: str):
        """The step's grow for one call (the manager's own, unless it fails), and what it adds."""
        ref = weakref.ref(self.m)
        if kind == "nothing":
            return lambda which, nbytes: None
        if kind == "short":
            return lambda which, nbytes: ref()._grow(which, nbytes // 3)
        if kind == "raises":
            return lambda which, nbytes: 1 / 0
        if kind == "reenters":
            return lambda which, nbytes: self.step.lengths([], 0, [])
        return lambda which, nbytes: ref()._grow(which, nbytes)

    def set_bad(self, what: str, bad: str) -> None:
        """Gives the step a buffer it must refuse: a list, a strided or meta tensor, a small one."""
        n = 1 << 16
        obj = {
            "list": [0] * 64,
            "strided": torch.zeros(2 * n, dtype=torch.int32)[::2],
            "small": torch.zeros(4, dtype=torch.int32),
            "meta": torch.zeros(n, dtype=torch.int32, device="meta"),
        }[bad]
        step, m = self.step, self.m
        if what in ("head", "out") and bad == "small" or what in ("twin", "stack") and not self.on_device:
            return  # (a head or a metadata buffer of any size is grown when a pack needs more)
        if what == "buffer" and self.on_device:
            step.set_staging(step.staging._replace(words=[obj] * len(step.staging.words)))
        elif what == "buffer":
            step.set_buffer(0, obj, m._step.heads[0])
        elif what == "head" and not self.on_device:
            step.set_buffer(0, m._tables[0], obj)
        elif what == "out" and not self.on_device:
            step.set_out(obj)
        elif what == "twin":
            step.set_staging(step.staging._replace(twin=obj))
        elif what == "stack":
            step.set_free_stack(obj, obj)
        else:
            return
        raise AssertionError(f"set {what}: the step kept a bad tensor ({bad})")

    def snapshot(self) -> tuple:
        m = self.m
        ids = sorted(self.books.req_ids())
        return ids, {r: (m.seq_len(r), m.token_slots(r)) for r in ids}, m.num_free_slots()

    def run_call(self, call: tuple) -> None:
        kind, args = call[0], call[1:]
        step, books, device = self.step, self.books, self.on_device
        before = self.snapshot()
        grow = call[-1] if kind in ("plan", "commit", "pack") else "manager"
        step.set_grow(self.grow(grow))
        try:
            if kind == "plan":
                (ids, nps, lens), then, stream, _ = args
                batch = self.batch((ids, nps, lens))
                step.plan(*batch)
                self.planned = batch
                if then == "commit":
                    step.commit(self.value(stream))
            elif kind == "commit":
                step.commit(self.value(args[0]))
            elif kind == "lengths":
                step.lengths(*self.batch(args[0]))
            elif kind == "pack":
                spec, layer, stream, known, _ = args
                batch = self.planned if spec == "planned" else self.batch(spec)
                known = self.last_pack if known == "last" else self.value(known)
                out = step.pack(*batch, self.value(layer), self.value(stream), known)
                self.last_pack = out[0]
            elif kind == "release":
                ids, stream = args
                step.release(self.ints(ids), self.value(stream)) if device else step.release(self.ints(ids))
            elif kind == "flush" and device:
                step.flush(self.value(args[0]))
            elif kind == "reset":
                step.reset(self.value(args[0])) if device else step.reset()
            elif kind == "query":
                what, req_id = args
                if what == "num_free_blocks":
                    step.num_free_blocks if device else books.num_free_blocks()
                elif what != "block_ids" or isinstance(books, _C.BlockBooks):
                    getattr(books, what)(self.value(req_id))
            elif kind == "layout":
                check_layout(_C.metadata_layout(*(self.value(a) for a in args)))
            elif kind == "set":
                self.set_bad(*args)
        except STEP_ERRORS + (ZeroDivisionError,) as exc:
            if isinstance(exc, ZeroDivisionError):
                assert grow == "raises", f"{exc!r} without a grow that raises"
            assert self.snapshot() == before, f"an error changed the manager: {exc!r}"
        finally:
            step.set_grow(self.grow("manager"))
        self.m.check_integrity()


def check_layout(layout) -> None:
    """The arrays lie within nbytes, apart, slot_mapping 8-byte aligned."""
    b, w, t = layout.batch_size, layout.width, layout.num_tokens
    arrays = sorted(
        [
            (layout.block_tables, 4 * b * w),
            (layout.slot_mapping, 8 * t),
            (layout.seq_lens, 4 * b),
            (layout.context_lens, 4 * b),
            (layout.query_start_loc, 4 * (b + 1)),
            (layout.seq_start_loc, 4 * (b + 1)),
        ]
    )
    end = 0
    for start, size in arrays:
        assert start >= end, (layout, arrays)
        end = start + size
    assert end <= layout.nbytes and layout.nbytes % 8 == 0 and layout.slot_mapping % 8 == 0


def run_case(case: tuple) -> None:
    if case[0] == "api":
        ApiCase(*case[1:]).run()
    else:
        StepCase(*case[1:]).run()


def read_frame(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    return pickle.loads(stream.read(size))


def write_frame(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        run_case(ast.literal_eval(sys.argv[2]))
        print("passed")
        return
    faulthandler.enable()  # a crash prints the Python stack to stderr, which runner.py reports
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # prints must not reach the protocol's stream
    while (case := read_frame(requests)) is not None:
        try:
            run_case(case)
            reply = None
        except BaseException:  # noqa: BLE001 (an unexpected KeyboardInterrupt is a failure too)
            reply = traceback.format_exc()[-6000:]
        write_frame(replies, reply)


if __name__ == "__main__":
    main()

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

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The package the parent imported (runner.py says where), else this checkout's.
sys.path.insert(0, os.environ.get("DISAGMOE_FUZZ_PACKAGE_ROOT", os.path.dirname(TESTS)))
sys.path.insert(0, TESTS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from disagmoe import _C, BatchMetadata, CacheConfig, KVCacheExhausted, ModelConfig  # noqa: E402

from backends import BY_ID, LAYER_IDS  # noqa: E402
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
    def __init__(self, backend_id: str, sizes: dict, ops: list) -> None:
        self.backend = BY_ID[backend_id]
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
            self.other = Harness(self.backend.make(block_size=2, num_blocks=64, max_running_reqs=4, max_seq_len=64))
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
        if values["block_size"] is None:  # the backend's default
            reads["block_size"] = Read(PLAIN, self.backend.cls.default_block_size)
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
            manager = self.backend.cls(
                model, cache, values["max_reqs"], device=self.backend.device, **self.backend.kwargs
            )
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


# -- direct calls into disagmoe._C ------------------------------------------------------------

GUARD = 64
CORE_ERRORS = (ValueError, TypeError, KeyError, KVCacheExhausted, BufferError)


def core_value(v):
    return NOT_INTS[v[1]] if isinstance(v, tuple) else v


class Guarded:
    """A numpy view with guard bytes around it (and between its items, for a step of 2)."""

    def __init__(self, dtype: str, entries: int, step: int, read_only: bool) -> None:
        itemsize = np.dtype(dtype).itemsize
        self.base = np.full(2 * GUARD + entries * step * itemsize, 0x5A, dtype=np.uint8)
        self.view = self.base[GUARD : len(self.base) - GUARD].view(dtype)[::step]
        starts = GUARD + np.arange(entries) * step * itemsize
        self.inside = np.zeros(len(self.base), dtype=bool)
        for k in range(itemsize):
            self.inside[starts + k] = True
        if read_only:
            self.base.flags.writeable = False
            self.inside[:] = False
        self.before = self.base.copy()

    def check(self) -> None:
        changed = np.flatnonzero((self.base != self.before) & ~self.inside)
        assert changed.size == 0, f"wrote outside the buffer, at bytes {changed[:8].tolist()}"


def core_buffer(spec, made: list):
    if spec[0] == "not":
        return {"none": None, "list": [0] * 64, "str": "x" * 64, "bytes": b"x" * 64}[spec[1]]
    buffer = Guarded(*spec[1:])
    made.append(buffer)
    return buffer.view


def core_ints(spec):
    return core_value(spec) if isinstance(spec, tuple) else list(spec)


class CoreCase:
    def __init__(self, sizes: tuple, calls: list) -> None:
        self.sizes = [core_value(v) for v in sizes]
        self.calls = calls

    def valid_sizes(self) -> bool:
        if not all(type(v) is int and 1 <= v <= INT32_MAX for v in self.sizes):
            return False
        return self.sizes[0] * self.sizes[1] <= INT32_MAX

    def run(self) -> None:
        block_size, num_blocks, max_seq_len, max_reqs = self.sizes
        try:
            self.bm = _C.BlockBooks(block_size, num_blocks, max_seq_len, max_reqs)
            self.table = _C.RequestTable(max_reqs, max_seq_len, block_size)
        except (TypeError, ValueError):
            assert not self.valid_sizes(), f"valid sizes {self.sizes} refused"
            return
        assert self.valid_sizes(), f"sizes {self.sizes} accepted"
        for call in self.calls:
            self.run_call(call)

    def grow(self, kind: str, dtype: str, made: list, allowed: tuple) -> tuple:
        """A grow(n) callback of the kind asked for, and the errors it may add."""
        if kind == "grow":
            return (lambda n: core_buffer(("buffer", dtype, n, 1, False), made)), allowed
        if kind == "grow-small":
            return (lambda n: core_buffer(("buffer", dtype, n // 2, 1, False), made)), allowed
        if kind == "grow-raises":
            return (lambda n: 1 / 0), allowed + (ZeroDivisionError,)
        if kind == "grow-reenters":
            return (lambda n: self.bm.reset_state()), allowed + (RuntimeError,)
        return None, allowed

    def snapshot(self) -> tuple:
        bm, t = self.bm, self.table
        return (
            sorted(bm.req_ids()),
            {r: (bm.seq_len(r), bm.block_ids(r)) for r in bm.req_ids()},
            bm.num_free_blocks(),
            sorted(t.req_ids()),
            {r: (t.seq_len(r), t.row_of(r)) for r in t.req_ids()},
            t.num_free_rows,
        )

    def run_call(self, call: tuple) -> None:
        made: list[Guarded] = []
        allowed = CORE_ERRORS
        before = self.snapshot()
        kind, args = call[0], call[1:]
        bm, t = self.bm, self.table
        try:
            if kind == "bm_update":
                ids, nps, lens, first = args
                bm.update_block_table(core_ints(ids), core_value(nps), core_ints(lens), first)
            elif kind == "bm_pack":
                ids, nps, lens, out, grow_kind, index = args
                buffer = core_buffer(out, made)
                grow, allowed = self.grow(grow_kind, "uint8", made, allowed)
                bm.pack_flash_attn_metadata(
                    core_ints(ids), core_value(nps), core_ints(lens), buffer, grow, core_value(index)
                )
            elif kind == "bm_plan":
                ids, nps, lens, plan, stride, block_ids, grow_kind = args
                grow, allowed = self.grow(grow_kind, "int32", made, allowed)
                bm.update_block_table_plan(
                    core_ints(ids),
                    core_value(nps),
                    core_ints(lens),
                    core_buffer(plan, made),
                    core_value(stride),
                    core_buffer(block_ids, made),
                    grow,
                )
            elif kind == "bm_lookup":
                ids, nps, lens, out, stride, op = args
                bm.lookup(
                    core_ints(ids), core_value(nps), core_ints(lens), core_buffer(out, made), core_value(stride), op
                )
            elif kind == "bm_release":
                bm.release_seqs(core_ints(args[0]))
            elif kind == "bm_query":
                getattr(bm, args[0])(core_value(args[1]))
            elif kind == "table_advance":
                ids, nps, lens, free, plan, stride = args
                t.advance(
                    core_ints(ids),
                    core_value(nps),
                    core_ints(lens),
                    core_value(free),
                    core_buffer(plan, made),
                    core_value(stride),
                )
            elif kind == "table_lookup":
                ids, nps, lens, out, stride, op = args
                t.lookup(
                    core_ints(ids), core_value(nps), core_ints(lens), core_buffer(out, made), core_value(stride), op
                )
            elif kind == "table_release":
                t.release_seqs(core_ints(args[0]))
            elif kind == "layout":
                layout = _C.metadata_layout(*(core_value(a) for a in args))
                check_layout(layout)
            elif kind == "reset":
                bm.reset_state()
                t.reset_state()
                before = self.snapshot()
        except allowed:
            assert self.snapshot() == before, "an error changed the core"
        for buffer in made:
            buffer.check()
        assert bm.check_integrity() == "", bm.check_integrity()
        assert t.num_reqs + t.num_free_rows == t.max_reqs


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
        CoreCase(*case[1:]).run()


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

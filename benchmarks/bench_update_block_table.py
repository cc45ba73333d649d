"""update_block_table: the slots of one step, on each design.

Three cases, as DisagMoE's own benchmark times them, for B requests
(`batch_size`) of `seq_len` tokens:

- prefill: B new requests of `seq_len` tokens each, on an empty manager;
- decode at the first layer: each request holds `seq_len` tokens and gets one
  more slot (lengths then grow; after 16 steps the state is rebuilt in setup);
- decode at a later layer: lookups of the lengths the first layer set.
"""

from .common import StepTiming, decode_state, workloads


class UpdateBlockTablePrefill(StepTiming):
    def setup(self, backend, batch_size, seq_len):
        self.manager = decode_state(backend, batch_size, seq_len, owner="prefill").manager
        self.manager.reset_state()  # the previous call's requests go back to the pool
        self.batch = workloads().prefill_batch(batch_size, seq_len)
        self.manager.synchronize()

    def time_update_block_table(self, backend, batch_size, seq_len):
        self.manager.update_block_table(self.batch)
        self.manager.synchronize()


class UpdateBlockTableDecode(StepTiming):
    def setup(self, backend, batch_size, seq_len):
        self.state = decode_state(backend, batch_size, seq_len)
        self.state.make_room()  # rebuilt after 16 steps: never past max_seq_len

    def time_update_block_table(self, backend, batch_size, seq_len):
        self.state.step()
        self.state.manager.synchronize()


class UpdateBlockTableDecodeLaterLayer(StepTiming):
    def setup(self, backend, batch_size, seq_len):
        self.state = decode_state(backend, batch_size, seq_len)
        if self.state.steps == 0:  # the first layer's step comes first
            self.state.step()
            self.state.manager.synchronize()

    def time_update_block_table(self, backend, batch_size, seq_len):
        self.state.manager.update_block_table(self.state.later)
        self.state.manager.synchronize()


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03, so that moving shared code does not start a history
# over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
UpdateBlockTableDecode.time_update_block_table.version = (
    "e89955b963d7ae6e086b5d7bc4b9d114f9006c9c323590601070a98ca7412a87"
)
UpdateBlockTableDecodeLaterLayer.time_update_block_table.version = (
    "5d17c359f77df9981c4efa3b8426adabd574f8ed79baf991479e818a09025241"
)
UpdateBlockTablePrefill.time_update_block_table.version = (
    "342b4e705944d6aeb0efdea06f0a9573b5f87c484d3c3b34351318f84c7856ee"
)

"""pack_flash_attn_metadata: FlashAttention metadata of a decode step, on each design.

B requests (`batch_size`) that held `seq_len` tokens took their first-layer
decode step (so each holds seq_len + 1); the timed call packs the metadata of
that step, the copy to the device included. It reads the state and never
changes it.
"""

from .common import StepTiming, decode_state


class PackFlashAttnMetadataDecode(StepTiming):
    def setup(self, backend, batch_size, seq_len):
        self.state = decode_state(backend, batch_size, seq_len)
        if self.state.steps == 0:
            self.state.step()
            self.state.manager.synchronize()

    def time_pack_flash_attn_metadata(self, backend, batch_size, seq_len):
        self.state.manager.pack_flash_attn_metadata(self.state.first)
        self.state.manager.synchronize()


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03, so that moving shared code does not start a history
# over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
PackFlashAttnMetadataDecode.time_pack_flash_attn_metadata.version = (
    "ed9ab444ec6e30e442e16e8f31539cf5221cd7e170f54e5bf74a9a84a037e982"
)

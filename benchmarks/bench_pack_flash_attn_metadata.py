"""pack_flash_attn_metadata: FlashAttention metadata of a decode step, on each backend.

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

"""Runs steps on a manager and its reference model side by side and checks every result.

`Harness.step(batch)` updates both, compares lengths, packs, and checks the
metadata against the reference and against the manager's own token slots;
`Harness.check_state()` checks every live token's slot (unique, in range,
never moved) and the free-slot and request counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from disagmoe import PAD_BLOCK_ID, BatchMetadata, BlockManager, FlashAttentionMetadata

from reference import RefManager, RefMetadata, cdiv

INT32_FIELDS = ("seq_lens_tensor", "context_lens_tensor", "query_start_loc", "seq_start_loc", "block_tables")
INT_FIELDS = (
    "num_prefills",
    "num_prefill_tokens",
    "num_decode_tokens",
    "max_query_len",
    "max_prefill_seq_len",
    "max_decode_seq_len",
    "max_decode_query_len",
)


@dataclass(frozen=True)
class HostMetadata:
    """A FlashAttentionMetadata copied to host lists (its tensors die at the next pack)."""

    ints: dict[str, int]
    seq_lens: list[int]
    seq_lens_tensor: list[int]
    context_lens_tensor: list[int]
    query_start_loc: list[int]
    seq_start_loc: list[int]
    block_tables: list[list[int]]
    width: int
    slot_mapping: list[int]
    block_size: int


def to_host(md: FlashAttentionMetadata, device: torch.device) -> HostMetadata:
    for name in INT32_FIELDS:
        tensor = getattr(md, name)
        assert tensor.dtype == torch.int32, (name, tensor.dtype)
        assert tensor.device == device, (name, tensor.device)
    assert md.slot_mapping.dtype == torch.int64
    assert md.slot_mapping.device == device
    for name in INT_FIELDS:
        assert type(getattr(md, name)) is int, (name, type(getattr(md, name)))
    assert md.block_tables.dim() == 2
    return HostMetadata(
        ints={name: getattr(md, name) for name in INT_FIELDS},
        seq_lens=list(md.seq_lens),
        seq_lens_tensor=md.seq_lens_tensor.tolist(),
        context_lens_tensor=md.context_lens_tensor.tolist(),
        query_start_loc=md.query_start_loc.tolist(),
        seq_start_loc=md.seq_start_loc.tolist(),
        block_tables=md.block_tables.tolist(),
        width=md.block_tables.shape[1],
        slot_mapping=md.slot_mapping.tolist(),
        block_size=md.block_size,
    )


def assert_matches_reference(md: HostMetadata, ref: RefMetadata, block_size: int) -> None:
    assert md.ints == {name: getattr(ref, name) for name in INT_FIELDS}
    assert md.seq_lens == ref.seq_lens
    assert md.seq_lens_tensor == ref.seq_lens
    assert md.context_lens_tensor == ref.context_lens
    assert md.query_start_loc == ref.query_start_loc
    assert md.seq_start_loc == ref.seq_start_loc
    assert md.block_size == block_size
    assert len(md.block_tables) == len(ref.seq_lens)
    assert md.width == ref.width
    assert len(md.slot_mapping) == ref.num_tokens


def assert_tables_consistent(md: HostMetadata, ref: RefMetadata, batch: BatchMetadata, manager: BlockManager) -> None:
    """slot_mapping[t] == block_tables[i, p // bs] * bs + p % bs, padding is PAD_BLOCK_ID,
    and both agree with the manager's token_slots."""
    bs = manager.block_size
    for i, req_id in enumerate(batch.req_ids):
        row, seq_len = md.block_tables[i], ref.seq_lens[i]
        num_blocks = cdiv(seq_len, bs)
        assert row[num_blocks:] == [PAD_BLOCK_ID] * (md.width - num_blocks), (i, row)
        assert all(0 <= b < manager.num_blocks for b in row[:num_blocks]), (i, row)
        slots = manager.token_slots(req_id)
        assert row[:num_blocks] == [slots[k * bs] // bs for k in range(num_blocks)]
        start = ref.query_start_loc[i]
        for t, p in enumerate(range(ref.context_lens[i], seq_len), start):
            assert md.slot_mapping[t] == row[p // bs] * bs + p % bs, (i, p, t)
            assert md.slot_mapping[t] == slots[p], (i, p, t)


class Harness:
    """A manager, its reference model and the slots each live token had last time."""

    def __init__(self, manager: BlockManager) -> None:
        self.manager = manager
        self.ref = RefManager.like(manager)
        self.known_slots: dict[int, list[int]] = {}
        self.last_error: Exception | None = None
        self.check_state()

    @property
    def first_layer(self) -> int:
        return self.ref.layer_ids[0]

    def batch(
        self,
        req_ids: list[int],
        prefill_lens: list[int] = (),
        layer: int | None = None,
    ) -> BatchMetadata:
        """Prefill entries first (one per length), then decode entries."""
        return BatchMetadata(
            self.first_layer if layer is None else layer, list(req_ids), len(prefill_lens), list(prefill_lens)
        )

    def try_update(self, batch: BatchMetadata, check: bool = True) -> list[int] | None:
        """Updates both; on an expected error checks that the manager raised it and did not
        change. Returns the new lengths, or None when the step raised. `check=False` leaves
        the state checks (which read the device) to the caller."""
        try:
            expected = self.ref.update(batch)
        except Exception as exc:  # the reference raised: the manager must raise the same
            self.last_error = exc
            self.expect_error(lambda: self.manager.update_block_table(batch), type(exc))
            return None
        self.manager.update_block_table(batch)
        assert batch.seq_lens == expected
        if check:
            self.check_state()
        return expected

    def pack(self, batch: BatchMetadata) -> HostMetadata:
        ref = self.ref.pack(batch)
        md = to_host(self.manager.pack_flash_attn_metadata(batch), self.manager.device)
        self.check_state()
        assert_matches_reference(md, ref, self.manager.block_size)
        assert_tables_consistent(md, ref, batch, self.manager)
        return md

    def try_step(self, batch: BatchMetadata) -> HostMetadata | None:
        """update and pack back to back, as a worker runs them, then every check; None when
        the update raised (as the reference said it would)."""
        if self.try_update(batch, check=False) is None:
            return None
        return self.pack(batch)

    def update(self, batch: BatchMetadata) -> list[int]:
        """A step that must not raise."""
        seq_lens = self.try_update(batch)
        assert seq_lens is not None, f"the reference expects {self.last_error!r}"
        return seq_lens

    def step(self, batch: BatchMetadata) -> HostMetadata:
        """A step that must not raise."""
        md = self.try_step(batch)
        assert md is not None, f"the reference expects {self.last_error!r}"
        return md

    def release(self, req_ids: list[int]) -> None:
        self.ref.release(req_ids)
        self.manager.release_seqs(req_ids)
        for req_id in req_ids:
            del self.known_slots[req_id]
        self.check_state()

    def reset(self) -> None:
        self.ref.reset()
        self.manager.reset_state()
        self.known_slots.clear()
        self.check_state()

    def expect_error(self, call, error: type[BaseException], *names: object) -> str:
        """Runs `call`, which must raise `error` naming every value of `names` and change
        nothing. Returns the message."""
        before = self.snapshot()
        with pytest.raises(error) as info:
            call()
        message = str(info.value)
        for value in names:
            assert str(value) in message, (value, message)
        assert self.snapshot() == before
        self.manager.check_integrity()
        return message

    def snapshot(self) -> tuple:
        m = self.manager
        live = sorted(self.ref.seq_lens)
        return (m.num_free_slots(), m.num_running_reqs(), {r: (m.seq_len(r), m.token_slots(r)) for r in live})

    def check_state(self) -> None:
        m, ref, bs = self.manager, self.ref, self.manager.block_size
        m.check_integrity()
        assert m.num_running_reqs() == len(ref.seq_lens)
        assert m.num_free_slots() == ref.num_free_slots()
        owner: dict[int, tuple[int, int]] = {}
        for req_id, seq_len in ref.seq_lens.items():
            assert m.seq_len(req_id) == seq_len
            slots = m.token_slots(req_id)
            assert len(slots) == seq_len
            old = self.known_slots.get(req_id, [])
            assert slots[: len(old)] == old, f"request {req_id}'s slots moved"
            self.known_slots[req_id] = slots
            for p, slot in enumerate(slots):
                assert 0 <= slot < m.capacity, (req_id, p, slot)
                assert slot % bs == p % bs and slot // bs == slots[p - p % bs] // bs, (req_id, p)
                assert slot not in owner, f"slot {slot} is held by {owner[slot]} and {(req_id, p)}"
                owner[slot] = (req_id, p)
        owned_blocks = {s // bs for s in owner}
        assert len(owned_blocks) * bs == m.capacity - ref.num_free_slots()

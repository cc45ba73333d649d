"""The block-manager contract that both backends implement.

Every attention step calls `update_block_table(batch)` and then
`pack_flash_attn_metadata(batch)`. The contract is written
here once; the backends do not repeat it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from disagmoe.batch import BatchMetadata
from disagmoe.config import CacheConfig, ModelConfig, checked_int, checked_slots, describe
from disagmoe.metadata import FlashAttentionMetadata


def resolve_device(device: torch.device | str | None) -> torch.device:
    """`None` means the CUDA device when there is one, else torch's CPU device. Anything
    but torch's CPU device or a CUDA device that exists is a TypeError / ValueError."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if not isinstance(device, (torch.device, str)):
        raise TypeError(f"device={describe(device)} is not a torch.device, a str or None")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a device") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: the managers run on torch's CPU device or on CUDA")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = resolved.index if resolved.index is not None else (
            torch.cuda.current_device() if count else 0)
        if not 0 <= index < count:
            raise ValueError(f"device={device!r}: this machine has {count} CUDA devices")
        resolved = torch.device("cuda", index)
    return resolved


@dataclass(frozen=True)
class MemoryFootprint:
    """Bytes a manager's state holds on its device and on the host."""

    device_bytes: int
    host_bytes: int


class BlockManager(ABC):
    """KV-cache slots for one attention worker.

    A slot is one token's index in the KV-cache pool, `0 <= slot < capacity`;
    a block is `block_size` consecutive slots, `slot = block * block_size + offset`.

    Every method that raises leaves the manager exactly as it was, whatever
    the input. Errors name the argument or the value:
    - KVCacheExhausted: the pool, the request rows or max_seq_len cannot hold
      a well-formed batch (a caller may retry it later);
    - ValueError / TypeError / KeyError: a malformed batch, even one that would
      not fit either (see update_block_table), or a release of an unknown or
      repeated request;
    - TypeError / ValueError from the constructor or the configs, before
      anything is allocated: a size that is not an int (a bool, a float, a
      str, ...), below 1 or past 2**31 - 1, a pool past 2**31 - 1 slots, or
      tables larger than the device's memory;
    - RuntimeError: a call that overlaps another call on the same manager
      (see Threads).

    Threads: a manager is not thread-safe. Calls on one manager must not
    overlap: use it from one thread at a time (one manager per thread, or a
    lock around it). Managers share no state, so different managers may be
    used from different threads at the same time; the C++ core holds the GIL
    while it runs. A call that would change a manager while another call on
    it is still reading its arguments (an argument's `__index__` that calls
    the manager, or a second thread) raises RuntimeError and changes nothing;
    other overlapping calls are not detected.
    """

    backend: ClassVar[str]
    default_block_size: ClassVar[int]

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 max_running_reqs: int, device: torch.device | str | None = None) -> None:
        """Raises TypeError / ValueError (see the table above) before allocating anything."""
        name = type(self).__name__
        if not isinstance(model_config, ModelConfig):
            raise TypeError(f"{name}: model_config={describe(model_config)} is not a ModelConfig")
        if not isinstance(cache_config, CacheConfig):
            raise TypeError(f"{name}: cache_config={describe(cache_config)} is not a CacheConfig")
        self.model_config = model_config
        self.cache_config = cache_config
        # The configs checked these when they were made; checked again, as ints, in case
        # a frozen config was changed since.
        self.block_size = checked_int(name, "block_size",
                                      cache_config.block_size or self.default_block_size)
        self.num_blocks = checked_int(name, "num_gpu_blocks", cache_config.num_gpu_blocks)
        checked_slots(name, self.num_blocks, self.block_size)
        self.max_running_reqs = checked_int(name, "max_running_reqs", max_running_reqs)
        self.max_seq_len = checked_int(name, "max_seq_len", model_config.max_seq_len)
        self.device = resolve_device(device)
        self._first_layer = model_config.layer_ids[0]
        self._layer_ids = frozenset(model_config.layer_ids)

    @property
    def capacity(self) -> int:
        """Slots in the pool."""
        return self.num_blocks * self.block_size

    def _is_first_layer(self, batch: BatchMetadata) -> bool:
        layer_id = batch.layer_id
        if type(layer_id) is not int:
            layer_id = checked_int(type(self).__name__, "layer_id", layer_id, -2**63, 2**63 - 1)
        if layer_id == self._first_layer:
            return True
        if layer_id not in self._layer_ids:
            raise ValueError(f"layer_id={layer_id!r} is not one of this worker's layers "
                             f"{sorted(self._layer_ids)}")
        return False

    def _id_list(self, req_ids: object) -> list:
        """req_ids (any iterable) as a list; TypeError naming it when it is not iterable."""
        try:
            return list(req_ids)  # type: ignore[call-overload]
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}: req_ids={describe(req_ids)} is not a "
                            "sequence of ints") from exc

    def _checked_req_id(self, req_id: object) -> int:
        """The id as an int, read once (for methods that pass it on more than once)."""
        return checked_int(type(self).__name__, "req_id", req_id, -2**63, 2**63 - 1)

    @abstractmethod
    def update_block_table(self, batch: BatchMetadata) -> None:
        """Reserves a slot for every token this step adds, and sets `batch.seq_lens`.

        At the first layer (`batch.layer_id == model_config.layer_ids[0]`):
        a prefill entry of an unknown request gets positions [0, n); of a known
        request holding c tokens (chunked prefill), positions [c, c + n); a
        decode entry holding c tokens gets position c. At other layers nothing
        is reserved and the lengths are the ones the first layer set.
        A slot, once given to a token, never moves until its request is released.

        Raises (a malformed batch is never KVCacheExhausted, even when it
        would not fit either):
            KVCacheExhausted: the pool, the request rows or max_seq_len cannot
                hold the batch.
            ValueError: a malformed batch (duplicate ids, len(init_prefill_lens)
                != num_prefill_seqs, a length < 1, an unknown layer, ...).
            TypeError: an id, a length, num_prefill_seqs or layer_id that is
                not an int (a bool, a float, a str, None, ...).
            KeyError: a decode entry (or any entry at a later layer) names an
                unknown request.
        """

    @abstractmethod
    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        """Builds the batch's FlashAttention metadata on the manager's device.

        `block_tables` is int32 [B, W] with W = ceil(max seq_len / block_size),
        padded with PAD_BLOCK_ID; `slot_mapping` is int64, the slot of every query
        token entry by entry, positions ascending; for query token t of entry i at
        position p: slot_mapping[t] == block_tables[i, p // bs] * bs + p % bs.
        The tensors stay valid until the next call (see FlashAttentionMetadata).

        Raises: ValueError / KeyError as `update_block_table`.
        """

    def synchronize(self) -> None:
        """Blocks until the device has finished all work this manager issued
        or deferred (benchmarks end every timed call with it)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @abstractmethod
    def release_seqs(self, req_ids: Sequence[int]) -> None:
        """Returns every slot and request row of these requests to the pool.

        Raises: KeyError naming an unknown request; ValueError on a repeated id.
        """

    @abstractmethod
    def reset_state(self) -> None:
        """Back to empty, as after construction."""

    @abstractmethod
    def num_free_slots(self) -> int:
        """Slots not owned by any request."""

    @abstractmethod
    def num_running_reqs(self) -> int:
        """Requests holding slots."""

    @abstractmethod
    def seq_len(self, req_id: int) -> int:
        """Tokens the request holds. Raises KeyError for an unknown request."""

    @abstractmethod
    def token_slots(self, req_id: int) -> list[int]:
        """The slot of each of the request's tokens, positions ascending."""

    @abstractmethod
    def check_integrity(self) -> None:
        """Raises AssertionError unless: no slot is owned twice, free + owned ==
        capacity, and the host books agree with the device state."""

    @abstractmethod
    def memory_footprint(self) -> MemoryFootprint:
        """Bytes of the manager's persistent state, on the device and on the host."""

"""The batch memo every backend's step path shares: the same batch packed again at the
next layer of a step, with nothing changed since, gets the same metadata."""

from __future__ import annotations

from disagmoe import _C
from disagmoe.batch import BatchMetadata
from disagmoe.metadata import FlashAttentionMetadata


class BatchMemo:
    """The last batch a manager packed and its metadata, valid while nothing changed: the
    same batch at another layer of the same step gets the same metadata.

    `changed()` marks every state change; `get(batch)` returns what `put` stored for the
    same batch (the same ids, prefill count and lengths) at another layer than the last
    one it was asked for, if nothing changed since, else None: packing one layer twice
    packs again. Only plain lists and ints are remembered: anything else is looked up
    again.
    """

    def __init__(self) -> None:
        self.version = 0
        self._key: tuple | None = None
        self._value: FlashAttentionMetadata | None = None
        self._layer: int | None = None

    def changed(self) -> None:
        self.version += 1
        self._key = None

    @staticmethod
    def _plain(batch: BatchMetadata) -> bool:
        return (type(batch.req_ids) is list and type(batch.init_prefill_lens) is list
                and type(batch.num_prefill_seqs) is int and type(batch.layer_id) is int)

    def get(self, batch: BatchMetadata):
        key = self._key
        if key is None or not self._plain(batch) or batch.layer_id == self._layer:
            return None
        version, ids, num_prefill, lens = key
        # The version again last: comparing a list may call an element's __eq__, which may
        # step this manager.
        if version == self.version and num_prefill == batch.num_prefill_seqs \
                and _C.same_ints(ids, batch.req_ids) and _C.same_ints(lens, batch.init_prefill_lens) \
                and version == self.version:
            return self._value
        return None

    def repacked(self, batch: BatchMetadata) -> FlashAttentionMetadata | None:
        """A pack of `batch` from memory (the same tensors, a seq_lens list of its own), or
        None; a hit counts as a pack of `batch`'s layer."""
        cached = self.get(batch)
        if cached is None:
            return None
        self._layer = batch.layer_id
        return cached.sharing_tensors()

    def lengths(self, batch: BatchMetadata) -> list[int] | None:
        """A later layer's lengths of `batch` from its pack at an earlier layer, or None."""
        cached = self.get(batch)
        return None if cached is None else list(cached.seq_lens)

    def put(self, batch: BatchMetadata, value: FlashAttentionMetadata) -> None:
        """Remembers a pack of `batch`."""
        self._layer = batch.layer_id
        if self._plain(batch):
            self._key = (self.version, list(batch.req_ids), batch.num_prefill_seqs, list(batch.init_prefill_lens))
            self._value = value
        else:
            self._key = None

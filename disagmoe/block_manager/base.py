"""The block-manager contract every design implements, and the step path they share.

Every attention step calls `update_block_table(batch)` and then
`pack_flash_attn_metadata(batch)`. The contract is written here once; the designs do
not repeat it. The step itself is native (`_C.HostStep`, `_C.DeviceStep`:
csrc/host_step.h, csrc/device_step.h): each method here reads the batch's fields once,
makes one or two native calls, and builds the metadata tensors from the sizes the pack
returns. A design provides the native step, its buffers and how they grow.
"""

from __future__ import annotations

import functools
import os
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Sequence, TypeVar

import torch

from disagmoe import _C
from disagmoe.batch import BatchMetadata
from disagmoe.config import CacheConfig, ModelConfig, checked_int, checked_layer_ids, checked_slots, describe
from disagmoe.metadata import FlashAttentionMetadata

DEFAULT_DEPTH = 3
"""Host buffers a manager stages its steps through on CUDA: the host runs up to this many
launches ahead of the device."""

_T = TypeVar("_T")

_LIVE: list[weakref.ref[BlockManager]] = []
"""The managers of this process (what a forked child refuses: `_refuse_after_fork`). Plain
references, pruned as the list grows: a weakref callback (a WeakSet's) would run Python
when a manager dies, and a KeyboardInterrupt raised there is printed and lost."""


def _track(manager: BlockManager) -> None:
    if len(_LIVE) >= 64 and len(_LIVE) & (len(_LIVE) - 1) == 0:  # at each power of two
        _LIVE[:] = [ref for ref in _LIVE if ref() is not None]
    _LIVE.append(weakref.ref(manager))


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
        index = resolved.index if resolved.index is not None else (torch.cuda.current_device() if count else 0)
        if not 0 <= index < count:
            raise ValueError(f"device={device!r}: this machine has {count} CUDA devices")
        resolved = torch.device("cuda", index)
    return resolved


@dataclass(frozen=True)
class MemoryFootprint:
    """Bytes a manager's state holds on its device and on the host."""

    device_bytes: int
    host_bytes: int


class PrefixCacheStats(NamedTuple):
    """The prefix cache now (`BlockManager.prefix_cache_stats`): blocks indexed, of which
    evictable (no holder); hashes queried and blocks hit by `match_prefix`, and blocks
    evicted, since construction or `reset_state()`."""

    cached_blocks: int
    evictable_blocks: int
    queried_blocks: int
    hit_blocks: int
    evicted_blocks: int


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
      (see Threads), or a manager made before a fork, in the child (see Fork).

    Threads: calls on one manager must not overlap: use it from one thread at
    a time (one manager per thread, or a lock around it). Managers share no
    state, so different managers may be used from different threads at the
    same time. A call that starts while another call on the same manager is
    under way (from a second thread, or from inside the first: an argument's
    `__index__`, a `seq_lens` setter) raises RuntimeError and changes nothing.
    The reads (`seq_len`, `num_free_slots`, `num_running_reqs`, `token_slots`,
    `check_integrity`) are not refused: from another thread, each answers a
    state the manager had between two calls' changes (a read waits while
    another thread's call is inside its native part: its kernels, a buffer it
    grows), never one half done. From inside a call in the same thread (an
    argument's `__index__`, a setter), they answer the state before the call;
    from a signal handler that runs while the call's native part runs Python
    (a grow, the torch kernels), `token_slots` and `check_integrity` raise
    RuntimeError (what they would read is half changed).

    Interrupts: every change a call makes happens in native calls, after every
    check; a KeyboardInterrupt (or anything a signal handler raises) anywhere in
    a call leaves the manager as before the call or as after it, never in
    between, and is raised (no signal is lost; no signal is ever blocked). A
    buffer too small for a step is replaced inside the step's native call, with
    the object that holds its views (`buffers.MetadataBuffer`,
    `buffers.StagingBuffers`) in the same native call, so that Python never runs
    between the two (docs/architecture.md, "Threads, interrupts, fork").

    Fork: in a forked child, a manager made before the fork works if it is the
    cpu design on torch's CPU device (`runs_after_fork`); any other (the torch
    kernels of the gpu and hybrid designs, which GNU OpenMP may hang in a
    child; anything on CUDA) refuses every call and `token_slots` and
    `check_integrity` with a RuntimeError naming the fork, and still answers
    the host's reads (`seq_len`, `num_running_reqs`, `num_free_slots`). A manager
    made in the child runs as torch does there: a torch operation may hang in a
    child of a process that ran one in parallel, unless the child calls
    `torch.set_num_threads(1)` first (the lab's benchmarks do).
    """

    default_block_size: ClassVar[int]
    runs_after_fork: ClassVar[bool] = False
    """Whether a manager made before a fork runs in the child on torch's CPU device (see Fork)."""
    _books: Any  # the native books, made by the design (`_build`)
    _step: Any  # the native step over them: _C.HostStep or _C.DeviceStep

    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        max_running_reqs: int,
        device: torch.device | str | None = None,
    ) -> None:
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
        self.block_size = checked_int(name, "block_size", cache_config.block_size or self.default_block_size)
        self.num_blocks = checked_int(name, "num_gpu_blocks", cache_config.num_gpu_blocks)
        checked_slots(name, self.num_blocks, self.block_size)
        self.max_running_reqs = checked_int(name, "max_running_reqs", max_running_reqs)
        self.max_seq_len = checked_int(name, "max_seq_len", model_config.max_seq_len)
        self.device = resolve_device(device)
        layer_ids = model_config.layer_ids
        if type(layer_ids) is not tuple or not layer_ids:
            raise TypeError(f"{name}: model_config.layer_ids={describe(layer_ids)} is not a non-empty tuple")
        layers = checked_layer_ids(name, layer_ids)  # (distinct: a config changed since is checked again)
        self._layer_ids = frozenset(layers)
        self._first_layer = layers[0]
        self.max_width = -(-self.max_seq_len // self.block_size)
        """Blocks of the longest request: the widest block table a pack returns."""
        self._guard = _C.Guard()
        # The raw current stream each launch goes on (torch's CPU device: 0, never read).
        self._stream = (
            functools.partial(torch._C._cuda_getCurrentRawStream, self.device.index)
            if self.device.type == "cuda"
            else int
        )
        self._memo: tuple | None = None  # the last pack: (id, stats, views)
        self._num_compiles = self._num_captures = 0
        self._build()
        ref = weakref.ref(self)  # (the step keeps its grow: no cycle through it)
        self._step.set_grow(lambda which, nbytes: ref()._grow(which, nbytes))  # type: ignore[union-attr]
        _track(self)

    def __copy__(self):
        raise TypeError(
            f"{type(self).__name__} cannot be copied: it owns its buffers and its native books (make another manager)"
        )

    def __deepcopy__(self, memo: dict):
        self.__copy__()

    def __reduce_ex__(self, protocol):
        raise TypeError(f"{type(self).__name__} cannot be pickled: it owns device buffers and native books")

    @property
    def capacity(self) -> int:
        """Slots in the pool."""
        return self.num_blocks * self.block_size

    @property
    def num_compiles(self) -> int:
        """Kernels this manager compiled (Triton), since it was made."""
        return self._num_compiles

    @property
    def num_captures(self) -> int:
        """CUDA graphs this manager captured, since it was made."""
        return self._num_captures

    def _layer_of(self, batch: BatchMetadata) -> int:
        """The batch's layer id, checked: one of this worker's layers."""
        if not isinstance(batch, BatchMetadata):
            raise TypeError(f"{type(self).__name__}: batch={describe(batch)} is not a BatchMetadata")
        layer_id = batch.layer_id
        if type(layer_id) is not int:
            layer_id = checked_int(type(self).__name__, "layer_id", layer_id, -(2**63), 2**63 - 1)
        if layer_id not in self._layer_ids:
            raise ValueError(f"layer_id={layer_id!r} is not one of this worker's layers {sorted(self._layer_ids)}")
        return layer_id

    def _id_list(self, req_ids: object) -> Any:
        """req_ids as the native step reads them: a list, a tuple or an integer array as
        they are; any other iterable as a list; TypeError naming it otherwise."""
        if type(req_ids) in (list, tuple):
            return req_ids
        try:
            memoryview(req_ids)  # type: ignore[arg-type]
            return req_ids  # (an integer array; the step names any other kind of buffer)
        except (TypeError, ValueError):  # no buffer, or one the buffer protocol cannot describe
            if hasattr(req_ids, "__array_interface__"):
                return req_ids
        try:
            return list(req_ids)  # type: ignore[call-overload]
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}: req_ids={describe(req_ids)} is not a sequence of ints") from exc

    def _checked_req_id(self, req_id: object) -> int:
        """The id as an int, read once (for methods that pass it on more than once)."""
        return checked_int(type(self).__name__, "req_id", req_id, -(2**63), 2**63 - 1)

    # -- the step ---------------------------------------------------------------------

    def update_block_table(self, batch: BatchMetadata) -> None:
        """Reserves a slot for every token this step adds, and sets `batch.seq_lens`.

        At the first layer (`batch.layer_id == model_config.layer_ids[0]`):
        a prefill entry of an unknown request gets positions [0, n); of a known
        request holding c tokens (chunked prefill), positions [c, c + n); a
        decode entry holding c tokens gets position c. At other layers nothing
        is reserved and the lengths are the ones the first layer set.
        A slot, once given to a token, never moves until its request is released.
        The update is all or nothing: when anything raises (setting `batch.seq_lens`
        included), nothing was reserved.

        Raises (a malformed batch is never KVCacheExhausted, even when it
        would not fit either):
            KVCacheExhausted: the pool, the request rows or max_seq_len cannot
                hold the batch.
            ValueError: a malformed batch (duplicate ids, len(init_prefill_lens)
                != num_prefill_seqs, a length < 1, an unknown layer, ...).
            TypeError: a batch that is not a BatchMetadata; an id, a length,
                num_prefill_seqs or layer_id that is not an int (a bool, a float,
                a str, None, ...).
            KeyError: a decode entry (or any entry at a later layer) names an
                unknown request.
        """
        with self._guard:
            step = self._step
            if self._layer_of(batch) != self._first_layer:
                batch.seq_lens = step.lengths(batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
                return
            seq_lens = step.plan(batch.req_ids, batch.num_prefill_seqs, batch.init_prefill_lens)
            before = batch.seq_lens
            try:
                batch.seq_lens = seq_lens  # may raise: nothing is reserved yet
                step.commit(self._stream())
            except BaseException:
                try:
                    batch.seq_lens = before
                except Exception:  # noqa: BLE001 (a setter that raises again: the error above counts)
                    pass
                raise

    def match_prefix(self, req_id: int, block_hashes: Sequence[int]) -> int:
        """Registers a request at the length of its longest cached prefix and returns it
        (docs/prefix-caching.md): once for a request, before its first update.

        `block_hashes[k]` names the content of the prompt's full block k (tokens
        [k * block_size, (k + 1) * block_size)), each hash chained from the one before
        (equal hashes: equal prefixes); the caller passes the full blocks of the prompt
        without its last token. The manager maps the blocks it holds under the longest run
        of leading hashes `h[0..m)` into the request's table (a reference each; an
        evictable one is held again) and registers the request at `c = m * block_size`
        tokens: its first prefill entry continues at position c. It remembers the hashes:
        a block the request's later steps fill becomes findable under its hash (at the
        first-layer update that reserves its last slot, unless a block is indexed under
        that hash already). At a release, a request's blocks lose a reference from the last
        to the first: an indexed block left unheld becomes evictable (still findable, at
        the tail of the LRU); an update takes free blocks first, then evicts the least
        recently released. A manager never given hashes behaves as if there were no cache.

        Args:
            req_id: any int64, not known to the manager.
            block_hashes: a list, a tuple or a 1-D integer array of int64 (empty: nothing
                matched, the request registered at 0), at most
                (max_seq_len - 1) // block_size of them.

        Raises (each before anything changed):
            TypeError: req_id or a hash not an int (a bool, a float, ...), block_hashes
                not a list, a tuple or an integer array.
            ValueError: a hash or req_id outside int64, too many hashes, a request already
                known (a second match, or one after its first update).
            KVCacheExhausted: no request row is free.
        """
        with self._guard:
            return self._match_prefix(req_id, block_hashes)

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """The prefix cache's counts (see PrefixCacheStats)."""
        with self._guard:
            return PrefixCacheStats(*self._prefix_cache_stats())

    def pack_flash_attn_metadata(self, batch: BatchMetadata) -> FlashAttentionMetadata:
        """Builds the batch's FlashAttention metadata on the manager's device.

        `block_tables` is int32 [B, W] with W = ceil(max seq_len / block_size),
        padded with PAD_BLOCK_ID; `slot_mapping` is int64, the slot of every query
        token entry by entry, positions ascending; for query token t of entry i at
        position p: slot_mapping[t] == block_tables[i, p // bs] * bs + p % bs.
        The tensors stay valid until the next call (see FlashAttentionMetadata).
        The same batch at another layer of the same step (the same ints, nothing
        changed since) gets the same metadata without packing again.

        Raises: TypeError / ValueError / KeyError as `update_block_table`.
        """
        with self._guard:
            layer = self._layer_of(batch)
            memo = self._memo
            packed = self._step.pack(
                batch.req_ids,
                batch.num_prefill_seqs,
                batch.init_prefill_lens,
                layer,
                self._stream(),
                memo[0] if memo else -1,
            )
            if len(packed) == 2:  # the batch of the remembered pack, at another layer
                return self._metadata(memo[1], packed[1], memo[2])  # type: ignore[index]
            pack_id, stats, seq_lens = packed
            views = stats.buffer.views(stats.batch_size, stats.width, stats.num_tokens)
            self._memo = (pack_id, stats, views)
            return self._metadata(stats, seq_lens, views)

    def _metadata(self, stats: Any, seq_lens: list[int], views: tuple) -> FlashAttentionMetadata:
        # Tensors of their own (aliases of the kept views): what a caller does to their
        # shapes reaches nothing here.
        seq, ctx, qsl, ssl, tables, slots = views
        return FlashAttentionMetadata(
            stats.num_prefills,
            stats.num_prefill_tokens,
            stats.num_decode_tokens,
            seq_lens,
            seq.detach(),
            ctx.detach(),
            qsl.detach(),
            ssl.detach(),
            stats.max_query_len,
            stats.max_prefill_seq_len,
            stats.max_decode_seq_len,
            stats.max_decode_query_len,
            tables.detach(),
            slots.detach(),
            self.block_size,
        )

    def release_seqs(self, req_ids: Sequence[int]) -> None:
        """Returns every slot and request row of these requests to the pool.

        Raises: KeyError naming an unknown request; ValueError on a repeated id;
        TypeError when req_ids is not a sequence of ints.
        """
        with self._guard:
            self._release(self._id_list(req_ids))

    def reset_state(self) -> None:
        """Back to empty, as after construction (the prefix cache too: nothing indexed, its
        counters at 0)."""
        with self._guard:
            self._reset()

    def synchronize(self) -> None:
        """Blocks until the device has finished all work this manager issued
        or deferred (benchmarks end every timed call with it)."""
        with self._guard:
            self._flush()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm_up(self, max_num_tokens: int | None = None) -> None:
        """What a serving engine calls once at start-up: sizes the buffers for steps of
        up to `max_num_tokens` query tokens (default: max_running_reqs, a decode of
        every request) and compiles and captures every kernel a step of any shape
        within the manager's limits launches. After it, such steps compile nothing
        and capture nothing (`num_compiles`, `num_captures`). A step past those sizes
        grows its buffers (the device-table designs capture again then)."""
        with self._guard:
            tokens = (
                self.max_running_reqs
                if max_num_tokens is None
                else checked_int(type(self).__name__, "max_num_tokens", max_num_tokens)
            )
            self._warm_up(tokens)

    # -- what a design provides ---------------------------------------------------------

    @abstractmethod
    def _build(self) -> None:
        """Makes the books, the native step and the buffers (the last step of `__init__`)."""

    @abstractmethod
    def _grow(self, which: str, nbytes: int) -> None:
        """Grows the buffers `which` names to `nbytes` at least: the native step calls it
        when a buffer is too small for a call (csrc/step.h, Grow)."""

    @abstractmethod
    def _match_prefix(self, req_id: Any, block_hashes: Any) -> int:
        """`match_prefix` with its arguments as given (the native call reads them once)."""

    @abstractmethod
    def _prefix_cache_stats(self) -> tuple[int, int, int, int, int]: ...

    @abstractmethod
    def _release(self, req_ids: Any) -> None: ...

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _flush(self) -> None:
        """Launches what is deferred (nothing on a design that defers nothing)."""

    @abstractmethod
    def _warm_up(self, max_num_tokens: int) -> None: ...

    # -- inspection -------------------------------------------------------------------------

    @abstractmethod
    def num_free_slots(self) -> int:
        """Slots a step can take: those of the free and the evictable blocks (held by no
        request)."""

    def num_running_reqs(self) -> int:
        """Requests holding slots."""
        return self._books.num_reqs

    def seq_len(self, req_id: int) -> int:
        """Tokens the request holds. Raises KeyError for an unknown request."""
        return self._books.seq_len(req_id)

    def token_slots(self, req_id: int) -> list[int]:
        """The slot of each of the request's tokens, positions ascending."""
        req_id = self._checked_req_id(req_id)
        return self._read(lambda: self._token_slots(req_id))

    def _token_slots(self, req_id: int) -> list[int]:
        seq_len, bs = self._books.seq_len(req_id), self.block_size
        blocks = self._block_ids(req_id, -(-seq_len // bs))
        return [blocks[p // bs] * bs + p % bs for p in range(seq_len)]

    def _read(self, fn: Callable[[], _T]) -> _T:
        """fn() as one read of several native calls: no call of another thread changes the
        manager meanwhile (see Threads); RuntimeError in a process that must not use it."""
        refusal = self._guard.refusal
        if refusal is not None:
            raise RuntimeError(refusal)
        return self._step.read(fn)

    @abstractmethod
    def _block_ids(self, req_id: int, num_blocks: int) -> list[int]:
        """The first `num_blocks` block ids of a running request, in position order."""

    def check_integrity(self) -> None:
        """Raises AssertionError unless: no slot is owned twice but a shared block's
        (indexed by the prefix cache), free + evictable + owned == capacity, and the host
        books agree with the device state; each block's reference count equals the rows
        holding it, no held block is free or evictable, every evictable block is indexed
        and unheld, and the index and the blocks name each other."""
        self._read(self._check_integrity)

    @abstractmethod
    def _check_integrity(self) -> None:
        """check_integrity, as one read."""

    @abstractmethod
    def memory_footprint(self) -> MemoryFootprint:
        """Bytes of the manager's persistent state, on the device and on the host."""


def _refuse_after_fork() -> None:
    """In a forked child: every manager made before the fork that cannot run there refuses
    its calls (see Fork). Managers made in the child run as anywhere."""
    for ref in _LIVE:
        manager = ref()
        if manager is not None and (manager.device.type == "cuda" or not manager.runs_after_fork):
            why = "CUDA" if manager.device.type == "cuda" else "its torch kernels (GNU OpenMP)"
            manager._guard.refuse(
                f"{type(manager).__name__} was made in process {os.getppid()}, which forked this "
                f"one ({os.getpid()}): {why} cannot run after a fork (a call would hang or fail); "
                "make the manager in this process (or start it with 'spawn' or 'forkserver')"
            )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refuse_after_fork)

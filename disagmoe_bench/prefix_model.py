"""The prefix cache of docs/prefix-caching.md, in Python: a model small enough to read at once.

`PrefixModel` keeps what the contract makes observable (which hashes are findable, the
reference counts, the LRU of evictable blocks, how many blocks are free) with the same
order rules as the managers:

- `match_prefix`: the longest run of leading hashes found in the index, one reference each;
  a matched evictable block leaves the LRU;
- `update`: a first-layer update; the step first evicts the `need - free` oldest evictable
  blocks (each leaves the index and goes on the free blocks), then takes free blocks; then
  every block of an entry that the step fills, under a hash the request was given, is
  indexed unless the index already holds that hash (entries in batch order: the first
  filler stays indexed, a later one keeps its block unindexed);
- `release_seqs`: each request's blocks from the last to the first lose a reference; an
  indexed block left unheld joins the tail of the LRU, an unindexed one is free again.

Block ids are this model's own (a stack of free ids): a manager's may differ; what a manager
returns from `match_prefix`, its `num_free_slots()` and its `prefix_cache_stats()` must not.
The scheduler predicts each admission's cached length with it, and tests of the managers
can use it as their reference.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Sequence

from disagmoe.errors import KVCacheExhausted


class PrefixCacheStats(NamedTuple):
    """The contract's `prefix_cache_stats()`: blocks indexed now, of which evictable (no
    holder); hashes queried and blocks hit by `match_prefix`, and blocks evicted, since
    construction or `reset_state()`."""

    cached_blocks: int
    evictable_blocks: int
    queried_blocks: int
    hit_blocks: int
    evicted_blocks: int


class CachedPrefix(NamedTuple):
    """What `match_prefix` would map now: `num_blocks` leading blocks, `num_evictable` of
    them evictable (taking them leaves that many fewer blocks for allocation)."""

    num_blocks: int
    num_evictable: int


class PrefixModel:
    """A pool of `num_blocks` blocks of `block_size` tokens with the contract's prefix cache."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if type(num_blocks) is not int or num_blocks < 1 or type(block_size) is not int or block_size < 1:
            raise ValueError(f"PrefixModel: num_blocks={num_blocks!r} and block_size={block_size!r} must be ints >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.reset_state()

    def reset_state(self) -> None:
        """Empty: every block free, nothing indexed, the counters at 0."""
        self._free = list(range(self.num_blocks - 1, -1, -1))  # a stack: pop() takes block 0 first
        self._refs = [0] * self.num_blocks
        self._index: dict[int, int] = {}  # hash -> block
        self._hash_of: dict[int, int] = {}  # block -> hash
        self._lru: OrderedDict[int, None] = OrderedDict()  # evictable blocks, oldest first
        self._tables: dict[int, list[int]] = {}
        self._lens: dict[int, int] = {}
        self._hashes: dict[int, tuple[int, ...]] = {}
        self._queried = self._hit = self._evicted = 0

    # -- the contract's calls -------------------------------------------------------------

    def cached_prefix(self, block_hashes: Sequence[int]) -> CachedPrefix:
        """What `match_prefix(_, block_hashes)` would map now, changing nothing (its check)."""
        num = evictable = 0
        for h in block_hashes:
            block = self._index.get(h)
            if block is None:
                break
            num += 1
            evictable += block in self._lru
        return CachedPrefix(num, evictable)

    def match_prefix(self, req_id: int, block_hashes: Sequence[int]) -> int:
        """Registers `req_id` at the length of its longest cached prefix and returns it."""
        if req_id in self._lens:
            raise ValueError(f"match_prefix: req_id={req_id} is already known")
        hashes = tuple(block_hashes)
        num = self.cached_prefix(hashes).num_blocks
        table = [self._index[h] for h in hashes[:num]]
        for block in table:
            self._refs[block] += 1
            self._lru.pop(block, None)
        self._tables[req_id], self._lens[req_id], self._hashes[req_id] = table, num * self.block_size, hashes
        self._queried += len(hashes)
        self._hit += num
        return num * self.block_size

    def update(self, entries: Sequence[tuple[int, int]]) -> list[int]:
        """A first-layer update of the entries (req_id, new tokens) in batch order (a request
        not known yet starts at 0); returns their lengths after it. KVCacheExhausted, and
        nothing changed, when free plus evictable blocks cannot hold the step."""
        bs, lens, tables = self.block_size, self._lens, self._tables
        if len({req_id for req_id, _ in entries}) != len(entries):
            raise ValueError(f"update: a request appears twice in {list(entries)!r:.200}")
        need = 0
        for req_id, n in entries:
            if n < 1:
                raise ValueError(f"update: request {req_id} adds {n} tokens, not >= 1")
            length = lens.get(req_id)
            if length is None:
                need += -(-n // bs)
            elif (length + n - 1) // bs >= len(tables[req_id]):
                need += -(-(length + n) // bs) - len(tables[req_id])
        if need > self.num_available:
            raise KVCacheExhausted(f"update: the step needs {need} blocks; {self.num_available} are free or evictable")
        free, refs, index, hash_of = self._free, self._refs, self._index, self._hash_of
        for _ in range(need - len(free)):
            block, _ = self._lru.popitem(last=False)
            del index[hash_of.pop(block)]
            free.append(block)
            self._evicted += 1
        lengths = []
        for req_id, n in entries:
            if req_id not in lens:
                lens[req_id], tables[req_id], self._hashes[req_id] = 0, [], ()
            old, table, hashes = lens[req_id], tables[req_id], self._hashes[req_id]
            new = lens[req_id] = old + n
            grow = -(-new // bs) - len(table)
            if grow > 0:
                taken = free[: -grow - 1 : -1]  # the top `grow` free blocks, as `grow` pops take them
                del free[-grow:]
                for block in taken:
                    refs[block] = 1
                table.extend(taken)
            if old // bs < len(hashes):
                for k in range(old // bs, min(new // bs, len(hashes))):  # the blocks this step fills
                    if hashes[k] not in index:
                        index[hashes[k]] = table[k]
                        hash_of[table[k]] = hashes[k]
            lengths.append(new)
        return lengths

    def release_seqs(self, req_ids: Sequence[int]) -> int:
        """Releases the requests in order; returns how many blocks became free or evictable."""
        unknown = [r for r in req_ids if r not in self._lens]
        if unknown:
            raise KeyError(f"release_seqs: unknown request {unknown[0]}")
        released, refs, hash_of, lru, free = 0, self._refs, self._hash_of, self._lru, self._free
        for req_id in req_ids:
            for block in reversed(self._tables.pop(req_id)):
                refs[block] -= 1
                if refs[block] == 0:
                    released += 1
                    if block in hash_of:
                        lru[block] = None
                    else:
                        free.append(block)
            del self._lens[req_id], self._hashes[req_id]
        return released

    # -- inspection -----------------------------------------------------------------------

    @property
    def num_available(self) -> int:
        """Blocks a step can take: free plus evictable."""
        return len(self._free) + len(self._lru)

    def num_free_slots(self) -> int:
        return self.num_available * self.block_size

    def seq_len(self, req_id: int) -> int:
        return self._lens[req_id]

    def block_hashes(self, req_id: int) -> tuple[int, ...]:
        """The hashes `req_id` was matched with (those its filled blocks are indexed under)."""
        return self._hashes[req_id]

    def evictable_hashes(self) -> list[int]:
        """The hashes of the evictable blocks, oldest first (the order they would be evicted)."""
        return [self._hash_of[block] for block in self._lru]

    def is_cached(self, block_hash: int) -> bool:
        return block_hash in self._index

    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(len(self._index), len(self._lru), self._queried, self._hit, self._evicted)

    def check_integrity(self) -> None:
        """AssertionError unless the books agree: references equal the rows holding each
        block, no held block is free or evictable, every evictable block is indexed and
        unheld, the index and the blocks name each other, and every block is held, free or
        evictable exactly once."""
        refs = [0] * self.num_blocks
        for req_id, table in self._tables.items():
            assert len(table) == -(-self._lens[req_id] // self.block_size), f"request {req_id}: table length"
            for block in table:
                refs[block] += 1
        assert refs == self._refs, "reference counts differ from the rows"
        free = set(self._free)
        assert len(free) == len(self._free), "a block is free twice"
        held = {b for b in range(self.num_blocks) if refs[b]}
        assert not held & free and not held & set(self._lru), "a held block is free or evictable"
        assert not free & set(self._lru), "a block is free and evictable"
        assert len(held) + len(free) + len(self._lru) == self.num_blocks, "a block is lost"
        assert all(b in self._hash_of for b in self._lru), "an evictable block is not indexed"
        assert all(self._hash_of.get(b) == h for h, b in self._index.items()), "the index names the wrong block"
        assert len(self._hash_of) == len(self._index), "a block is indexed under two hashes"

"""The block hashes a prefix-cache replay passes to `match_prefix`, made from a trace's hash ids,
and the trace's bound: what a cache that never evicts would serve.

A trace names its prompts' content by one id per block of `prefix_block_tokens` tokens
(`TraceRequest.prefix_blocks`: Mooncake's blocks are 512 tokens, ServeGen's 16; the
prompt's last block may be partial). `BlockHashes` turns them into the keys of the
scheduler's blocks of `block_size` tokens (which must divide the trace's block):

1. chained: the ids of a prompt's trace blocks are a path in a trie over the whole trace,
   and trace block u gets the trie node's number, `chain = node(chain of block u - 1, id of
   block u)`, numbered 0, 1, 2, ... in order of first appearance; equal chains mean equal
   prefixes, as vLLM's hashes chained with their parent's do (whether or not the trace's
   own ids are chained already), and the keys stay small exact integers: no collisions;
2. split: trace block u of chain c holds blocks j = 0, 1, ... of `block_size` tokens,
   keyed `c * (prefix_block_tokens // block_size) + j`: equal trace blocks give equal keys
   (Mooncake's 512-token block: 32 keys of 16 tokens), and a partial last trace block gives
   only its full blocks (`tokens in it // block_size` keys);
3. capped: at most `(prompt_tokens - 1) // block_size` keys, the full blocks of the prompt
   without its last token, as the contract asks (a whole match leaves a token to compute).

A request without ids has no keys (its match is empty).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from disagmoe_bench.traces import TraceRequest


class BlockHashes:
    """The keys of every request's full blocks of `block_size` tokens: `hashes(index)`."""

    def __init__(self, requests: Sequence[TraceRequest], block_size: int) -> None:
        if type(block_size) is not int or block_size < 1:
            raise ValueError(f"BlockHashes: block_size={block_size!r} is not an int >= 1")
        self.block_size = block_size
        self._requests = requests
        trie: dict[tuple[int, int], int] = {}
        self._chains: list[tuple[int, ...]] = []
        for index, request in enumerate(requests):
            ids, unit = request.prefix_blocks, request.prefix_block_tokens
            if ids and (type(unit) is not int or unit < 1):
                raise ValueError(f"request {index}: prefix_block_tokens={unit!r:.40} is not an int >= 1")
            if ids and unit % block_size:
                raise ValueError(
                    f"request {index}: its hash ids cover {unit} tokens each, which blocks of {block_size} "
                    "tokens do not divide"
                )
            if ids and len(ids) != -(-request.prompt_tokens // unit):
                raise ValueError(
                    f"request {index}: {len(ids)} hash ids of {unit} tokens for a prompt of "
                    f"{request.prompt_tokens} tokens"
                )
            chain, parent = [], -1
            for block_id in ids:
                parent = trie.setdefault((parent, block_id), len(trie))
                chain.append(parent)
            self._chains.append(tuple(chain))

    def __len__(self) -> int:
        return len(self._requests)

    @property
    def any(self) -> bool:
        """Whether any request has hashes."""
        return any(self._chains)

    def count(self, index: int) -> int:
        """How many keys request `index` has."""
        return (self._requests[index].prompt_tokens - 1) // self.block_size if self._chains[index] else 0

    def __call__(self, index: int) -> tuple[int, ...]:
        """The keys of request `index`'s full blocks, at most `count(index)` of them."""
        keys: list[int] = []
        for chain, full in self._units(index):
            base = chain * (self._requests[index].prefix_block_tokens // self.block_size)
            keys.extend(range(base, base + full))
        return tuple(keys)

    def _units(self, index: int) -> Iterator[tuple[int, int]]:
        """(chain, keys it gives) of each trace block of request `index`, within the cap."""
        request, bs = self._requests[index], self.block_size
        unit, left = request.prefix_block_tokens, self.count(index)
        for u, chain in enumerate(self._chains[index]):
            if left <= 0:
                return
            full = min(min(unit, request.prompt_tokens - u * unit) // bs, left)
            yield chain, full
            left -= full

    def unbounded(self, indices: Iterable[int]) -> Iterator[int]:
        """For each request of `indices` in turn, the prompt tokens a cache that held every
        key of the requests before it in `indices` (and never evicted) would serve: its
        longest leading run of keys among them, in tokens."""
        seen: dict[int, int] = {}  # chain -> how many of its leading keys are cached
        for index in indices:
            matched, run = 0, True
            for chain, full in self._units(index):
                have = seen.get(chain, 0)
                if run:
                    matched += min(have, full)
                    run = have >= full
                if have < full:
                    seen[chain] = full
            yield matched * self.block_size

    def bound(self) -> float:
        """The trace's bound: prompt tokens an unbounded cache would serve, every request
        arriving in trace order once, over all prompt tokens."""
        prompts = sum(r.prompt_tokens for r in self._requests)
        return sum(self.unbounded(range(len(self._requests)))) / prompts if prompts else 0.0

"""The staged words of a device-table launch (`gpu`, `hybrid`), as the C++ step writes them
(`csrc/device_step.h`, namespace `staged`: named there once, read here from
`_C.STAGED_WORDS`), and the launch flags (`_C.LAUNCH_FLAGS`).

A staging buffer is a header of int32 scalars, then the regions the launch's operations
appended in the order they were staged, each a few columns of `stride` words:

    [header | release: rows, lengths, block offsets | plan: rows, old lengths, new lengths,
     block offsets | hybrid: the new block ids | lookup: rows, lengths, query lengths,
     query starts, seq starts]

The header says where each region starts (`*_AT`) and its stride, and where the pack
writes slot_mapping and the lengths in the metadata buffer; a launch copies the first
`END` words. The kernels (both kernel files) read everything from there.
"""

from __future__ import annotations

from disagmoe import _C

_W: dict[str, int] = _C.STAGED_WORDS

END = _W["END"]
HEADER = _W["HEADER"]
PACK_SIZE, WIDTH, NUM_TOKENS = _W["PACK_SIZE"], _W["WIDTH"], _W["NUM_TOKENS"]
LOOKUP_AT, LOOKUP_STRIDE, SLOTS_AT, SEQ_LENS_AT, TABLE_AT = (
    _W["LOOKUP_AT"],
    _W["LOOKUP_STRIDE"],
    _W["SLOTS_AT"],
    _W["SEQ_LENS_AT"],
    _W["TABLE_AT"],
)
UPDATE_SIZE, HEIGHT, PLAN_AT, PLAN_STRIDE, IDS_AT = (
    _W["UPDATE_SIZE"],
    _W["HEIGHT"],
    _W["PLAN_AT"],
    _W["PLAN_STRIDE"],
    _W["IDS_AT"],
)
# The prefix cache's moves (gpu): MOVE_WORDS words each, (op, a, b, c); those before the
# update (PRE) and after the pack (POST). Ops: MOVE_PUSH_ROW free_blocks[a] =
# req_to_block[b, c]; MOVE_MATCH req_to_block[a, b] = entry_block[c]; MOVE_PUSH_ENTRY
# free_blocks[a] = entry_block[c]; MOVE_INDEX entry_block[c] = req_to_block[a, b].
PRE_SIZE, PRE_AT, POST_SIZE, POST_AT, MOVE_WORDS = (
    _W["PRE_SIZE"],
    _W["PRE_AT"],
    _W["POST_SIZE"],
    _W["POST_AT"],
    _W["MOVE_WORDS"],
)
MOVE_PUSH_ROW, MOVE_MATCH, MOVE_PUSH_ENTRY, MOVE_INDEX = 0, 1, 2, 3
RELEASE_SIZE, RELEASE_HEIGHT, RELEASE_AT, RELEASE_STRIDE = (
    _W["RELEASE_SIZE"],
    _W["RELEASE_HEIGHT"],
    _W["RELEASE_AT"],
    _W["RELEASE_STRIDE"],
)

# Where the blocks an update adds come from (csrc/device_step.h, BlockSource): the gpu
# design's free stack on the device, the hybrid design's host books.
DEVICE_STACK, HOST_BOOKS = _C.BlockSource.DEVICE_STACK, _C.BlockSource.HOST_BOOKS

# Launch flags (csrc/device_step.h, named there once): the kernels a launch holds (release
# runs first, pack last); FUSED: the update is the pack's own batch, and the pack kernel
# writes its blocks (no update kernel).
_F: dict[str, int] = _C.LAUNCH_FLAGS
RELEASE, UPDATE, PACK, FUSED, PREFIX = _F["RELEASE"], _F["UPDATE"], _F["PACK"], _F["FUSED"], _F["PREFIX"]

# Columns of each region, by index.
LOOKUP_ROWS, LOOKUP_SEQ_LENS, LOOKUP_QUERY_LENS, LOOKUP_QUERY_STARTS, LOOKUP_SEQ_STARTS = 0, 1, 2, 3, 4
PLAN_ROWS, PLAN_OLD_LENS, PLAN_NEW_LENS, PLAN_BLOCK_OFFSETS = 0, 1, 2, 3
RELEASE_ROWS, RELEASE_LENS, RELEASE_BLOCK_OFFSETS = 0, 1, 2


def staged_words(max_reqs: int, ids: int = 0) -> int:
    """Words of a staging buffer with room for every region of `max_reqs` entries and
    `ids` new block ids."""
    return _C.staged_words(max_reqs, ids)


def grid_of(n: int) -> int:
    """The grid a launch of n entries runs on: the next power of two (1 at least)."""
    return 1 << max(0, n - 1).bit_length()


# The header words each Triton kernel reads, passed to it as constexpr arguments of these
# names (module globals are not read inside a kernel).
RELEASE_WORDS = {name: _W[name] for name in ("RELEASE_SIZE", "RELEASE_HEIGHT", "RELEASE_AT", "RELEASE_STRIDE")}
UPDATE_WORDS = {name: _W[name] for name in ("UPDATE_SIZE", "HEIGHT", "PLAN_AT", "PLAN_STRIDE", "IDS_AT")}
PACK_WORDS = {
    name: _W[name]
    for name in (
        "PACK_SIZE",
        "WIDTH",
        "NUM_TOKENS",
        "LOOKUP_AT",
        "LOOKUP_STRIDE",
        "SLOTS_AT",
        "SEQ_LENS_AT",
        "TABLE_AT",
    )
}
# The moves kernel's words, one dict per region (SIZE, AT), as constexpr arguments.
PRE_WORDS = {"SIZE": PRE_SIZE, "AT": PRE_AT, "MOVE_WORDS": MOVE_WORDS}
POST_WORDS = {"SIZE": POST_SIZE, "AT": POST_AT, "MOVE_WORDS": MOVE_WORDS}

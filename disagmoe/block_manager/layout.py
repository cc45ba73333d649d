"""Where the device-table backends (`gpu`, `hybrid`) put a step's inputs: one staged int32
buffer per launch, named once here and read by both kernel files and the managers.

A staged buffer is a HEADER of scalars, then per-entry columns of `stride` words each
(stride = max_running_reqs + 1, so that every column holds a whole batch and its
total), then the hybrid backend's new page ids:

    [header | lookup: 5 columns | plan: 4 columns | release: 3 columns | page ids]

A launch copies a prefix of it: the header and lookup for a pack alone, up to the plan
when an update rides along, and so on (`copy_words`).
"""

from __future__ import annotations

HEADER = 16
"""int32 words before the columns; kernels read their scalars there."""

# Header words.
PACK_SIZE = 0  # entries of the pack's batch (0: no pack in this launch)
WIDTH = 1  # the block table's width W
NUM_TOKENS = 2  # query tokens of the pack's batch
UPDATE_SIZE = 3  # entries of the first-layer update (0: none)
HEIGHT = 4  # gpu: the free stack's height the update takes pages from
RELEASE_SIZE = 5  # requests released (0: none)
RELEASE_HEIGHT = 6  # gpu: the free stack's height the released pages are pushed at
NUM_PAGE_IDS = 7  # hybrid: page ids staged after the columns

# Lookup columns (pack_flash_attn_metadata).
LOOKUP_ROWS, LOOKUP_SEQ_LENS, LOOKUP_QUERY_LENS, LOOKUP_QUERY_STARTS, LOOKUP_SEQ_STARTS = 0, 1, 2, 3, 4
LOOKUP_COLUMNS = 5
# Plan columns (update_block_table at the first layer).
PLAN_ROWS, PLAN_OLD_LENS, PLAN_NEW_LENS, PLAN_PAGE_OFFSETS = 0, 1, 2, 3
PLAN_COLUMNS = 4
# Release columns.
RELEASE_ROWS, RELEASE_LENS, RELEASE_PAGE_OFFSETS = 0, 1, 2
RELEASE_COLUMNS = 3

LOOKUP = HEADER
"""Word where the lookup's columns start; column k of it starts at LOOKUP + k * stride."""


def plan_start(stride: int) -> int:
    return LOOKUP + LOOKUP_COLUMNS * stride


def release_start(stride: int) -> int:
    return plan_start(stride) + PLAN_COLUMNS * stride


def page_ids_start(stride: int) -> int:
    return release_start(stride) + RELEASE_COLUMNS * stride


def staged_words(stride: int, page_ids: int = 0) -> int:
    """Words of one staged buffer with room for `page_ids` new page ids."""
    return page_ids_start(stride) + page_ids


def copy_words(stride: int, release: bool, update: bool, page_ids: int = 0) -> int:
    """Words a launch copies: the prefix that holds what it reads."""
    if page_ids:
        return page_ids_start(stride) + page_ids
    if release:
        return page_ids_start(stride)
    if update:
        return release_start(stride)
    return plan_start(stride)


def tables_offset(max_reqs: int) -> int:
    """int32 word where the block table starts in the device metadata buffer. Before it,
    a batch of B entries packs seq_lens, context_lens, query_start_loc and seq_start_loc
    back to back (words 0, B, 2B and 3B + 1: `disagmoe.metadata.metadata_views`), so
    that one split makes all four; slot_mapping is a buffer of its own."""
    return (4 * max_reqs + 2 + 15) // 16 * 16


# The words each Triton kernel reads, passed to it as constexpr arguments of these names
# (Triton kernels cannot read module globals).
RELEASE_WORDS = {"RELEASE_SIZE": RELEASE_SIZE, "RELEASE_HEIGHT": RELEASE_HEIGHT, "RELEASE_ROWS": RELEASE_ROWS,
                 "RELEASE_LENS": RELEASE_LENS, "RELEASE_PAGE_OFFSETS": RELEASE_PAGE_OFFSETS}
UPDATE_WORDS = {"UPDATE_SIZE": UPDATE_SIZE, "HEIGHT": HEIGHT, "PLAN_ROWS": PLAN_ROWS,
                "PLAN_OLD_LENS": PLAN_OLD_LENS, "PLAN_NEW_LENS": PLAN_NEW_LENS,
                "PLAN_PAGE_OFFSETS": PLAN_PAGE_OFFSETS}
PACK_WORDS = {"PACK_SIZE": PACK_SIZE, "WIDTH": WIDTH, "LOOKUP_ROWS": LOOKUP_ROWS, "LOOKUP_SEQ_LENS": LOOKUP_SEQ_LENS,
              "LOOKUP_QUERY_LENS": LOOKUP_QUERY_LENS, "LOOKUP_QUERY_STARTS": LOOKUP_QUERY_STARTS,
              "LOOKUP_SEQ_STARTS": LOOKUP_SEQ_STARTS}

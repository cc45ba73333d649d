"""Hypothesis strategies for random step sequences, drawn against the reference model.

A step is one of: a first-layer batch (new prefills, chunked continuations of
running requests, decodes, in any mix), the last first-layer batch again at a
later layer, or a release of some running requests. Batches are well formed
and hold at most `max_reqs` entries; whether the pool, the rows or max_seq_len
can hold them is left to chance (the reference says which error to expect).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event
from hypothesis import strategies as st

from disagmoe import BatchMetadata

from harness import Harness
from reference import RefManager

REQ_IDS = st.one_of(st.integers(0, 40), st.integers(-(2**63), 2**63 - 1))
BATCH_KINDS = ("mixed", "mixed", "prefill", "decode")
BLOCK_SIZES = (1, 3, 16)  # 3 divides few lengths; 16 is larger than most prefills


@dataclass(frozen=True)
class Action:
    kind: str  # "batch" (first layer), "later" (a later layer) or "release"
    batch: BatchMetadata | None = None
    req_ids: tuple[int, ...] = ()


def pool_size(block_size: int, slots: int = 64) -> int:
    """Blocks for about `slots` slots (at least two)."""
    return max(2, slots // block_size)


def draw_batch(data: st.DataObject, ref: RefManager, kind: str, max_len: int) -> BatchMetadata:
    live = sorted(ref.seq_lens)
    old = data.draw(st.lists(st.sampled_from(live), unique=True), label="running") if live else []
    if kind == "decode":
        num_chunks, new_ids = 0, []
    else:
        num_chunks = len(old) if kind == "prefill" else data.draw(st.integers(0, len(old)))
        fresh = REQ_IDS.filter(lambda r: r not in ref.seq_lens)
        new_ids = data.draw(st.lists(fresh, unique=True, max_size=ref.max_reqs - len(old)), label="new")
    prefill_ids = data.draw(st.permutations(old[:num_chunks] + new_ids), label="prefill order")
    lengths = st.one_of(st.integers(1, 6), st.integers(1, max_len))
    lens = data.draw(st.lists(lengths, min_size=len(prefill_ids), max_size=len(prefill_ids)), label="prefill lens")
    return BatchMetadata(ref.layer_ids[0], prefill_ids + old[num_chunks:], len(prefill_ids), lens)


def draw_action(data: st.DataObject, ref: RefManager, last: BatchMetadata | None, max_len: int = 24) -> Action:
    kinds = [*BATCH_KINDS, *(["later"] if last is not None else []), *(["release"] if ref.seq_lens else [])]
    kind = data.draw(st.sampled_from(kinds), label="step kind")
    if kind == "later":
        layer = data.draw(st.sampled_from(ref.layer_ids[1:]), label="layer")
        return Action(
            "later", BatchMetadata(layer, list(last.req_ids), last.num_prefill_seqs, list(last.init_prefill_lens))
        )
    if kind == "release":
        ids = data.draw(st.lists(st.sampled_from(sorted(ref.seq_lens)), unique=True, min_size=1), label="released")
        return Action("release", req_ids=tuple(ids))
    return Action("batch", draw_batch(data, ref, kind, max_len))


def copy_batch(batch: BatchMetadata) -> BatchMetadata:
    return BatchMetadata(batch.layer_id, list(batch.req_ids), batch.num_prefill_seqs, list(batch.init_prefill_lens))


def run_random_steps(data: st.DataObject, harnesses: list[Harness], pack: bool, max_steps: int = 12) -> list[list]:
    """Draws and runs up to `max_steps` steps on every harness in lockstep (the first one's
    reference draws them). Returns, per step, each harness's result."""
    results, last, last_step = [], None, None
    for _ in range(data.draw(st.integers(1, max_steps), label="steps")):
        action = draw_action(data, harnesses[0].ref, last)
        if action.kind == "release":
            for h in harnesses:
                h.release(list(action.req_ids))
            last = None
            continue
        step = [(h.try_step if pack else h.try_update)(copy_batch(action.batch)) for h in harnesses]
        results.append(step)
        outcome = "ran" if step[0] is not None else f"raised {harnesses[0].last_error}".split(":")[0]
        event(f"{action.kind} step {outcome}")
        if action.kind == "batch" and step[0] is not None:
            last, last_step = action.batch, step
        elif action.kind == "later":  # reserves nothing, so it cannot run out; same lengths
            assert step == last_step
    return results

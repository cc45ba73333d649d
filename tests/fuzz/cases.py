"""Hypothesis strategies of fuzz cases, as plain data (tuples, ints, str), replayable.

A value spec is `(wrapper, base)`:
- base: ("raw", n) an int as is; ("live", k) the k-th running request (mod their
  number, or a fresh id when none runs); ("fresh", k) an id no request has; ("auto",)
  for num_prefill_seqs: the number of prefill entries the batch was drawn with.
- wrapper: "plain"; ("like", kind) an int-like of hostile.INT_LIKE; ("not", name) a
  non-int of hostile.NOT_INTS (base ignored); "clears" / "grows" (list items only);
  ("reenter", action) an __index__ that calls a manager first; "interrupt" an
  __index__ that raises KeyboardInterrupt.
An API case's operations: update, pack (and an edit of what it returned), release,
query, reset, and ("interrupted", kind, plain arguments, delay in us): one of those
interrupted by a timer. A step case calls a manager's native step (`_C.HostStep`,
`_C.DeviceStep`) and books directly, with raw, hostile arguments and grows.
"""

from __future__ import annotations

from hypothesis import strategies as st

from hostile import INT_LIKE, NOT_INTS

FUZZ_TARGETS = ("cpu", "gpu-torch", "hybrid-torch")
SAME_MANAGER_ACTIONS = ("update_same", "pack_same", "release_same", "reset_same")
CONTAINERS = ("list", "list", "list", "tuple", "array")
BAD_CONTAINERS = ("str", "none", "dict", "float-array", "2d-array", "tensor", "generator")
EDGE_INTS = (0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30)

edge = st.sampled_from(EDGE_INTS)


def one_in(n: int):
    """True about once in n draws. (Hypothesis draws the small integers and the first
    items far more often than the others: the common case goes first.)"""
    return st.sampled_from([False] * (n - 1) + [True])


not_int = st.tuples(st.just("not"), st.sampled_from(sorted(NOT_INTS)))
like = st.tuples(st.just("like"), st.sampled_from(sorted(INT_LIKE)))
# Wrappers a well-formed call still reads as its ints (list items may also be "clears" or
# "grows"), and wrappers that make the call fail while it reads its arguments.
BENIGN = st.one_of(like, st.tuples(st.just("reenter"), st.sampled_from(["read_same", "step_other"])))
BENIGN_ITEM = st.one_of(BENIGN, st.sampled_from(["clears", "grows"]))
FAILING = st.one_of(not_int, st.just("interrupt"), st.tuples(st.just("reenter"), st.sampled_from(SAME_MANAGER_ACTIONS)))


def wrapped(base, *, in_list: bool, allow_reenter: bool = True):
    """A value spec over `base`: mostly plain, sometimes hostile (benign or failing)."""
    benign = BENIGN_ITEM if in_list else BENIGN
    failing = FAILING if allow_reenter else st.one_of(not_int, st.just("interrupt"))
    if not allow_reenter:
        benign = like
    wrapper = st.one_of(st.just("plain"), st.just("plain"), st.just("plain"), st.just("plain"), benign, failing)
    return st.tuples(wrapper, base)


REQ_ID = st.one_of(
    st.tuples(st.just("live"), st.integers(0, 7)),
    st.tuples(st.just("fresh"), st.integers(0, 7)),
    st.tuples(st.just("raw"), st.one_of(st.integers(0, 12), edge)),
)
LENGTH = st.one_of(st.integers(1, 6), st.integers(1, 40), edge)
LAYER = st.one_of(st.sampled_from([3, 3, 3, 5, 7]), st.sampled_from([0, 4, 2**63, -1]))


@st.composite
def int_list(draw, item, max_size: int):
    """(container, item specs): a list, a tuple or a numpy array (plain items) of ints."""
    container = draw(st.sampled_from(CONTAINERS))
    if container == "array":
        return (container, draw(st.lists(st.tuples(st.just("plain"), item), max_size=max_size)))
    return (container, draw(st.lists(wrapped(item, in_list=True), max_size=max_size)))


@st.composite
def batch(draw, pack: bool = False):
    """(layer spec, req_ids spec, (drawn prefill count, num_prefill spec), lens spec).

    Most batches read as ints throughout (their values plain or benignly hostile) and are
    drawn to be mostly well formed: new or running requests prefill, running ones decode.
    The rest have one argument that fails to read, at a random place.
    """
    prefill_ks = draw(st.lists(st.integers(0, 7), max_size=4, unique=True))
    decode_ks = draw(st.lists(st.integers(0, 7), max_size=4, unique=True))
    kinds = draw(
        st.lists(
            st.sampled_from(["live"] if pack else ["fresh", "fresh", "live"]),
            min_size=len(prefill_ks),
            max_size=len(prefill_ks),
        )
    )
    bases = [(kind, k) for kind, k in zip(kinds, prefill_ks)] + [("live", k) for k in decode_ks]
    odd = draw(st.sampled_from([None] * 6 + [0, 1, 2, 3, 4]))  # one kind of oddity each
    if odd == 0:  # a few raw ids: unknown, or past int64
        bases = [draw(REQ_ID) if draw(st.booleans()) else base for base in bases]
    elif odd == 1:  # longer than any pool's rows
        bases += [("fresh", k) for k in range(8, 16)]
    num_prefill = len(prefill_ks)
    lens = draw(
        st.lists(
            st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 40)),
            min_size=num_prefill,
            max_size=num_prefill,
        )
    )
    if odd == 2:
        lens = draw(st.lists(LENGTH, max_size=5))
    container = draw(st.sampled_from(CONTAINERS))
    benign = draw(st.booleans())
    items = [(draw(BENIGN_ITEM) if benign and draw(one_in(4)) else "plain", base) for base in bases]
    len_items = [(draw(BENIGN_ITEM) if benign and draw(one_in(4)) else "plain", ("raw", n)) for n in lens]
    nps = ("plain", ("auto",) if odd != 3 else ("raw", draw(edge)))
    layer = ("plain", ("raw", draw(LAYER) if odd == 4 else 3))
    if draw(one_in(4)):  # one argument that fails to read
        where = draw(st.integers(0, len(items) + len(len_items) + 1))
        failing = draw(FAILING)
        if where == 0:
            layer = (draw(not_int), ("raw", 3))
        elif where <= len(items):
            items[where - 1] = (failing, items[where - 1][1])
        elif where == len(items) + 1:
            nps = (failing, nps[1])
        else:
            len_items[where - len(items) - 2] = (failing, len_items[where - len(items) - 2][1])
    elif draw(one_in(30)):
        return (layer, ("bad", draw(st.sampled_from(BAD_CONTAINERS))), (num_prefill, nps), ("list", len_items))
    if container == "array":
        items = [("plain", base) for _, base in items]
    elif benign and draw(one_in(4)):
        layer = (draw(like), layer[1])
    return (
        layer,
        (container, items),
        (num_prefill, nps),
        (
            "array" if container == "array" else "list",
            [("plain", base) for _, base in len_items] if container == "array" else len_items,
        ),
    )


EDITS = (None, None, "list", "fields", "shape")
PLAIN_IDS = st.tuples(
    st.just("list"), st.lists(st.tuples(st.just("plain"), st.tuples(st.just("live"), st.integers(0, 7))), max_size=3)
)


@st.composite
def plain_batch(draw, pack: bool = False):
    """A batch of plain ints, mostly well formed (the kind an interrupted operation gets)."""
    layer, (container, items), nps, lens = draw(batch(pack))
    if container == "bad":  # (a batch of one odd container): the same, with no ids
        items = []
    plain = [("plain", base) for _, base in items]
    return (
        ("plain", layer[1]),
        ("list", plain),
        (nps[0], ("plain", nps[1][1])),
        ("list", [("plain", base) for _, base in lens[1]]),
    )


def operation():
    return st.one_of(
        st.tuples(st.just("update"), batch()),
        st.tuples(st.just("update"), batch()),
        st.tuples(st.just("pack"), batch(pack=True), st.sampled_from(EDITS)),
        st.tuples(st.just("interrupted"), st.just("update"), plain_batch(), st.integers(0, 300)),
        st.tuples(st.just("interrupted"), st.just("pack"), plain_batch(pack=True), st.integers(0, 300)),
        st.tuples(st.just("interrupted"), st.just("release"), PLAIN_IDS, st.integers(0, 300)),
        st.tuples(st.just("interrupted"), st.just("reset"), st.none(), st.integers(0, 300)),
        st.tuples(st.just("release"), int_list(st.tuples(st.just("live"), st.integers(0, 7)), 3)),
        st.tuples(st.just("release"), int_list(REQ_ID, 3)),
        st.tuples(
            st.just("query"),
            st.sampled_from(["seq_len", "token_slots"]),
            wrapped(REQ_ID, in_list=False, allow_reenter=False),
        ),
        st.just(("reset",)),
    )


SIZE = {
    "block_size": st.sampled_from([1, 1, 2, 3, 4, 16]),
    "num_blocks": st.integers(1, 40),
    "max_reqs": st.integers(1, 6),
    "max_seq_len": st.integers(1, 48),
}
BAD_SIZE = st.sampled_from([0, -1, 2**31, 2**62 + 1, 2**63, 2**64, -(2**63)])


@st.composite
def config(draw):
    """Sizes as value specs: valid and small, or (rarely) bad; never valid and huge."""
    out = {}
    for name, good in SIZE.items():
        kind = draw(st.sampled_from(["good"] * 60 + ["like"] * 3 + ["bad", "not"]))
        if kind == "bad":
            out[name] = ("plain", ("raw", draw(BAD_SIZE)))
        elif kind == "not":
            out[name] = (draw(not_int), ("raw", 1))
        elif kind == "like":
            out[name] = (draw(like), ("raw", draw(good)))
        else:
            out[name] = ("plain", ("raw", draw(good)))
    return out


FIRST_PREFILL = st.builds(
    lambda ks, lens: (
        "update",
        (
            ("plain", ("raw", 3)),
            ("list", [("plain", ("fresh", k)) for k in ks]),
            (len(ks), ("plain", ("auto",))),
            ("list", [("plain", ("raw", n)) for n in lens[: len(ks)]]),
        ),
    ),
    st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True),
    st.lists(st.integers(1, 12), min_size=4, max_size=4),
)


@st.composite
def api_case(draw):
    """A configuration, its sizes, and operations (most cases start with a plain prefill)."""
    ops = draw(st.lists(operation(), min_size=1, max_size=10))
    if not draw(one_in(4)):
        ops.insert(0, draw(FIRST_PREFILL))
    return ("api", draw(st.sampled_from(FUZZ_TARGETS)), draw(config()), ops)


# -- direct calls into a manager's native step and books ---------------------------------

ANY_INT = st.one_of(st.integers(-3, 40), edge, st.tuples(st.just("not"), st.sampled_from(sorted(NOT_INTS))))
STREAM = st.one_of(st.just(0), st.just(0), st.just(0), ANY_INT)
STEP_LAYER = st.one_of(st.integers(0, 3), st.integers(0, 3), ANY_INT)
# An id or a length: plain, or an __index__ that calls the same step (refused: TypeError).
RAW_INT = st.one_of(st.integers(-1, 20), edge, st.tuples(st.just("reenter"), st.integers(0, 9)))


@st.composite
def mostly(draw, plain, odd):
    """`plain`, and about one draw in eight `odd`."""
    return draw(odd if draw(one_in(8)) else plain)


RAW_IDS = mostly(
    mostly(
        st.lists(st.integers(0, 9), unique=True, max_size=6), st.lists(mostly(st.integers(0, 9), RAW_INT), max_size=6)
    ),
    st.one_of(
        st.tuples(st.just("array"), st.lists(st.integers(0, 9), unique=True, max_size=6)),
        st.tuples(st.just("not"), st.sampled_from(["none", "str"])),
    ),
)
RAW_LENS = st.lists(mostly(st.integers(1, 12), RAW_INT), max_size=6)


@st.composite
def raw_batch(draw):
    """(req_ids, num_prefill_seqs, init_prefill_lens) as raw values: mostly well formed
    (prefill entries of any id, then decode entries of running requests: ("live", k), the
    k-th), sometimes anything."""
    if draw(one_in(8)):
        return draw(RAW_IDS), draw(ANY_INT), draw(RAW_LENS)
    prefill = draw(st.lists(mostly(st.integers(0, 9), RAW_INT), unique_by=str, max_size=4))
    decode = draw(st.lists(st.tuples(st.just("live"), st.integers(0, 7)), unique=True, max_size=4))
    lens = draw(st.lists(mostly(st.integers(1, 12), RAW_INT), min_size=len(prefill), max_size=len(prefill)))
    ids = prefill + decode
    if draw(one_in(8)):
        ids = ("array", ids)
    return ids, len(prefill), lens


# Who grows a buffer a pack or a commit needs: the manager, or a grow that fails.
GROW = st.sampled_from(["manager", "manager", "manager", "nothing", "short", "raises", "reenters"])
STEP_CALLS = st.one_of(
    st.tuples(st.just("plan"), raw_batch(), st.sampled_from(["commit", "commit", "later"]), STREAM, GROW),
    st.tuples(st.just("plan"), raw_batch(), st.just("commit"), STREAM, GROW),
    st.tuples(st.just("commit"), STREAM, GROW),
    st.tuples(st.just("lengths"), raw_batch()),
    st.tuples(
        st.just("pack"),
        mostly(st.just("planned"), raw_batch()),
        STEP_LAYER,
        STREAM,
        st.one_of(st.just("last"), ANY_INT),
        GROW,
    ),
    st.tuples(
        st.just("release"),
        mostly(st.lists(st.tuples(st.just("live"), st.integers(0, 7)), unique=True, min_size=1, max_size=3), RAW_IDS),
        STREAM,
    ),
    st.tuples(st.just("flush"), STREAM),
    st.tuples(st.just("reset"), STREAM),
    st.tuples(st.just("query"), st.sampled_from(["seq_len", "row_of", "block_ids", "num_free_blocks"]), ANY_INT),
    st.tuples(st.just("layout"), ANY_INT, ANY_INT, ANY_INT),
    # A buffer the step must refuse (it keeps the one it had).
    st.tuples(
        st.just("set"),
        st.sampled_from(["buffer", "head", "out", "twin", "stack"]),
        st.sampled_from(["list", "strided", "small", "meta"]),
    ),
)
STEP_SIZES = st.fixed_dictionaries(  # room for a few steps (API cases fuzz the sizes)
    {
        "block_size": st.sampled_from([1, 2, 3, 4, 16]),
        "num_blocks": st.integers(8, 64),
        "max_running_reqs": st.integers(2, 8),
        "max_seq_len": st.integers(16, 64),
    }
)


@st.composite
def step_case(draw):
    """A manager of a design and small sizes (its buffers shrunk to almost nothing, if
    `small`: calls then grow them), and calls straight into its native step."""
    design, sizes, small = draw(st.sampled_from(FUZZ_TARGETS)), draw(STEP_SIZES), draw(st.booleans())
    return ("step", design, sizes, small, draw(st.lists(STEP_CALLS, max_size=12)))


def cases():
    return st.one_of(api_case(), api_case(), step_case())

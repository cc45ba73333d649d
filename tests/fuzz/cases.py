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
interrupted by a timer.
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
    """A backend, its sizes, and operations (most cases start with a plain prefill)."""
    ops = draw(st.lists(operation(), min_size=1, max_size=10))
    if not draw(one_in(4)):
        ops.insert(0, draw(FIRST_PREFILL))
    return ("api", draw(st.sampled_from(FUZZ_TARGETS)), draw(config()), ops)


# -- direct calls into disagmoe._C --------------------------------------------------------

DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint32", "float32", "bool")
# (dtype, entries, step, read-only): a view with guard bytes on both sides.
BUFFER = st.one_of(
    st.tuples(
        st.just("buffer"), st.sampled_from(DTYPES), st.integers(0, 600), st.sampled_from([1, 1, 1, 2]), st.just(False)
    ),
    st.tuples(st.just("buffer"), st.sampled_from(DTYPES), st.integers(0, 64), st.just(1), st.just(True)),  # read-only
    st.tuples(st.just("not"), st.sampled_from(["none", "list", "str", "bytes"])),
)
ANY_INT = st.one_of(st.integers(-3, 40), edge, st.tuples(st.just("not"), st.sampled_from(sorted(NOT_INTS))))
# Sizes: small, or surely refused. Never valid and large (2**31 - 1 rows would be
# allocated, gigabytes of them).
BAD_SIZES = st.sampled_from([0, -1, 2**31, 2**32, 2**62 + 1, 2**63, 2**64, -(2**63)])
CORE_SIZE = st.one_of(
    st.integers(1, 12), st.integers(1, 12), BAD_SIZES, st.tuples(st.just("not"), st.sampled_from(sorted(NOT_INTS)))
)
RAW_IDS = st.one_of(
    st.lists(st.one_of(st.integers(0, 9), edge), max_size=6),
    st.tuples(st.just("not"), st.sampled_from(["none", "str"])),
)
RAW_LENS = st.lists(st.one_of(st.integers(-1, 20), edge), max_size=6)
GROW = st.sampled_from(["none", "grow", "grow-small", "grow-raises", "grow-reenters"])
CORE_CALLS = st.one_of(
    st.tuples(st.just("bm_update"), RAW_IDS, ANY_INT, RAW_LENS, st.sampled_from([True, False, 1, None])),
    st.tuples(
        st.just("bm_pack"),
        RAW_IDS,
        ANY_INT,
        RAW_LENS,
        BUFFER,
        GROW,
        st.one_of(st.just(-1), st.integers(-2, 17), ANY_INT),
    ),
    st.tuples(st.just("bm_plan"), RAW_IDS, ANY_INT, RAW_LENS, BUFFER, ANY_INT, BUFFER, GROW),
    st.tuples(st.just("bm_lookup"), RAW_IDS, ANY_INT, RAW_LENS, BUFFER, ANY_INT, st.sampled_from(["lookup", 7])),
    st.tuples(st.just("bm_release"), RAW_IDS),
    st.tuples(st.just("bm_query"), st.sampled_from(["seq_len", "block_ids"]), ANY_INT),
    st.tuples(st.just("table_advance"), RAW_IDS, ANY_INT, RAW_LENS, ANY_INT, BUFFER, ANY_INT),
    st.tuples(
        st.just("table_lookup"),
        RAW_IDS,
        ANY_INT,
        RAW_LENS,
        BUFFER,
        ANY_INT,
        st.sampled_from(["lookup", "pack_flash_attn_metadata", 7]),
    ),
    st.tuples(st.just("table_release"), RAW_IDS),
    st.tuples(st.just("layout"), ANY_INT, ANY_INT, ANY_INT),
    st.just(("reset",)),
)


@st.composite
def core_case(draw):
    sizes = tuple(draw(CORE_SIZE) for _ in range(4))  # block_size, num_blocks, max_seq_len, max_reqs
    return ("core", sizes, draw(st.lists(CORE_CALLS, min_size=1, max_size=10)))


def cases():
    return st.one_of(api_case(), api_case(), core_case())

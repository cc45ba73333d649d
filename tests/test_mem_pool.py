"""The `gpu` backend's pools: ReqToTokenPool, TokenToKVPoolAllocator and
PagedTokenToKVPoolAllocator (take / free / clear, counts and errors)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disagmoe import PagedTokenToKVPoolAllocator, ReqToTokenPool, TokenToKVPoolAllocator

from backends import HAS_CUDA

DEVICES = ["cpu", *(["cuda"] if HAS_CUDA else [])]
pytestmark = pytest.mark.parametrize("device", DEVICES)


def allocator(kind: str, num_pages: int, device: str) -> PagedTokenToKVPoolAllocator:
    if kind == "token":
        return TokenToKVPoolAllocator(num_pages, torch.device(device))
    return PagedTokenToKVPoolAllocator(num_pages, 4, torch.device(device))


def taken_pages(a: PagedTokenToKVPoolAllocator, height: int, count: int) -> list[int]:
    """The pages a take of `count` from `height` handed out, in order."""
    return [int(a.free_pages[height - 1 - m]) for m in range(count)]


def free_set(a: PagedTokenToKVPoolAllocator) -> list[int]:
    return sorted(a.free_pages[: a.num_free_pages].tolist())


def test_req_to_token_pool(device):
    pool = ReqToTokenPool(3, 10, 2, torch.device(device))
    assert pool.req_to_page.shape == (3, 5)  # one entry per page of a row
    assert pool.req_to_page.dtype == torch.int32
    assert pool.req_to_page.device.type == device
    assert pool.nbytes == 3 * 5 * 4
    books = pool.books
    assert (books.max_reqs, books.max_seq_len, books.block_size) == (3, 10, 2)
    plan = torch.zeros(4 * 4, dtype=torch.int32).numpy()
    books.advance([7, 8], 2, [3, 1], 5, plan, 4)
    assert (books.num_reqs, books.num_free_rows) == (2, 1)
    pool.clear()
    assert (books.num_reqs, books.num_free_rows) == (0, 3)
    assert books.row_of(7) == -1


@pytest.mark.parametrize("kind", ["token", "paged"])
def test_take_free_clear(device, kind):
    a = allocator(kind, 6, device)
    assert a.free_pages.dtype == torch.int32 and a.free_pages.device.type == device
    assert a.available_size() == 6 * a.page_size and a.nbytes == 6 * 4
    assert a.take(0) == 6 and a.num_free_pages == 6
    assert a.take(3) == 6
    assert taken_pages(a, 6, 3) == [0, 1, 2]  # page 0 first, as the C++ core
    assert a.num_free_pages == 3 and a.available_size() == 3 * a.page_size
    a.free(torch.tensor([2, 0], dtype=torch.int32, device=device))
    assert a.num_free_pages == 5 and free_set(a) == [0, 2, 3, 4, 5]
    height = a.take(2)
    assert taken_pages(a, height, 2) == [0, 2]  # the last pushed comes out first
    a.clear()
    assert a.num_free_pages == 6 and free_set(a) == list(range(6))


@pytest.mark.parametrize("kind", ["token", "paged"])
def test_take_and_free_errors_change_nothing(device, kind):
    a = allocator(kind, 4, device)
    a.take(3)
    with pytest.raises(ValueError, match=r"take: 2 pages asked, 1 free"):
        a.take(2)
    assert a.num_free_pages == 1
    with pytest.raises(ValueError, match=r"4 pages pushed, only 3"):
        a.free(torch.arange(4, dtype=torch.int32, device=device))
    assert a.num_free_pages == 1 and free_set(a) == [3]


def test_constructor_errors(device):
    dev = torch.device(device)
    for num_pages, page_size, named in (
        (0, 4, "num_pages=0"),
        (4, 0, "page_size=0"),
        (-1, 1, "num_pages=-1"),
        (2**30, 2, "x page_size=2"),
    ):
        with pytest.raises(ValueError, match=named):  # the bad one, never the other
            PagedTokenToKVPoolAllocator(num_pages, page_size, dev)
    with pytest.raises(ValueError):
        TokenToKVPoolAllocator(0, dev)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(0, 5)),
        st.tuples(st.just("free"), st.integers(0, 5)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=20,
)


@settings(max_examples=40)
@given(ops=OPS)
def test_random_take_free(device, ops):
    """Against a set model: the stack always holds exactly the pages not taken."""
    a = allocator("paged", 8, device)
    taken: list[int] = []
    for op, n in ops:
        if op == "take" and n <= a.num_free_pages:
            taken += taken_pages(a, a.take(n), n)
        elif op == "take":
            with pytest.raises(ValueError):
                a.take(n)
        elif op == "free":
            n = min(n, len(taken))
            pages, taken = taken[:n], taken[n:]
            a.free(torch.tensor(pages, dtype=torch.int32, device=device))
        else:
            a.clear()
            taken = []
        assert len(set(taken)) == len(taken)
        assert free_set(a) == sorted(set(range(8)) - set(taken))
        assert a.available_size() == 4 * (8 - len(taken))

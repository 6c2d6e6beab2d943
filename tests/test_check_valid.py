"""`check_valid` (the `check_valid` capability): the reference runtime walks its pool, its
claim book and what ties them. Each structure, corrupted one way, is named; an honest run
stays valid (the stateful suite calls it after every step)."""

import pytest

from kvclaims.conformance.litmus import tokens as litmus_tokens
from kvclaims.refimpl.runtime import Runtime


def tokens(blocks: int, seed: int) -> list[int]:
    return litmus_tokens(blocks, seed, 4)


def busy() -> Runtime:
    """A runtime with something in every structure: a hard claim with a TTL, a soft claim,
    a running request, cached blocks, free blocks."""
    rt = Runtime(16, 4, 2)
    rt.submit_claim("hard", tokens(2, 1), ttl=50)
    rt.submit_claim("soft", tokens(1, 2), strength="soft")
    rt.submit_request("warm", tokens(2, 1))
    rt.finish("warm")
    rt.submit_request("w2", tokens(1, 2))
    rt.finish("w2")
    rt.submit_request("cold", tokens(2, 5))
    rt.finish("cold")
    rt.submit_request("run", tokens(2, 3))
    rt.check_valid()
    return rt


def _slot(rt: Runtime) -> int:
    return rt.pool.index[rt.claims["hard"].chain[0]]


CORRUPTIONS = {
    "live count": lambda rt: setattr(rt.book, "live", rt.book.live + 1),
    "state index": lambda rt: rt.book._by_state["materialized"].discard("hard"),
    "tail index": lambda rt: rt.book._by_tail[rt.claims["soft"].chain[-1]].clear(),
    "deadline index": lambda rt: rt.book._deadlines.clear(),
    "holders": lambda rt: rt.book.holders.pop(_slot(rt)),
    "reserve ledger": lambda rt: rt.book.ledger.names.clear(),
    "index and hash_of": lambda rt: rt.pool.hash_of.__setitem__(_slot(rt), "elsewhere"),
    "free list": lambda rt: rt.pool.free.append(rt.pool.free[-1]),
    "in LRU": lambda rt: rt.pool.lru.popitem(last=False),
    "class": lambda rt: rt.pool.klass.__setitem__(_slot(rt), "cached"),
    "refs": lambda rt: rt.pool.refs.__setitem__(_slot(rt), rt.pool.refs[_slot(rt)] + 1),
}

MESSAGES = {
    "index and hash_of": "index and hash_of disagree",
    "free list": "free list twice",
    "refs": "refs",
    "in LRU": "in LRU",
    "class": "class",
}


@pytest.mark.parametrize("what", CORRUPTIONS)
def test_each_corruption_is_named(what):
    rt = busy()
    CORRUPTIONS[what](rt)
    with pytest.raises(AssertionError, match=MESSAGES.get(what, what)):
        rt.check_valid()


def test_valid_through_expiry_release_and_eviction():
    rt = busy()
    rt.release_claim("soft")
    rt.finish("run")
    rt.step(60)  # the hard claim's TTL runs out
    assert rt.claim_state("hard") == "expired"
    rt.submit_request("big", tokens(15, 4))
    rt.check_valid()
    assert rt.book.live == 0 and not rt.book._deadlines

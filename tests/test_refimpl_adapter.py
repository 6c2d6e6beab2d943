"""The reference adapter's queries that the stateful machine leans on every step: the KV
checks (`verify_prefix`, `verify_request`: the full blocks in one batch against memoized
expected KV, the partial last block alone) and `state_digest` (the whole runtime, KV bytes
and LRU order included)."""

from kvclaims.refimpl.adapter import RefimplAdapter

B = 4


def test_kv_checks_catch_one_wrong_value_wherever_they_look():
    rt = RefimplAdapter(U=8, B=B)
    tokens = list(range(10))  # two full blocks and a partial one
    rt.submit_request("r", tokens)
    slots = rt.requests["r"].slots
    assert rt.verify_request("r") and rt.verify_prefix(tokens)
    for i, position in ((0, 0), (1, B - 1), (2, 1)):
        rt.pool.kv[slots[i], 1, position, 1, 7] += 1
        assert not rt.verify_request("r")
        assert rt.verify_prefix(tokens) == (i == 2)  # a prefix is its full blocks
        rt.pool.kv[slots[i], 1, position, 1, 7] -= 1
    assert rt.verify_request("r") and rt.verify_prefix(tokens)
    assert not rt.verify_prefix(tokens + [10, 11])  # its third block is not resident


def test_kv_checks_tell_weights_apart():
    """The same tokens computed before and after a reset hold different KV; each verifies
    under its own weights (the memo is keyed by them)."""
    rt = RefimplAdapter(U=16, B=B)
    tokens = list(range(8))
    rt.submit_request("old", tokens)
    rt.reset_prefix_cache()
    rt.submit_request("new", tokens)
    assert rt.verify_request("old") and rt.verify_request("new") and rt.verify_prefix(tokens)
    old, new = rt.requests["old"].slots, rt.requests["new"].slots
    rt.pool.kv[new] = rt.pool.kv[old]  # the new request's blocks now hold stale KV
    assert rt.verify_request("old") and not rt.verify_request("new") and not rt.verify_prefix(tokens)


def test_state_digest_sees_kv_bytes_lru_order_and_the_host_tier():
    rt = RefimplAdapter(U=8, B=2, host_blocks=2)
    for rid, tokens in (("a", [1, 2]), ("b", [3, 4])):
        rt.submit_request(rid, tokens)
        rt.finish(rid)
    before = rt.state_digest()
    assert rt.state_digest() == before
    for kv in (rt.pool.kv, rt.host.kv):
        kv[1, 0, 0, 0, 0] += 1
        assert rt.state_digest() != before
        kv[1, 0, 0, 0, 0] -= 1
        assert rt.state_digest() == before
    rt.pool.lru.move_to_end(next(iter(rt.pool.lru)))
    assert rt.state_digest() != before

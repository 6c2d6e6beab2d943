"""Hypothesis strategies for claims, prompts and pool shapes, exported for runtimes' own test suites.

Prompts are drawn from a few token *families* so that prefixes are shared,
claims overlap and requests hit each other's blocks: conflicts are common even
in small pools. Every domain the spec defines is drawn edge to edge, its edges
weighted, with small values still likely: priorities tie and TTLs run out within
a run, yet a runtime that mishandles a negative priority or the largest TTL is
exercised too (tests/test_strategies.py checks every domain is reachable).
"""

from __future__ import annotations

from hypothesis import strategies as st

from kvclaims.model.names import POLICY
from kvclaims.model.terms import PRIORITIES, TIERS, TTLS

FAMILIES = 3
VOCAB = 500
MAX_U = 64  # the largest pool drawn: every runtime under test takes it (vLLM's engine holds 80)


def edge_to_edge(domain: range, small: range) -> st.SearchStrategy[int]:
    """Any value of `domain`: half the draws from `small` (ties, quick expiry), the rest
    its edges and their neighbours, or anywhere in it."""
    lo, hi = domain.start, domain.stop - 1
    edges = st.sampled_from(sorted({v for v in (lo, lo + 1, hi - 1, hi) if v in domain}))
    return st.one_of(st.integers(small.start, small.stop - 1), edges, st.integers(lo, hi))


def priorities() -> st.SearchStrategy[int]:
    """A claim priority: any signed 32-bit int, mostly small and of either sign."""
    return edge_to_edge(PRIORITIES, range(-3, 4))


def ttls() -> st.SearchStrategy[int | None]:
    """A TTL in ticks, or none: mostly short enough to expire within a run."""
    return st.none() | edge_to_edge(TTLS, range(1, 7))


def pool_shape() -> dict[str, st.SearchStrategy[int]]:
    """A runtime's shape, as keyword strategies (`U`, `B`, `reserve`, `host`): pools from one
    block to MAX_U, blocks of one token up, a reserve from none to past the pool (taken as
    at most U - 1: the whole range of R), a host tier or none."""
    return {
        "U": st.integers(1, MAX_U) | st.integers(8, 32),
        "B": st.sampled_from([1, 2, 4]) | st.integers(1, 16),
        "reserve": st.just(0) | st.integers(0, 8) | st.integers(0, MAX_U),
        "host": st.just(0) | st.integers(0, 8) | st.integers(0, 2 * MAX_U),
    }


def family_tokens(family: int, blocks: int, B: int) -> list[int]:
    """The first `blocks` whole blocks of a shared token family."""
    return [(family * 97 + i * 13) % VOCAB for i in range(blocks * B)]


def unique_tokens(serial: int, blocks: int, B: int, extra: int = 0) -> list[int]:
    """`blocks` whole blocks and `extra` more tokens no other prompt shares (the first token
    encodes `serial`)."""
    n = blocks * B + extra
    head = [VOCAB + serial]
    return (head + [(serial * 31 + i) % VOCAB for i in range(n - 1)])[:n]


def claim_kwargs(host_tier: bool) -> st.SearchStrategy[dict]:
    """Valid keyword arguments of `submit_claim` besides id and prefix.

    Hard claims mostly refuse (the blocking kind); `offload` only with the host tier.
    """
    tiers = st.sampled_from([("device",), ("device", "host")] if host_tier else [("device",)])
    common = {"priority": priorities(), "ttl": ttls()}
    blocking = st.fixed_dictionaries(
        {"strength": st.just("hard"), "policy": st.just(POLICY.refuse), "tiers": tiers, **common}
    )
    options = [
        blocking,
        blocking,
        st.fixed_dictionaries(
            {"strength": st.sampled_from(["hard", "soft"]), "policy": st.just(POLICY.demote), "tiers": tiers, **common}
        ),
    ]
    if host_tier:
        options.append(
            st.fixed_dictionaries(
                {
                    "strength": st.sampled_from(["hard", "soft"]),
                    "policy": st.just(POLICY.offload),
                    "tiers": st.just(("device", "host")),
                    **common,
                }
            )
        )
    return st.one_of(*options)


def prompt_shape(U: int) -> st.SearchStrategy[tuple[int, int, int, bool]]:
    """(family, shared blocks, unique tail blocks, oversize) for a prompt in a pool of U
    blocks; one in ten is larger than the pool."""
    return st.tuples(
        st.integers(0, FAMILIES - 1),
        st.integers(0, max(1, U // 3)),
        st.integers(0, U),
        st.integers(0, 9).map(lambda n: n == 0),
    )


def extra_tokens() -> st.SearchStrategy[int]:
    """Tokens past a prompt's whole blocks, taken modulo B: half the prompts end on a block
    boundary, the rest mid-block."""
    return st.just(0) | st.integers(1, 255)


def junk_tokens() -> st.SearchStrategy[object]:
    """Token lists a runtime must reject whole: empty, not a list, or one bad id after good ones
    (so a runtime that takes tokens before checking them all is caught)."""
    return st.sampled_from([[], "1 2", None, {1: 1}, [[0]], [0, -1], [0, 1.5], [0, True], [0, None], [0, "1"]])


def junk_terms() -> st.SearchStrategy[tuple[str, object]]:
    """One bad claim term, (keyword, value): past each domain's edges, or of the wrong type."""
    return st.sampled_from(
        [
            ("id", ""),
            ("id", 5),
            ("strength", "medium"),
            ("strength", None),
            ("policy", "evict"),
            ("tiers", ("host",)),
            ("tiers", "device"),
            ("tiers", (*TIERS, TIERS[0])),
            ("priority", PRIORITIES.start - 1),
            ("priority", PRIORITIES.stop),
            ("priority", "1"),
            ("priority", True),
            ("ttl", TTLS.start - 1),
            ("ttl", TTLS.stop),
            ("ttl", 2.0),
        ]
    )

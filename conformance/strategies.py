"""Hypothesis strategies for claims and prompts, exported for runtimes' own test suites.

Prompts are drawn from a few token *families* so that prefixes are shared,
claims overlap and requests hit each other's blocks: conflicts are common even
in small pools.
"""

from __future__ import annotations

from hypothesis import strategies as st

from kvclaims.model.names import POLICY

FAMILIES = 3
VOCAB = 500


def family_tokens(family: int, blocks: int, B: int) -> list[int]:
    """The first `blocks` whole blocks of a shared token family."""
    return [(family * 97 + i * 13) % VOCAB for i in range(blocks * B)]


def unique_tokens(serial: int, blocks: int, B: int) -> list[int]:
    """Blocks no other prompt shares (the first token encodes `serial`)."""
    head = [VOCAB + serial]
    return (head + [(serial * 31 + i) % VOCAB for i in range(blocks * B - 1)])[: blocks * B]


def claim_kwargs(host_tier: bool) -> st.SearchStrategy[dict]:
    """Valid keyword arguments of `submit_claim` besides id and prefix.

    Hard claims mostly refuse (the blocking kind); `offload` only with the host tier.
    """
    tiers = st.sampled_from([("device",), ("device", "host")] if host_tier else [("device",)])
    common = {"priority": st.integers(0, 3), "ttl": st.none() | st.integers(1, 6)}
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

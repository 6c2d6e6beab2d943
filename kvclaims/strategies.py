"""Hypothesis strategies for claims and prompts, exported for runtimes' own test suites.

Prompts are drawn from a few token *families* so that prefixes are shared,
claims overlap and requests hit each other's blocks: conflicts are common even
in small pools.
"""
from __future__ import annotations

from hypothesis import strategies as st

FAMILIES = 3
VOCAB = 500


def family_tokens(family: int, blocks: int, B: int) -> list[int]:
    """The first `blocks` whole blocks of a shared token family."""
    return [(family * 97 + i * 13) % VOCAB for i in range(blocks * B)]


def unique_tokens(serial: int, blocks: int, B: int) -> list[int]:
    """Blocks no other prompt shares (the first token encodes `serial`)."""
    head = [VOCAB + serial]
    return (head + [(serial * 31 + i) % VOCAB for i in range(blocks * B - 1)])[:blocks * B]


def claim_kwargs(host_tier: bool) -> st.SearchStrategy[dict]:
    """Keyword arguments of `submit_claim` (besides id and prefix): strength, policy, tiers, ..."""
    def build(strength, policy_pick, priority, ttl, host):
        tiers = ("device", "host") if host and host_tier else ("device",)
        choices = {"hard": ["refuse", "refuse", "refuse", "demote", "offload"],
                   "soft": ["demote", "offload"]}[strength]
        policy = choices[policy_pick % len(choices)]
        if policy == "offload" and "host" not in tiers:
            policy = "demote"
        return {"strength": strength, "policy": policy, "priority": priority,
                "ttl": ttl, "tiers": tiers}
    return st.tuples(st.sampled_from(["hard", "hard", "soft"]), st.integers(0, 5),
                     st.integers(0, 3), st.none() | st.integers(1, 6),
                     st.booleans()).map(lambda args: build(*args))


def prompt_shape(U: int) -> st.SearchStrategy[tuple[int, int, int, bool]]:
    """(family, shared blocks, unique tail blocks, oversize) for a prompt in a pool of U
    blocks; one in ten is larger than the pool."""
    return st.tuples(st.integers(0, FAMILIES - 1), st.integers(0, max(1, U // 3)),
                     st.integers(0, U), st.integers(0, 9).map(lambda n: n == 0))

"""The strategies reach every domain the spec defines, edge to edge, and still draw small
values often: a runtime that mishandles an extreme (a negative priority, the largest TTL,
a one-block pool, a full reserve, a prompt ending mid-block) is exercised, while
priorities still tie and TTLs still run out within a run."""

from __future__ import annotations

import pytest
from hypothesis import Phase, find, given, settings

from kvclaims.model import terms
from hypothesis import strategies as st

from kvclaims.conformance.strategies import MAX_U, claim_kwargs, extra_tokens, pool_shape, prompt_shape

# Each domain kvclaims.model.terms defines -> the claim keyword its values are drawn for.
FIELD = {"STRENGTHS": "strength", "POLICIES": "policy", "TIERS": "tiers", "PRIORITIES": "priority", "TTLS": "ttl"}


def domains() -> dict[str, tuple | range]:
    return {name: v for name, v in vars(terms).items() if name.isupper() and isinstance(v, (tuple, range))}


def values(kwargs: dict, name: str) -> set:
    value = kwargs[FIELD[name]]
    return set(value) if isinstance(value, tuple) else {value}


def reaches(strategy, predicate) -> bool:
    find(strategy, predicate, settings=settings(max_examples=2000, database=None, phases=[Phase.generate]))
    return True


def draws(strategy, n: int = 400) -> list:
    seen: list = []

    @settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate])
    @given(strategy)
    def collect(value) -> None:
        seen.append(value)

    collect()
    return seen


def test_every_domain_has_a_field():
    """A domain added to the spec's terms fails here until the strategies draw it."""
    assert set(domains()) == set(FIELD)


@pytest.mark.parametrize("name", sorted(FIELD))
def test_domain_is_reached_edge_to_edge(name):
    domain = domains()[name]
    wanted = [domain.start, domain.stop - 1] if isinstance(domain, range) else domain
    for v in wanted:
        assert reaches(claim_kwargs(host_tier=True), lambda kw: v in values(kw, name)), (name, v)
    if isinstance(domain, range):  # the interior too, far from both edges and from zero
        far = lambda kw: any(isinstance(x, int) and 2**20 < abs(x) < domain.stop - 2**20 for x in values(kw, name))  # noqa: E731
        assert reaches(claim_kwargs(host_tier=True), far)


def test_small_values_stay_likely():
    drawn = draws(claim_kwargs(host_tier=False))
    priorities = [kw["priority"] for kw in drawn]
    assert sum(-3 <= p <= 3 for p in priorities) > len(drawn) / 4, "priorities must still tie"
    assert sum(p < 0 for p in priorities) > len(drawn) / 8, "negative priorities are drawn"
    assert sum(kw["ttl"] is not None and kw["ttl"] <= 6 for kw in drawn) > len(drawn) / 8, "TTLs must expire"


def shapes():
    """Pool shapes as the machine builds them (the reserve taken as at most U - 1)."""
    return st.fixed_dictionaries(pool_shape()).map(
        lambda s: {"U": s["U"], "B": s["B"], "R": min(s["reserve"], s["U"] - 1), "host_blocks": s["host"]}
    )


@pytest.mark.parametrize(
    "what, predicate",
    [
        ("one-block pool", lambda s: s["U"] == 1),
        ("largest pool", lambda s: s["U"] == MAX_U),
        ("one-token blocks", lambda s: s["B"] == 1),
        ("wide blocks", lambda s: s["B"] > 4),
        ("no reserve", lambda s: s["R"] == 0 and s["U"] > 1),
        ("a full reserve", lambda s: s["R"] == s["U"] - 1 > 0),
        ("no host tier", lambda s: s["host_blocks"] == 0),
        ("a host tier larger than the pool", lambda s: s["host_blocks"] > s["U"]),
    ],
)
def test_pool_shape_is_reached_edge_to_edge(what, predicate):
    assert reaches(shapes(), predicate), what


def test_pool_shapes_are_valid():
    assert all(s["U"] >= 1 and 0 <= s["R"] < s["U"] and s["B"] >= 1 and s["host_blocks"] >= 0 for s in draws(shapes()))


def test_prompts_end_mid_block_and_past_the_pool():
    assert reaches(extra_tokens(), lambda extra: extra % 4 == 3)  # a partial last block, its longest
    assert reaches(prompt_shape(16), lambda shape: shape[3])  # oversize

"""The feasibility predicate: table-driven cases, then properties against brute force."""

from itertools import combinations, product

import pytest
from hypothesis import given, strategies as st

from kvclaims.errors import InvalidInput
from kvclaims.model.feasibility import PoolCounts, accepts, attribute, decide, freed_by, outcome


def counts(free=0, cached=0, yielding=0, active=0, protected=0):
    return PoolCounts(
        U=free + cached + yielding + active + protected,
        free=free,
        cached=cached,
        yielding=yielding,
        active=active,
        protected=protected,
    )


@pytest.mark.obligation("RKC-FEAS-1", "RKC-PROBE-1")
@pytest.mark.parametrize(
    "A,pool,expected",
    [
        (70, counts(free=20, protected=60), "refuse_blocked"),  # the paper's probe
        (20, counts(free=20, protected=60), "admit"),
        (81, counts(free=20, protected=60), "refuse_too_large"),
        (30, counts(free=10, cached=10, yielding=10, protected=50), "admit"),
        (35, counts(free=10, cached=10, active=20, protected=40), "wait"),
        (45, counts(free=10, cached=10, active=20, protected=40), "refuse_blocked"),
        (0, counts(protected=5), "admit"),
    ],
)
def test_table(A, pool, expected):
    """RKC-FEAS-1..4 on hand-picked cases, RKC-PROBE-1 first."""
    assert outcome(A, pool) == expected


@pytest.mark.obligation("RKC-PROBE-1")
def test_probe_attribution():
    """RKC-PROBE-1: the refusal names the one 60-block claim."""
    d = decide(70, counts(free=20, protected=60), {"sys": frozenset(range(60))})
    assert d.outcome == "refuse_blocked" and d.blocking_claims == ("sys",)


def test_bad_counts_and_sizes_rejected():
    with pytest.raises(InvalidInput):
        PoolCounts(U=10, free=5, cached=0, yielding=0, active=0, protected=0)
    with pytest.raises(InvalidInput):
        outcome(-1, counts(free=3))


def brute_force(A, pool: PoolCounts) -> str:
    """Search allocations block class by block class: the definition, not the formula."""
    if A > pool.U:
        return "refuse_too_large"

    def exists(classes):
        ranges = [range(getattr(pool, c) + 1) for c in classes]
        return any(sum(x) == A for x in product(*ranges))

    if exists(("free", "cached", "yielding")):
        return "admit"
    if exists(("free", "cached", "yielding", "active")):
        return "wait"
    return "refuse_blocked"


small = st.integers(0, 4)


@pytest.mark.obligation("RKC-FEAS-2", "RKC-FEAS-3", "RKC-FEAS-4")
@given(st.integers(0, 22), small, small, small, small, small)
def test_outcome_matches_allocator_search(A, free, cached, yielding, active, protected):
    """RKC-FEAS-2, RKC-FEAS-3, RKC-FEAS-4: the spec's conditions equal an explicit search."""
    pool = counts(free, cached, yielding, active, protected)
    assert outcome(A, pool) == brute_force(A, pool)


def brute_attribution(need, blocking):
    """Smallest sufficient subset; then most freed; then smallest sorted ids."""
    ids = sorted(blocking)
    for k in range(1, len(ids) + 1):
        found = [(-freed_by(s, blocking), s) for s in combinations(ids, k) if freed_by(s, blocking) >= need]
        if found:
            return min(found)[1]
    return None


claims = st.dictionaries(
    st.sampled_from("abcdef"), st.frozensets(st.integers(0, 12), min_size=1), min_size=1, max_size=5
)


@pytest.mark.obligation("RKC-FEAS-5", "RKC-FEAS-6")
@given(claims, st.integers(1, 13))
def test_attribution_matches_definition(blocking, need):
    """RKC-FEAS-5 and RKC-FEAS-6 with overlapping claims: sufficient, minimal, deterministic."""
    expected = brute_attribution(need, blocking)
    if expected is None:
        with pytest.raises(InvalidInput):
            attribute(need, blocking)
        return
    got = attribute(need, blocking)
    assert got == expected
    assert freed_by(got, blocking) >= need
    assert attribute(need, dict(reversed(list(blocking.items())))) == got  # order-free


@pytest.mark.obligation("RKC-FEAS-6")
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(1, 30))
def test_disjoint_fast_path_matches_definition(sizes, need):
    """RKC-FEAS-6: the greedy path for disjoint claims gives the defined set."""
    blocking, start = {}, 0
    for i, n in enumerate(sizes):
        blocking[f"c{i}"] = frozenset(range(start, start + n))
        start += n
    if need > start:
        return
    assert attribute(need, blocking) == brute_attribution(need, blocking)


@pytest.mark.obligation("RKC-ACC-1")
@given(st.booleans(), st.integers(0, 20), st.integers(0, 20), st.integers(1, 30), st.integers(0, 29))
def test_acceptance_under_reserve(hard, new, reserved, U, R):
    """RKC-ACC-1: hard claims fit under U - R; soft claims are never refused for the reserve."""
    assert accepts(hard, new, reserved, U, R) == (not hard or reserved + new <= U - R)

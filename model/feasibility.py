"""The feasibility predicate and claim acceptance, evaluated from the spec's expressions.

`decide` is pure: given the pool's class counts and the blocks each blocking
claim protects, it returns the outcome the contract requires and, for a
claim-blocked refusal, the minimal deterministic set of blocking claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Hashable, Mapping

from kvclaims.errors import InconsistentCounts, InvalidInput
from kvclaims.spec import Spec, load
from kvclaims.spec.expr import to_python


@dataclass(frozen=True)
class PoolCounts:
    """Device blocks by class (precedence protected > active > yielding > cached > free)."""

    U: int
    free: int
    cached: int
    yielding: int
    active: int
    protected: int

    def __post_init__(self) -> None:
        parts = (self.free, self.cached, self.yielding, self.active, self.protected)
        if min(parts) < 0 or sum(parts) != self.U:
            raise InconsistentCounts(f"inconsistent pool counts {self}: classes must be >= 0 and sum to U")


@dataclass(frozen=True)
class Decision:
    outcome: str  # one of the spec's outcome names
    blocking_claims: tuple[str, ...] = ()  # only for refuse_blocked

    def __repr__(self) -> str:
        extra = f", blocking_claims={self.blocking_claims!r}" if self.blocking_claims else ""
        return f"Decision({self.outcome!r}{extra})"


@lru_cache(maxsize=4)
def _compiled(spec: Spec):
    outcomes = [(o.name, to_python(o.when)) for o in spec.outcomes]
    within = to_python(spec.pool_guards["within_reserve"])
    return outcomes, within


def outcome(A: int, counts: PoolCounts, spec: Spec | None = None) -> str:
    """The outcome name for a request needing A new blocks (first matching spec outcome)."""
    if A < 0:
        raise InvalidInput(f"a request cannot need a negative number of blocks ({A})")
    env = {"A": A, **counts.__dict__}
    for name, when in _compiled(spec or load())[0]:
        if when(env):
            return name
    raise AssertionError("the spec's outcomes are exhaustive")  # proved: RKC-FEAS-7


def freed_by(subset, blocking: Mapping[str, frozenset]) -> int:
    """Blocks that stop being protected if exactly `subset` of the blocking claims is released."""
    chosen = set(subset)
    released = frozenset().union(*(blocking[c] for c in chosen)) if chosen else frozenset()
    kept = frozenset().union(*(b for c, b in blocking.items() if c not in chosen))
    return len(released - kept)


def attribute(need: int, blocking: Mapping[str, frozenset[Hashable]]) -> tuple[str, ...]:
    """The minimal deterministic set of blocking claims whose release frees `need` blocks.

    Minimum cardinality; ties to the set freeing most blocks, then the smallest
    sorted ids (RKC-FEAS-6). Pairwise-disjoint claims (the common case) take a
    greedy path that yields the same set; overlapping claims are searched
    exactly, smallest sets first.
    """
    if need <= 0:
        return ()
    sizes = {c: len(b) for c, b in blocking.items()}
    if sum(sizes.values()) == len(frozenset().union(*blocking.values())):
        chosen, total = [], 0
        for c in sorted(blocking, key=lambda c: (-sizes[c], c)):
            if total >= need:
                break
            chosen.append(c)
            total += sizes[c]
        if total < need:
            raise InvalidInput(f"releasing every blocking claim frees {total} < {need} blocks")
        return tuple(sorted(chosen))
    ids = sorted(blocking)
    by_size = sorted(sizes.values(), reverse=True)
    for k in range(1, len(ids) + 1):
        if sum(by_size[:k]) < need:
            continue
        best: tuple[int, tuple[str, ...]] | None = None
        for subset in combinations(ids, k):
            freed = freed_by(subset, blocking)
            if freed >= need and (best is None or freed > best[0]):
                best = (freed, subset)
        if best:
            return best[1]
    raise InvalidInput(f"releasing every blocking claim does not free {need} blocks")


def decide(
    A: int, counts: PoolCounts, blocking: Mapping[str, frozenset] | None = None, spec: Spec | None = None
) -> Decision:
    """Outcome plus attribution. `blocking` maps each blocking claim to the blocks it protects."""
    name = outcome(A, counts, spec)
    if name != "refuse_blocked":
        return Decision(name)
    blocking = blocking or {}
    need = A - (counts.U - counts.protected)
    return Decision(name, attribute(need, blocking))


def accepts(hard: bool, new_blocks: int, reserved: int, U: int, R: int, spec: Spec | None = None) -> bool:
    """Claim acceptance under the reserve: the spec's `within_reserve` guard (RKC-ACC-1)."""
    return bool(_compiled(spec or load())[1]({"c_hard": hard, "reserved": reserved, "k": new_blocks, "U": U, "R": R}))

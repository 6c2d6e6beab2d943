"""What a claim's terms mean, once: the vocabulary comes from the spec's [claims] table.

`ClaimRules` is shared by the oracle's `ClaimTerms` and every runtime's claim
record, so "blocking", "host allowed" and the yield order cannot drift apart.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

from kvclaims.spec import load
from kvclaims.model.names import EVENT, POLICY

_SPEC = load()
STRENGTHS: tuple[str, ...] = _SPEC.strengths
POLICIES: tuple[str, ...] = _SPEC.policies
TIERS: tuple[str, ...] = _SPEC.tiers
# What became of a claim a request carries (RKC-RT-8).
PENDING, APPLIED, NOT_APPLIED = _SPEC.claim_outcomes
# A claim's priority, in every runtime: a signed 32-bit int. Lower yields first under
# pressure; bounded so every runtime and trace reader keeps it exactly.
PRIORITIES = range(-(2**31), 2**31)
# A claim's TTL in logical ticks (engine steps): at least one, and 32-bit like a priority.
TTLS = range(1, 2**31)
# States in which a hard claim counts against the reserve: accepted, and protected.
RESERVING = frozenset(_SPEC.lifecycle.dests(EVENT.accept) | set(_SPEC.lifecycle.protected))


class _Held(Protocol):
    @property
    def hard(self) -> bool: ...

    @property
    def state(self) -> str: ...

    @property
    def chain(self) -> Sequence[str]: ...


def reserve_context(chain: Sequence[str], claims: Iterable[_Held]) -> dict[str, int]:
    """The reserve guard's inputs for `chain`: blocks already reserved by live hard claims
    (counted once, however many claims share them) and the chain's blocks beyond those."""
    reserved = {h for c in claims if c.hard and c.state in RESERVING for h in c.chain}
    return {"new_blocks": len(set(chain) - reserved), "reserved": len(reserved)}


class ReserveLedger:
    """`reserve_context` kept incrementally: how many reserving hard claims name each block.

    A runtime reports every claim state change to `moved`; a context then costs
    the chain's length, not a scan over all claims.
    """

    def __init__(self) -> None:
        self.names: dict[str, int] = {}

    def moved(self, c: _Held, before: str | None) -> None:
        was, now = c.hard and before in RESERVING, c.hard and c.state in RESERVING
        if was == now:
            return
        for h in set(c.chain):
            n = self.names.get(h, 0) + (1 if now else -1)
            if n:
                self.names[h] = n
            else:
                del self.names[h]

    def context(self, chain: Sequence[str]) -> dict[str, int]:
        return {"new_blocks": len({h for h in chain if h not in self.names}), "reserved": len(self.names)}


class ClaimRules:
    """Needs attributes `id`, `strength`, `policy`, `priority` and `tiers`."""

    id: str
    strength: str
    policy: str
    priority: int
    tiers: tuple[str, ...]

    @property
    def hard(self) -> bool:
        return self.strength == "hard"

    @property
    def blocking(self) -> bool:
        """A blocking claim's blocks are protected: requests are refused, not served from them."""
        return self.hard and self.policy == POLICY.refuse

    @property
    def host_allowed(self) -> bool:
        return "host" in self.tiers

    def yield_order(self) -> tuple:
        """Non-blocking claims give way soft first, then lower priority, then by id."""
        return (self.hard, self.priority, self.id)

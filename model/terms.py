"""What a claim's terms mean, once: the vocabulary comes from the spec's [claims] table.

`ClaimRules` is shared by the oracle's `ClaimTerms` and every runtime's claim
record, so "blocking", "host allowed" and the yield order cannot drift apart.
"""
from __future__ import annotations

from kvclaims.spec import load

_SPEC = load()
STRENGTHS: tuple[str, ...] = _SPEC.strengths
POLICIES: tuple[str, ...] = _SPEC.policies
TIERS: tuple[str, ...] = _SPEC.tiers


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
        return self.hard and self.policy == "refuse"

    @property
    def host_allowed(self) -> bool:
        return "host" in self.tiers

    def yield_order(self) -> tuple:
        """Non-blocking claims give way soft first, then lower priority, then by id."""
        return (self.hard, self.priority, self.id)

"""Claim and request records of the reference runtime (plain data; the runtime moves them)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kvclaims.model.lifecycle import ClaimFSM

STRENGTHS = ("hard", "soft")
POLICIES = ("refuse", "demote", "offload")   # what a claim-blocked request gets
TIERS = ("device", "host")


@dataclass
class Claim:
    id: str
    chain: list[str]                  # block hashes of the claimed prefix
    strength: str
    priority: int
    deadline: int | None              # logical time at which the TTL runs out
    tiers: tuple[str, ...]
    policy: str
    fsm: ClaimFSM = field(repr=False)
    checksums: dict[str, str] = field(default_factory=dict)  # recorded at materialization

    @property
    def state(self) -> str:
        return self.fsm.state

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
        return (self.strength != "soft", self.priority, self.id)


@dataclass
class Request:
    id: str
    tokens: list[int]
    hashes: list[str]                 # hashes of its full blocks, in order
    status: str = "waiting"           # waiting | running | refused | finished | aborted
    slots: list[int] = field(default_factory=list)
    new_slots: set[int] = field(default_factory=set)   # blocks it computed (freed on no-admit)
    hit_blocks: int = 0
    reason: str | None = None
    blocking_claims: tuple[str, ...] = ()

"""Claim and request records of the reference runtime (plain data; the runtime moves them)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kvclaims.model.lifecycle import ClaimFSM
from kvclaims.model.terms import ClaimRules


@dataclass
class Claim(ClaimRules):
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


@dataclass
class Request:
    id: str
    tokens: list[int]
    hashes: list[str]                 # hashes of its full blocks, in order
    status: str = "waiting"           # waiting | running | refused | finished | aborted
    slots: list[int] = field(default_factory=list)
    new_slots: set[int] = field(default_factory=set)   # blocks it computed (freed on no-admit)
    hit_blocks: int = 0
    epoch: int = 0                    # the invalidation epoch it was admitted in
    weights: int = 0                  # the weights version its KV is computed under
    reason: str | None = None
    blocking_claims: tuple[str, ...] = ()
    claim: dict | None = None         # the claim it carries: applied at admission (RKC-RT-8)
    claim_outcome: str | None = None  # None | pending | applied | not_applied

    def __post_init__(self) -> None:
        if self.claim is not None:
            self.claim_outcome = "pending"

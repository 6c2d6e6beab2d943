"""Request records of the reference runtime (plain data; the runtime moves them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kvclaims.model.terms import PENDING
from kvclaims.model.names import STATUS


@dataclass
class Request:
    id: str
    tokens: list[int]
    hashes: list[str]  # hashes of its full blocks, in order
    status: str = STATUS.waiting  # waiting | running | refused | finished | aborted
    slots: list[int] = field(default_factory=list)
    new_slots: set[int] = field(default_factory=set)  # blocks it computed (freed on no-admit)
    hit_blocks: int = 0
    epoch: int = 0  # the invalidation epoch it was admitted in
    weights: int = 0  # the weights version its KV is computed under
    reason: str | None = None
    blocking_claims: tuple[str, ...] = ()
    claim: Mapping[str, Any] | None = None  # the claim it carries: applied at admission (RKC-RT-8)
    claim_outcome: str | None = None  # None, or one of the spec's claim_outcomes

    def __post_init__(self) -> None:
        if self.claim is not None:
            self.claim_outcome = PENDING

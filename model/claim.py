"""A live claim as a runtime keeps it: its terms, its lifecycle cursor, the checksums
recorded at materialization (plain data; runtimes move it). One record for every
runtime under the protocol (the reference runtime and the vLLM integration)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvclaims.model.lifecycle import ClaimFSM
from kvclaims.model.terms import ClaimRules


@dataclass
class Claim(ClaimRules):
    id: str
    chain: list[str]  # block hashes of the claimed prefix
    strength: str
    priority: int
    deadline: int | None  # logical time at which the TTL runs out
    tiers: tuple[str, ...]
    policy: str
    fsm: ClaimFSM = field(repr=False)
    checksums: dict[str, str] = field(default_factory=dict)  # recorded at materialization

    @property
    def state(self) -> str:
        return self.fsm.state

"""The abstract pool: block-exact, tensor-free, the oracle runtimes are compared with.

It tracks which chain hashes are resident, who holds them (requests, claims),
LRU order of unheld blocks, and each claim's lifecycle (through the shared
machine). Class counts and blocking sets feed `decide`, so the model's
decisions are the contract's decisions by construction.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvclaims.errors import DuplicateId, InvalidInput, UnknownId
from kvclaims.model.feasibility import Decision, PoolCounts, accepts, decide
from kvclaims.model.lifecycle import ClaimFSM, Lifecycle
from kvclaims.spec import Spec, load

POLICIES = ("refuse", "demote", "offload")


@dataclass(frozen=True)
class ClaimTerms:
    """What a claim asks for. `chain` is the prefix as block hashes."""

    claim_id: str
    chain: tuple[str, ...]
    hard: bool = True
    policy: str = "refuse"
    priority: int = 0
    host: bool = False  # allowed tiers include the host

    def __post_init__(self) -> None:
        if not self.claim_id:
            raise InvalidInput("claim_id must be a non-empty string")
        if not self.chain:
            raise InvalidInput(f"claim {self.claim_id!r}: chain must not be empty")
        if self.policy not in POLICIES:
            raise InvalidInput(f"claim {self.claim_id!r}: policy {self.policy!r} not in {POLICIES}")

    @property
    def blocking(self) -> bool:
        return self.hard and self.policy == "refuse"

    @property
    def yield_order(self) -> tuple:
        """Non-blocking claims give way soft first, then lower priority, then id."""
        return (self.hard, self.priority, self.claim_id)


class PoolModel:
    """U device blocks; every operation either applies fully or raises with nothing changed."""

    def __init__(self, U: int, R: int = 0, spec: Spec | None = None) -> None:
        if U < 1 or not 0 <= R < U:
            raise InvalidInput(f"need U >= 1 and 0 <= R < U, got U={U}, R={R}")
        self.U, self.R = U, R
        self.spec = spec or load()
        self.lifecycle = Lifecycle(self.spec)
        self.resident: OrderedDict[str, None] = OrderedDict()  # LRU: oldest first
        self.requests: dict[str, tuple[str, ...]] = {}  # request -> every hash it holds
        self.computed: dict[str, tuple[str, ...]] = {}  # request -> the hashes it computed
        self.claims: dict[str, tuple[ClaimTerms, ClaimFSM]] = {}
        self.events: list[tuple[str, str]] = []  # (claim_id, event), in order

    # --- classification -------------------------------------------------
    def _materialized(self, blocking: bool | None = None):
        for terms, fsm in self.claims.values():
            if fsm.state in self.spec.lifecycle.protected and blocking in (None, terms.blocking):
                yield terms

    def block_class(self, h: str) -> str:
        if h not in self.resident:
            return "absent"
        if any(h in t.chain for t in self._materialized(blocking=True)):
            return "protected"
        if any(h in chain for chain in self.requests.values()):
            return "active"
        if any(h in t.chain for t in self._materialized(blocking=False)):
            return "yielding"
        return "cached"

    def counts(self) -> PoolCounts:
        by = {c: 0 for c in ("cached", "active", "yielding", "protected")}
        for h in self.resident:
            by[self.block_class(h)] += 1
        return PoolCounts(U=self.U, free=self.U - len(self.resident), **by)

    def blocking_sets(self) -> dict[str, frozenset[str]]:
        return {t.claim_id: frozenset(t.chain) for t in self._materialized(blocking=True)}

    def reserved(self) -> set[str]:
        live = ("accepted", *self.spec.lifecycle.protected)
        return {h for t, f in self.claims.values() if t.hard and f.state in live for h in t.chain}

    # --- claims -----------------------------------------------------------
    def _fire(self, claim_id: str, event: str, **ctx) -> None:
        self.claims[claim_id][1].fire(event, **ctx)
        self.events.append((claim_id, event))

    def submit_claim(self, terms: ClaimTerms) -> str:
        if terms.claim_id in self.claims:
            raise DuplicateId(f"claim {terms.claim_id!r} already exists")
        new = len(set(terms.chain) - self.reserved())
        ok = accepts(terms.hard, new, len(self.reserved()), self.U, self.R, self.spec)
        guards = {"within_reserve": lambda **_: ok, "exceeds_reserve": lambda **_: not ok,
                  "chain_resident": lambda **_: all(h in self.resident for h in terms.chain),
                  "host_allowed": lambda **_: terms.host, "checksums_match": lambda **_: True}
        self.claims[terms.claim_id] = (terms, self.lifecycle.claim(terms.claim_id, guards))
        self._fire(terms.claim_id, "accept" if ok else "refuse")
        self._materialize_ready()
        return self.claims[terms.claim_id][1].state

    def claim_event(self, claim_id: str, event: str) -> str:
        """An owner/operator event on a claim (release, expire, demote, harm, ...)."""
        if claim_id not in self.claims:
            raise UnknownId(f"unknown claim {claim_id!r}")
        self._fire(claim_id, event)
        return self.claims[claim_id][1].state

    def _materialize_ready(self) -> None:
        for terms, fsm in self.claims.values():
            if fsm.state == "accepted" and all(h in self.resident for h in terms.chain):
                self._fire(terms.claim_id, "materialize")

    # --- requests ---------------------------------------------------------
    def submit_request(self, request_id: str, chain: tuple[str, ...]) -> Decision:
        """Decide, and on admit take the blocks; other outcomes change nothing."""
        if request_id in self.requests:
            raise DuplicateId(f"request {request_id!r} already exists")
        hits = 0
        while hits < len(chain) and chain[hits] in self.resident:
            hits += 1
        decision = decide(len(chain) - hits, self.counts(), self.blocking_sets(), self.spec)
        if decision.outcome != "admit":
            return decision
        self.requests[request_id] = tuple(chain)  # held first: hits are no longer evictable
        self.computed[request_id] = tuple(chain[hits:])
        self._make_room(len(chain) - hits)
        for h in chain:
            self.resident[h] = None
            self.resident.move_to_end(h)
        for terms in list(self._materialized()):
            if set(terms.chain) <= set(chain[:hits]):
                self._fire(terms.claim_id, "hit")
        self._materialize_ready()
        return decision

    def _make_room(self, need: int) -> None:
        free = self.U - len(self.resident)
        while free < need:
            victim = next((h for h in self.resident if self.block_class(h) == "cached"), None)
            if victim is None:
                terms = min((t for t in self._materialized(blocking=False)), key=lambda t: t.yield_order)
                self._fire(terms.claim_id, "offload" if terms.policy == "offload" and terms.host
                           else "demote")
                continue
            del self.resident[victim]
            free += 1

    def finish_request(self, request_id: str, admit: bool = True) -> None:
        """End a request; with admit=False (write no-admit) the blocks it computed are
        dropped unless something else holds them."""
        if request_id not in self.requests:
            raise UnknownId(f"unknown request {request_id!r}")
        del self.requests[request_id]
        computed = self.computed.pop(request_id)
        if not admit:
            for h in computed:
                if self.block_class(h) == "cached":
                    del self.resident[h]

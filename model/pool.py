"""The abstract pool: the oracle a runtime is compared with, step by step.

Block-exact but tensor-free. It knows what the contract decides: claim
acceptance under the reserve, materialization, each request's feasibility
outcome and attribution, which non-blocking claims yield (and how), hits,
expiry on the logical clock, and which claims an operator action harms or
fails. It knows no runtime: what the contract leaves to one (which cached
blocks its LRU takes, what it does with a block it computes twice) the model
alone settles plainly, by hash order, and `kvclaims.model.adoption` adopts from
the runtime under test, under the profile it declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from kvclaims.errors import DuplicateId, InvalidInput, UnknownId
from kvclaims.model.feasibility import Decision, PoolCounts, accepts, decide
from kvclaims.model.lifecycle import ClaimFSM, Lifecycle
from kvclaims.model.names import EVENT, POLICY, STATUS
from kvclaims.model.terms import (
    APPLIED,
    NOT_APPLIED,
    PENDING,
    POLICIES,
    RESERVING,
    STRENGTHS,
    ClaimRules,
    reserve_context,
)
from kvclaims.spec import Spec, load


@dataclass(frozen=True)
class ClaimTerms(ClaimRules):
    """What a claim asks for. `chain` is the prefix as block hashes."""

    id: str
    chain: tuple[str, ...]
    strength: str = "hard"
    policy: str = POLICY.refuse
    priority: int = 0
    ttl: int | None = None
    tiers: tuple[str, ...] = ("device",)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInput("claim id must be a non-empty string")
        if not self.chain:
            raise InvalidInput(f"claim {self.id!r}: chain must not be empty")
        if self.strength not in STRENGTHS or self.policy not in POLICIES:
            raise InvalidInput(f"claim {self.id!r}: strength in {STRENGTHS}, policy in {POLICIES}")


@dataclass
class ModelClaim:
    terms: ClaimTerms
    fsm: ClaimFSM
    deadline: int | None

    @property
    def state(self) -> str:
        return self.fsm.state

    @property
    def hard(self) -> bool:
        return self.terms.hard

    @property
    def chain(self) -> tuple[str, ...]:
        return self.terms.chain


@dataclass
class ModelRequest:
    chain: tuple[str, ...]  # hashes of its full blocks
    blocks: int = 0  # blocks it needs in all: a partial last block has no hash
    status: str = STATUS.waiting  # waiting | running | refused | finished | aborted
    hits: int = 0
    epoch: int = 0  # the invalidation epoch it was admitted in
    claim: ClaimTerms | None = None  # the claim it carries, applied at admission (RKC-RT-8)
    claim_outcome: str | None = None  # None, or one of the spec's claim_outcomes
    decision: Decision | None = None
    orphaned: set[str] = field(default_factory=set)  # its blocks that are not the indexed copy
    restored: set[str] = field(default_factory=set)  # its blocks a claim's restore filled: not computed
    admitting: bool = False  # while admission makes room and takes its new blocks: it holds only its hits

    @property
    def partial(self) -> int:
        """Its unhashed last block, allocated while it runs. Admission takes it with the request's
        other new blocks, so until they are taken (`admitting`) it is still to come, not held."""
        return self.blocks - len(self.chain) if self.status == STATUS.running and not self.admitting else 0

    @property
    def held(self) -> set[str]:
        """Indexed blocks it holds (orphaned ones are still allocated, but not these hashes)."""
        if self.status != STATUS.running:
            return set()
        return set(self.chain[: self.hits] if self.admitting else self.chain) - self.orphaned


@dataclass
class PoolModel:
    """U device blocks, reserve R, a host tier of `host_blocks`."""

    U: int
    R: int = 0
    host_blocks: int = 0
    spec: Spec = field(default_factory=load)

    def __post_init__(self) -> None:
        if self.U < 1 or not 0 <= self.R < self.U:
            raise InvalidInput(f"need U >= 1 and 0 <= R < U, got U={self.U}, R={self.R}")
        self.lifecycle = Lifecycle(self.spec)
        lc = self.spec.lifecycle  # the state sets the model reads, derived from the spec once
        self._offloaded, self._awaiting = tuple(lc.dests(EVENT.offload)), tuple(lc.sources(EVENT.materialize))
        self._hittable = tuple(lc.sources(EVENT.hit))
        self.time = 0
        self.resident: set[str] = set()
        self.host: set[str] = set()
        self.corrupt_host: set[str] = set()
        self.claims: dict[str, ModelClaim] = {}
        self.requests: dict[str, ModelRequest] = {}
        # What can still change, so a long life's thousands of ended claims and requests
        # cost nothing per step: the claims that have not ended (by id, as `_in` lists them,
        # once sorted: `_by_id`), and the running requests.
        self._live: dict[str, ModelClaim] = {}
        self._by_id: list[ModelClaim] | None = None
        self.running: dict[str, ModelRequest] = {}
        self.waiting: list[str] = []
        self.events: list[tuple[str, str]] = []  # (claim_id, event), in order
        self.epoch = 0  # operator actions of the spec's [invalidation] so far
        # Blocks an operator action unindexed while requests held them: still allocated
        # until their last holder ends. Keyed (action number, hash) -> holding requests.
        self.orphans: dict[tuple[int, str], set[str]] = {}
        self._actions = count()

    # --- what the contract says about blocks ----------------------------------
    def _in(self, *states: str) -> list[ModelClaim]:
        """Live claims in `states`, by id."""
        if self._by_id is None:
            self._by_id = [c for _, c in sorted(self._live.items())]
        return [c for c in self._by_id if c.state in states]

    @property
    def _protected_state(self) -> str:
        return self.spec.lifecycle.protected[0]

    def _running_hashes(self) -> set[str]:
        return {h for r in self.running.values() for h in r.held}

    def counts(self, own: frozenset[str] = frozenset(), private: int = 0) -> PoolCounts:
        """Classes by precedence; `own` (a deciding request's indexed blocks) and its
        `private` unindexed ones are outside its pool."""
        held = self._running_hashes()
        mat = self._in(self._protected_state)
        blocking = {h for c in mat if c.terms.blocking for h in c.terms.chain}
        yielding = {h for c in mat if not c.terms.blocking for h in c.terms.chain}
        n = {"cached": 0, "yielding": 0, "active": 0, "protected": 0}
        for h in self.resident - own:
            n[
                "protected" if h in blocking else "active" if h in held else "yielding" if h in yielding else "cached"
            ] += 1
        unindexed = len(self.orphans) + sum(r.partial for r in self.running.values())
        n["active"] += unindexed - private
        return PoolCounts(U=self.U - len(own) - private, free=self.U - len(self.resident) - unindexed, **n)

    def _private(self, request_id: str) -> int:
        """Unindexed blocks the request holds: orphaned copies and its partial last block."""
        return sum(request_id in holders for holders in self.orphans.values()) + self.requests[request_id].partial

    def blocking_sets(self, own: frozenset[str] = frozenset()) -> dict[str, frozenset[str]]:
        return {
            c.terms.id: frozenset(set(c.terms.chain) & self.resident - own)
            for c in self._in(self._protected_state)
            if c.terms.blocking
        }

    def reserved(self) -> set[str]:
        return {h for c in self._in(*RESERVING) if c.hard for h in c.chain}

    def materialized_chains(self) -> dict[str, tuple[str, ...]]:
        return {c.terms.id: c.terms.chain for c in self._in(self._protected_state)}

    # --- claims --------------------------------------------------------------------
    def _fire(self, c: ModelClaim, event: str) -> None:
        c.fsm.fire(event, unchecked_guards=True)  # the model decided the guard itself
        self.events.append((c.terms.id, event))
        if c.fsm.terminal:  # it can change no more
            del self._live[c.terms.id]
            self._by_id = None

    def _fits_reserve(self, terms: ClaimTerms) -> bool:
        ctx = reserve_context(terms.chain, self._live.values())
        return accepts(terms.hard, ctx["new_blocks"], ctx["reserved"], self.U, self.R, self.spec)

    def submit_claim(self, terms: ClaimTerms) -> str:
        if terms.id in self.claims:
            raise DuplicateId(f"claim {terms.id!r} already exists")
        ok = self._fits_reserve(terms)
        c = ModelClaim(terms, self.lifecycle.claim(terms.id), None if terms.ttl is None else self.time + terms.ttl)
        self.claims[terms.id] = self._live[terms.id] = c
        self._by_id = None
        self._fire(c, EVENT.accept if ok else EVENT.refuse)
        if ok:
            self._materialize_ready()
        return c.state

    def claim(self, claim_id: str) -> ModelClaim:
        if claim_id not in self.claims:
            raise UnknownId(f"no claim {claim_id!r}")
        return self.claims[claim_id]

    def release_claim(self, claim_id: str) -> None:
        c = self.claim(claim_id)
        self._fire(c, EVENT.release)
        self._drop_host(c)

    def demote(self, claim_id: str) -> None:
        self._fire(self.claim(claim_id), EVENT.demote)

    def offload_refusal(self, claim_id: str) -> str | None:
        """Why an owner's offload must be rejected (an error class name), or None."""
        c = self.claim(claim_id)
        if EVENT.offload not in c.fsm.allowed():
            return "IllegalTransition"
        if not c.terms.host_allowed:
            return "GuardRejected"
        return None if self._host_room(c) else "InvalidInput"

    def offload(self, claim_id: str) -> None:
        self._offload(self.claim(claim_id))

    def _offload_fails(self, c: ModelClaim) -> bool:
        """Copies are verified on the way out: a corrupt host copy it would share fails it."""
        return bool(set(c.terms.chain) & self.corrupt_host)

    def _offload(self, c: ModelClaim) -> None:
        """Offload `c`, or fail it closed (`_offload_fails`). Its device blocks leave that no
        running request or other claim holds."""
        if self._offload_fails(c):
            self._fire(c, EVENT.fail)
            self._drop_host(c)
            return
        self._fire(c, EVENT.offload)
        self.host |= set(c.terms.chain)
        held = self._running_hashes()
        for h in sorted(
            self._drops(
                {h for h in c.terms.chain if h in self.resident and h not in held and not self._held_by_other(h, c)}
            )
        ):
            self._unindex(h)

    def restore_refusal(self, claim_id: str) -> str | None:
        """Why an owner's restore must be rejected (no device room, or the reserve), or None."""
        c = self.claim(claim_id)
        if EVENT.restore not in c.fsm.allowed():
            return "IllegalTransition"
        counts = self.counts()
        missing = set(c.terms.chain) - self.resident
        unheld = {
            h
            for h in self.resident - set(c.terms.chain)
            if h not in self._running_hashes() and not self._held_by_other(h, c)
        }
        if len(missing) > counts.free + len(unheld) or not self._fits_reserve(c.terms):
            return "InvalidInput"
        return None

    def restore(self, claim_id: str) -> None:
        """The missing blocks come back from the host (the runtime's LRU makes room), or fail closed."""
        c = self.claim(claim_id)
        missing = set(c.terms.chain) - self.resident
        self._fire(c, EVENT.fail if missing & self.corrupt_host else EVENT.restore)
        if c.state == self._protected_state:
            self.resident |= missing
        self._drop_host(c)

    def _drop_host(self, c: ModelClaim) -> None:
        keep = {h for o in self._in(*self._offloaded) for h in o.terms.chain}
        self.host = {h for h in self.host if h in keep}
        self.corrupt_host &= self.host

    def _materialize_ready(self) -> None:
        for c in self._in(*self._awaiting):
            if set(c.terms.chain) <= self.resident:
                self._fire(c, EVENT.materialize)

    # --- requests ------------------------------------------------------------------
    def submit_request(
        self,
        request_id: str,
        chain: tuple[str, ...],
        blocks: int | None = None,
        claim: ClaimTerms | None = None,
    ) -> Decision:
        """Decide like the contract. `blocks`: all the prompt's blocks (default: its full
        ones, `chain`). `claim`: one on the prompt's full blocks, submitted when the
        request is admitted if its id is still free, else never (RKC-RT-8)."""
        if request_id in self.requests:
            raise DuplicateId(f"request {request_id!r} already exists")
        self.requests[request_id] = ModelRequest(
            tuple(chain),
            len(chain) if blocks is None else blocks,
            claim=claim,
            claim_outcome=None if claim is None else PENDING,
        )
        return self._try_admit(request_id)

    def _hits(self, r: ModelRequest) -> int:
        """How many of the prompt's blocks it reuses: its longest resident prefix."""
        hits = 0
        while hits < len(r.chain) and r.chain[hits] in self.resident:
            hits += 1
        return hits

    def _reused(self, r: ModelRequest, hits: int) -> frozenset[str]:
        """The blocks whose KV the request reuses when it hits `hits`: a claim whose whole
        chain is among them gets a hit."""
        return frozenset(r.chain[:hits])

    def _try_admit(self, request_id: str) -> Decision:
        r = self.requests[request_id]
        hits = self._hits(r)
        own = frozenset(r.chain[:hits])
        d = decide(r.blocks - hits, self.counts(own), self.blocking_sets(own), self.spec)
        r.decision = d
        if d.outcome == "admit":
            if request_id in self.waiting:
                self.waiting.remove(request_id)
            # Its A = blocks - hits new blocks, a partial last one among them, are made room for
            # and taken as the decision counted them: none of them is allocated yet.
            r.status, r.hits, r.admitting, r.epoch = STATUS.running, hits, True, self.epoch
            self.running[request_id] = r
            self._make_room(r.blocks - hits)
            self._take_lru(request_id, r.blocks - hits)
            r.admitting = False
            reused = self._reused(r, hits)  # (after making room: what the room took is not reused)
            self._restore_for(r)
            self._recomputed(request_id, set(r.chain[hits:]) & self.resident)
            self.resident |= set(r.chain)
            for c in self._in(*self._hittable):
                if set(c.terms.chain) <= reused:
                    self._fire(c, EVENT.hit)
            self._materialize_ready()
            if r.claim is not None:
                r.claim_outcome = NOT_APPLIED if r.claim.id in self.claims else APPLIED
                if r.claim_outcome == APPLIED:
                    self.submit_claim(r.claim)
        elif d.outcome == "wait":
            if request_id not in self.waiting:
                self.waiting.append(request_id)
        else:
            if request_id in self.waiting:
                self.waiting.remove(request_id)
            r.status = STATUS.refused
            self._never_applied(r)
        return d

    def _take_lru(self, request_id: str, need: int) -> None:
        """`need` new blocks for the request: free ones first, then cached ones LRU evicts."""
        for _ in range(max(0, need - self.counts().free)):
            self._evict_lru(request_id)

    def _evict_lru(self, request_id: str) -> None:
        """Evict a cached block for the request. Which one the contract leaves to the
        runtime; alone, the model takes the least hash."""
        self.resident.discard(min(self._cached()))

    def _cached(self) -> set[str]:
        """Resident blocks nothing holds: what an LRU may evict."""
        return self.resident - self._running_hashes() - self._claimed()

    def _recomputed(self, request_id: str, hashes: set[str]) -> None:
        """Blocks the request computed anew while their hashes were indexed elsewhere: under
        the contract the new copies stay unindexed, its own."""
        self._orphan_for(request_id, hashes)

    def decode(self, request_id: str, chain: tuple[str, ...], blocks: int) -> Decision:
        """A running request grows by generated tokens to `blocks` blocks whose full ones
        hash to `chain`. Its new blocks are decided like an admission with everything it
        holds as its own; a claim-blocked or too-large growth ends it refused. A request
        admitted before the latest invalidation indexes none of them (RKC-INV-6)."""
        r = self._request(request_id)
        if r.status != STATUS.running:
            raise InvalidInput(f"request {request_id!r} is {r.status}, not running")
        A, own = blocks - r.blocks, frozenset(r.held)
        r.decision = d = decide(A, self.counts(own, self._private(request_id)), self.blocking_sets(own), self.spec)
        if d.outcome == "admit":
            self._make_room(A)
            self._take_lru(request_id, A)
            new = set(chain[len(r.chain) :])
            r.chain, r.blocks = tuple(chain), blocks
            if self.fresh(request_id):
                self._recomputed(request_id, new & self.resident)
                self.resident |= new
            else:
                self._orphan_for(request_id, new)
            self._materialize_ready()
        elif d.outcome != "wait":
            self._end_request(request_id, (STATUS.running,), STATUS.refused)
        return d

    def fresh(self, request_id: str) -> bool:
        """Was the request admitted in the current invalidation epoch?"""
        return self.requests[request_id].epoch == self.epoch

    def _claimed(self) -> set[str]:
        return {h for c in self._in(self._protected_state) for h in c.terms.chain}

    def _make_room(self, need: int) -> None:
        """Non-blocking claims yield, in order, until free + cached blocks cover `need`."""
        while True:
            counts = self.counts()
            if counts.free + counts.cached >= need:
                return
            held = self._running_hashes()
            blocking = {h for c in self._in(self._protected_state) if c.terms.blocking for h in c.terms.chain}
            candidates = [
                c
                for c in self._in(self._protected_state)
                if not c.terms.blocking
                and any(h not in held and h not in blocking and h in self.resident for h in c.terms.chain)
            ]
            if not candidates:
                raise AssertionError("the decision admitted a request the pool cannot hold")
            c = min(candidates, key=lambda c: c.terms.yield_order())
            if c.terms.policy == POLICY.offload and c.terms.host_allowed and self._host_room(c):
                self._offload(c)
            else:
                self._fire(c, EVENT.demote)

    def _held_by_other(self, h: str, c: ModelClaim) -> bool:
        return any(o is not c and h in o.terms.chain for o in self._in(self._protected_state))

    def _host_room(self, c: ModelClaim) -> bool:
        return len(set(c.terms.chain) - self.host) <= self.host_blocks - len(self.host)

    def _restore_for(self, r: ModelRequest) -> None:
        """Offloaded claims that the request's chain extends are restored (or fail closed)."""
        for c in self._in(*self._offloaded):
            n = len(c.terms.chain)
            if n > r.hits and r.chain[:n] == c.terms.chain and self._fits_reserve(c.terms):
                missing = [h for h in c.terms.chain if h not in self.resident]
                self._fire(c, EVENT.fail if set(missing) & self.corrupt_host else EVENT.restore)
                if c.state == self._protected_state:
                    r.restored |= set(missing)
                self._drop_host(c)

    def finish(self, request_id: str, admit: bool = True) -> None:
        """`admit=False` is write no-admit: the indexed blocks it computed leave the table
        unless a running request or a claim holds them (RKC-RT-7)."""
        r = self._request(request_id)
        computed = (
            set(r.chain[r.hits :]) - r.orphaned - r.restored if r.status == STATUS.running and not admit else set()
        )
        self._end_request(request_id, (STATUS.running,), STATUS.finished)
        for h in sorted(self._drops(computed - self._running_hashes() - self._claimed())):
            self._unindex(h)

    def _drops(self, hashes: set[str]) -> set[str]:
        """Of blocks nothing holds any more that leave the table (those a no-admit request
        computed, an offloaded claim's), those that go: all of them."""
        return hashes

    def _unindex(self, h: str) -> None:
        """The indexed copy of `h` leaves the table (write no-admit, an offload)."""
        self.resident.discard(h)

    def abort(self, request_id: str) -> None:
        r = self._request(request_id)
        if r.status == STATUS.waiting:
            self.waiting.remove(request_id)
        self._end_request(request_id, (STATUS.waiting, STATUS.running), STATUS.aborted)
        self._never_applied(r)

    @staticmethod
    def _never_applied(r: ModelRequest) -> None:
        """A request that ends before admission applies no claim operation (RKC-RT-8)."""
        if r.claim_outcome == PENDING:
            r.claim_outcome = NOT_APPLIED

    def _request(self, request_id: str) -> ModelRequest:
        if request_id not in self.requests:
            raise UnknownId(f"no request {request_id!r}")
        return self.requests[request_id]

    def _end_request(self, request_id: str, allowed: tuple[str, ...], status: str) -> None:
        r = self._request(request_id)
        if r.status not in allowed:
            raise InvalidInput(f"request {request_id!r} is {r.status}")
        r.status = status
        self.running.pop(request_id, None)
        r.orphaned.clear()
        self._let_go(request_id)

    def _let_go(self, request_id: str, hashes: set[str] | None = None) -> None:
        """The request no longer holds its orphaned copies (of `hashes`; default all)."""
        for key in [
            k for k, holders in self.orphans.items() if request_id in holders and (hashes is None or k[1] in hashes)
        ]:
            self.orphans[key].discard(request_id)
            if not self.orphans[key]:
                del self.orphans[key]

    def step(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.time += 1
            for c in self._in(*self.spec.lifecycle.live):
                if c.deadline is not None and c.deadline <= self.time and EVENT.expire in c.fsm.allowed():
                    self._fire(c, EVENT.expire)
                    self._drop_host(c)
            for rid in list(self.waiting):
                self._try_admit(rid)

    # --- operator actions ---------------------------------------------------------
    def reset_prefix_cache(self) -> None:
        self.epoch += 1
        for c in self._in(self._protected_state, *self._offloaded):
            self._fire(c, EVENT.harm)
            self._drop_host(c)
        self._orphan(set(self.resident))

    def evict_blocks(self, hashes: set[str]) -> None:
        self.epoch += 1
        self._end_holders(hashes, EVENT.harm)
        self._orphan(hashes)

    def inject_device_fault(self, h: str) -> None:
        self.epoch += 1
        self._end_holders({h}, EVENT.fail)
        self._orphan({h})

    def inject_host_fault(self, h: str) -> None:
        self.corrupt_host.add(h)

    def _end_holders(self, hashes: set[str], event: str) -> None:
        for c in self._in(self._protected_state):
            if hashes & set(c.terms.chain):
                self._fire(c, event)
                self._drop_host(c)

    def _orphan(self, hashes: set[str]) -> None:
        """Dropped blocks that running requests still hold stay allocated, unindexed."""
        action = next(self._actions)
        for rid, r in self.running.items():
            for h in hashes & r.held:
                self.orphans.setdefault((action, h), set()).add(rid)
                r.orphaned.add(h)
        self.resident -= hashes

    def _orphan_for(self, request_id: str, hashes: set[str]) -> None:
        """Blocks the request computed but could not index: its own, unindexed copies."""
        action = next(self._actions)
        for h in hashes:
            self.orphans[(action, h)] = {request_id}
        self.requests[request_id].orphaned |= hashes

    # --- a block table against the claims ------------------------------------------
    def missing_claimed(self, resident: set[str]) -> dict[str, list[str]]:
        """Blocks of materialized claims absent from `resident`: silent losses."""
        return {
            cid: [h for h in chain if h not in resident]
            for cid, chain in self.materialized_chains().items()
            if not set(chain) <= resident
        }

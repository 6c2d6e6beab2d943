"""The claim book: one runtime's live claims, moved only through the spec's lifecycle.

Every runtime under the protocol keeps its claims here (the reference runtime, the
vLLM integration, and any adapter after them), so the rules a claim obeys are written
once: the registry and its ownership (RKC-SEC-1), lifecycle firing with the trace
record and an observer hook (metrics), acceptance against the reserve (RKC-ACC-1)
and a tenant's quota (RKC-SEC-2) kept incrementally, the chain-tail index for hits,
the materialize / expire / harm sweeps, and yielding under pressure in the contract's
order with offload-or-demote. A loss event is always emitted before the blocks it
frees are let go (RKC-RT-1, RKC-RT-5).

The book knows no runtime. What it needs of one is its `Side`: whether a claim's
chain is resident on the device and, if so, which blocks, and how to pin and unpin
them; and, for a runtime with a host tier, its `HostSide`. Every sweep visits claims
by id, so two runtimes given the same inputs write the same claim records.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from kvclaims.errors import BadArgument, IllegalTransition, NoRoom, NotOwner, UnknownId
from kvclaims.model.checks import check_id
from kvclaims.model.claim import Claim
from kvclaims.model.feasibility import accepts
from kvclaims.model.lifecycle import Lifecycle
from kvclaims.model.terms import ReserveLedger
from kvclaims.spec import Spec
from kvclaims.trace import TraceWriter
from kvclaims.model.names import EVENT, POLICY

ANONYMOUS = "anonymous"  # the tenant of a single-tenant runtime, and of a caller with no credentials


class Side(Protocol):
    """The device side of a runtime, as the book uses it. Blocks are the runtime's own
    handles (slot numbers, vLLM's `KVCacheBlock`s); the book only passes them back."""

    def resident(self, c: Claim, key: Any) -> Sequence[Any] | None:
        """The device blocks of `c`'s whole chain (`key`: the chain in the runtime's own
        form, as given to `submit`), or None when one is not resident."""

    def hold(self, c: Claim, blocks: Sequence[Any]) -> None:
        """Pin `blocks` for `c`: LRU eviction may no longer take them."""

    def unhold(self, c: Claim, blocks: Sequence[Any]) -> None:
        """Unpin what `hold` pinned."""

    def block_id(self, block: Any) -> Hashable:
        """A block's identity in the runtime's pool."""


class HostSide(Protocol):
    """A runtime's host tier, as the book uses it. Copies are verified against the
    checksums recorded when the claim materialized (fail-closed, RKC-INV-4)."""

    def digests(self, blocks: Sequence[Any]) -> list[str]:
        """Checksums of device `blocks`' KV, recorded at materialization."""

    def room(self, c: Claim) -> bool:
        """Can the host tier take `c`'s blocks now?"""

    def copy_out(self, c: Claim, blocks: Sequence[Any]) -> dict[str, str]:
        """Copy `c`'s device `blocks` to the host; returns the copies' checksums by block
        hash. Raises NoRoom (nothing changed) when the copy cannot be made."""

    def offloaded(self, c: Claim) -> None:
        """`c` is offloaded and unpinned: its device copies may go."""

    def drop(self, c: Claim, reason: str) -> None:
        """`c` gives up its host copies (the tier traces those that leave)."""


class Observer(Protocol):
    """Told of every claim that enters the book and every move (e.g. metrics)."""

    def added(self, state: str) -> None: ...

    def event(self, event: str, reason: str | None, before: str, after: str) -> None: ...


@dataclass(frozen=True)
class Quota:
    """Per-tenant caps on hard-claimed blocks (the distinct blocks of a tenant's live hard
    claims), so that no tenant can pin the pool and starve the others. None: no cap."""

    default: int | None = None
    tenants: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, where: str = "kvclaims.quota") -> "Quota":
        """``{"default": N, "tenants": {tenant: N}}``; raises BadArgument naming the bad part."""
        shape = '{"default": N, "tenants": {"<tenant>": N}}'
        if (
            not isinstance(value, dict)
            or set(value) - {"default", "tenants"}
            or not isinstance(value.get("tenants", {}), dict)
        ):
            raise BadArgument(where, f"expected {shape}, got {value!r}")
        default, tenants = value.get("default"), value.get("tenants", {})
        caps = {f"tenants.{t}": n for t, n in tenants.items()}
        if default is not None:
            caps["default"] = default
        for part, n in caps.items():
            if type(n) is not int or n < 0:
                raise BadArgument(f"{where}.{part}", f"expected a block count >= 0, got {n!r}")
        return cls(default, dict(tenants))

    def limit(self, tenant: str) -> int | None:
        return self.tenants.get(tenant, self.default)


@dataclass
class Entry:
    """A claim's runtime side: its owner, its chain in the runtime's form, the blocks it
    holds (once materialized) and why it was refused (if it was)."""

    tenant: str
    key: Any
    blocks: Sequence[Any] = ()
    refusal: str | None = None


class ClaimBook:
    """The claims of one runtime over a device pool of `U` blocks with reserve `R`.

    With `enforce` off the book only observes: claims are recorded and traced but hold
    nothing (a stock runtime with a witness, so the trace shows what stock eviction does
    to a claim).
    """

    def __init__(
        self,
        spec: Spec,
        trace: TraceWriter,
        side: Side,
        *,
        U: int,
        R: int = 0,
        host: HostSide | None = None,
        enforce: bool = True,
        quota: Quota = Quota(),
        observer: Observer | None = None,
    ) -> None:
        assert 0 <= R < U, f"the runtime validates its reserve: R={R}, U={U}"
        self.spec, self.trace, self.side, self.host = spec, trace, side, host
        self.U, self.R, self.enforce, self.quota, self.observer = U, R, enforce, quota, observer
        self.lifecycle = Lifecycle(spec)
        lc = spec.lifecycle
        self.protected = lc.protected
        self._awaiting, self._expirable = lc.sources(EVENT.materialize), lc.sources(EVENT.expire)
        self.claims: dict[str, Claim] = {}
        self.entries: dict[str, Entry] = {}
        self.holders: dict[Hashable, set[str]] = {}  # block id -> claims holding it
        # Indexes kept by `fire`, so no operation scans every claim: live claims by state,
        # and by the last hash of their chain (a chain is named by its tail).
        self._by_state: dict[str, set[str]] = {st: set() for st in lc.states}
        self.live = 0  # claims in a non-terminal state: every sweep is free while it is 0
        self._deadlines: dict[str, int] = {}  # live claims with a TTL -> logical expiry time
        self._expiry: list[tuple[int, str]] = []  # heap of (expiry, claim); ended claims' entries go when due
        self._by_tail: dict[str, set[str]] = {}
        self.ledger = ReserveLedger()
        self._tenant_ledgers: dict[str, ReserveLedger] = {}

    # ------------------------------------------------------------------ queries
    def get(self, claim_id: str) -> Claim:
        check_id(claim_id, "claim")
        if claim_id not in self.claims:
            raise UnknownId(f"no claim {claim_id!r}")
        return self.claims[claim_id]

    def in_states(self, *states: str) -> list[Claim]:
        """Live claims in `states`, by id (the order every sweep over claims uses). A claim is
        in one state, so the per-state sets are disjoint. Runs several times per scheduler
        step: with no live claim it returns at once."""
        if not self.live:
            return []
        ids = [c for st in states for c in self._by_state[st]]
        ids.sort()
        return [self.claims[c] for c in ids]

    def blocking_ids(self) -> set[str]:
        return {c for st in self.protected for c in self._by_state[st] if self.claims[c].blocking}

    def holding(self) -> bool:
        """Does any claim hold blocks? (Without, the runtime is unconstrained by claims.)"""
        return bool(self.holders)

    def check_event(self, claim_id: str, event: str, tenant: str = ANONYMOUS) -> Claim:
        """The claim, if `tenant` owns it and `event` is legal in its state (RKC-SEC-1).
        Raises UnknownId, NotOwner or IllegalTransition; changes nothing."""
        c = self.get(claim_id)
        if self.entries[claim_id].tenant != tenant:
            raise NotOwner(f"claim {claim_id!r} belongs to another tenant; only its owner may {event} it")
        if event not in c.fsm.allowed():
            raise IllegalTransition(claim_id, c.state, event, c.fsm.allowed())
        return c

    # ------------------------------------------------------------------ submission
    def submit(
        self,
        claim_id: str,
        chain: list[str],
        key: Any,
        *,
        strength: str,
        priority: int,
        ttl: int | None,
        tiers: tuple[str, ...],
        policy: str,
        tenant: str = ANONYMOUS,
        record: Mapping[str, Any] | None = None,
    ) -> str:
        """Register a validated claim on `chain` (block hashes; `key`, the same chain in the
        runtime's form), accept or refuse it, and materialize it at once if it is resident;
        returns its state. `record`: more fields for its claim_submit record."""
        deadline = None if ttl is None else self.trace.time + ttl
        c = Claim(claim_id, chain, strength, priority, deadline, tiers, policy, fsm=self.lifecycle.claim(claim_id))
        c.fsm.guards = self._guards(c)
        self.claims[claim_id], self.entries[claim_id] = c, Entry(tenant, key)
        self._by_state[c.state].add(claim_id)
        self.live += 1
        if deadline is not None:
            self._deadlines[claim_id] = deadline
            heapq.heappush(self._expiry, (deadline, claim_id))
        self._by_tail.setdefault(chain[-1], set()).add(claim_id)
        if self.observer:
            self.observer.added(c.state)
        self.trace.emit(
            "claim_submit",
            claim=claim_id,
            blocks=chain,
            strength=strength,
            priority=priority,
            ttl=ttl,
            tiers=list(tiers),
            policy=policy,
            **(record or {}),
        )
        reason = self.refusal(c)  # decided once; the lifecycle's guards read the verdict
        if reason is None:
            self.fire(c, EVENT.accept, {"fits": True})
            self.materialize_ready()
        else:
            self.entries[claim_id].refusal = reason
            self.fire(c, EVENT.refuse, {"fits": False}, reason=reason)
        return c.state

    def refusal(self, c: Claim) -> str | None:
        """Why `c` is refused at submission: the reserve (RKC-ACC-1), its tenant's quota
        (RKC-SEC-2), or None. A quota is a tenant's own reserve; it only ever refuses
        more, so the proved pool invariants still hold."""
        if not self.within_reserve(c, **self.ledger.context(c.chain)):
            return "reserve"
        tenant = self.entries[c.id].tenant
        limit = self.quota.limit(tenant)
        if c.hard and limit is not None:
            ctx = self._tenant_ledger(tenant).context(c.chain)
            if ctx["reserved"] + ctx["new_blocks"] > limit:
                return "quota"
        return None

    def within_reserve(self, c: Claim, new_blocks: int, reserved: int) -> bool:
        """The spec's acceptance rule (RKC-ACC-1); one place, so tests can seed a broken one."""
        return accepts(c.hard, new_blocks, reserved, self.U, self.R, self.spec)

    def restore_fits(self, c: Claim) -> bool:
        """May offloaded `c` come back without exceeding the reserve?"""
        return self.within_reserve(c, **self.ledger.context(c.chain))

    def _tenant_ledger(self, tenant: str) -> ReserveLedger:
        return self._tenant_ledgers.setdefault(tenant, ReserveLedger())

    def _guards(self, c: Claim) -> dict[str, Callable[..., bool]]:
        return {
            "within_reserve": lambda fits, **_: fits,
            "exceeds_reserve": lambda fits, **_: not fits,
            "chain_resident": lambda **_: self.side.resident(c, self.entries[c.id].key) is not None,
            "host_allowed": lambda **_: c.host_allowed,
            "checksums_match": lambda arrived, **_: self.matches(arrived, c),
        }

    def matches(self, arrived: dict[str, str], c: Claim) -> bool:
        """Checksums of copied blocks equal those recorded at materialization (fail-closed)."""
        return arrived == c.checksums

    # ------------------------------------------------------------------ moves
    def fire(self, c: Claim, event: str, ctx: dict | None = None, **fields: Any) -> None:
        """Move `c` by `event` (raises IllegalTransition or GuardRejected, nothing changed),
        keep the indexes, and write the claim record."""
        before = c.state
        state = c.fsm.fire(event, **(ctx or {}))
        if state != before:  # (a hit stays: no index changes)
            self._by_state[before].discard(c.id)
            if c.fsm.terminal:
                self._by_tail[c.chain[-1]].discard(c.id)
                self.live -= 1
                self._deadlines.pop(c.id, None)
                assert self.live >= 0, "more claims ended than were added"
            else:
                self._by_state[state].add(c.id)
            self.ledger.moved(c, before)
            self._tenant_ledger(self.entries[c.id].tenant).moved(c, before)
        self.trace.emit("claim", claim=c.id, event=event, state=state, **fields)
        if self.observer:
            self.observer.event(event, fields.get("reason"), before, state)

    def end(self, c: Claim, event: str, **fields: Any) -> None:
        """A loss event (release, expire, harm, fail): emitted first, then the blocks go."""
        self.fire(c, event, **fields)
        self.unhold(c)
        if self.host:
            self.host.drop(c, reason=event)

    def demote(self, c: Claim, **fields: Any) -> None:
        self.fire(c, EVENT.demote, **fields)
        self.unhold(c)

    def end_all(self, ids: Iterable[str], event: str, reason: str) -> None:
        """End each of the claims `ids` (by id) with `event`."""
        for cid in sorted(set(ids)):
            self.end(self.claims[cid], event, reason=reason)

    def end_holders(self, block_ids: Iterable[Hashable], event: str, reason: str) -> None:
        """End every claim holding one of `block_ids` (a block declared invalid)."""
        self.end_all({c for b in block_ids for c in self.holders.get(b, ())}, event, reason)

    def materialize_ready(self) -> None:
        """Claims awaiting their chain whose chain is now resident materialize and hold it."""
        for c in self.in_states(*self._awaiting):
            blocks = self.side.resident(c, self.entries[c.id].key)
            if blocks is not None:
                self.fire(c, EVENT.materialize, blocks=c.chain)
                if self.host:
                    c.checksums = dict(zip(c.chain, self.host.digests(blocks)))
                self.hold(c, blocks)

    def hits(self, hit_hashes: Sequence[str], request: str) -> None:
        """Each claim whose whole chain `request` reused gets a hit, found by chain tail among
        the request's own hashes: the work is the request's, whatever the number of claims."""
        if not self.live:
            return
        tails = self._by_tail
        found = sorted({cid for h in hit_hashes if h in tails for cid in tails[h]})
        if not found:
            return
        hit = set(hit_hashes)
        for cid in found:
            c = self.claims[cid]
            if EVENT.hit in c.fsm.allowed() and set(c.chain) <= hit:
                self.fire(c, EVENT.hit, request=request)

    def expire(self, now: int) -> None:
        """Claims whose TTL has run out by logical time `now` expire (by id). It runs each
        scheduler step, so it reads the top of a heap of deadlines, not every claim; a
        claim due in a state that cannot expire stays due."""
        heap, due = self._expiry, []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._deadlines.get(entry[1]) == entry[0]:
                due.append(entry)
        for deadline, cid in sorted(due, key=lambda e: e[1]):
            c = self.claims[cid]
            if c.state in self._expirable:
                self.end(c, EVENT.expire, reason="ttl")
            else:
                heapq.heappush(heap, (deadline, cid))

    # ------------------------------------------------------------------ yielding
    def yielding(self, frees: Callable[[Claim, Sequence[Any]], bool]) -> Iterator[Claim]:
        """Non-blocking protected claims in yield order (soft first, then lower priority,
        then id) for which `frees(claim, blocks)`: giving way would free a block (the
        runtime judges; a claim whose every block a request or a blocking claim also
        holds frees nothing and is passed over)."""
        live = [c for c in self.in_states(*self.protected) if not c.blocking]
        for c in sorted(live, key=Claim.yield_order):
            if c.state in self.protected and frees(c, self.entries[c.id].blocks):
                yield c

    def give_way(self, c: Claim, reason: str = "pressure") -> None:
        """Under pressure `c` yields its device blocks: offloaded when its policy and the
        host tier allow (demoted if the copy fails), else demoted; its event comes first."""
        if c.policy == POLICY.offload and c.host_allowed and self.host and self.host.room(c):
            try:
                self.offload(c, reason=reason)
            except NoRoom:  # the host copy failed: demote instead, as with no room
                self.demote(c, reason="offload_error")
        else:
            self.demote(c, reason=reason)
        # Paired with the pick: a claim that yielded has left the protected state, so a
        # caller's loop progresses (a runtime whose yield kept the claim would spin forever).
        assert c.state not in self.protected, f"claim {c.id} yielded but is still {c.state}"

    def offload(self, c: Claim, **fields: Any) -> None:
        """Copy out, verify against the materialization checksums, emit, then free the device
        blocks. A copy that cannot be made raises NoRoom with the claim unchanged (its
        device KV is intact); one that arrives different fails the claim closed."""
        assert self.host is not None, "offload needs a host tier"
        arrived = self.host.copy_out(c, self.entries[c.id].blocks)
        if not self.matches(arrived, c):
            self.end(c, EVENT.fail, reason="offload_mismatch")
            return
        self.trace.emit("block_offload", claim=c.id, blocks=c.chain, tier="host")
        self.fire(c, EVENT.offload, **fields)
        self.unhold(c)
        self.host.offloaded(c)

    # ------------------------------------------------------------------ holds
    def hold(self, c: Claim, blocks: Sequence[Any]) -> None:
        """`c` holds its resident chain `blocks` (nothing, with `enforce` off)."""
        if not self.enforce:
            return
        self.side.hold(c, blocks)
        self.entries[c.id].blocks = list(blocks)
        for b in blocks:
            self.holders.setdefault(self.side.block_id(b), set()).add(c.id)

    def unhold(self, c: Claim) -> None:
        entry = self.entries[c.id]
        blocks, entry.blocks = entry.blocks, ()
        for b in blocks:
            key = self.side.block_id(b)
            self.holders[key].discard(c.id)
            if not self.holders[key]:
                del self.holders[key]
        if blocks:
            self.side.unhold(c, blocks)

    def check_valid(self) -> None:
        """Walk every index against the claims it is derived from (Hypothesis's
        `internal/cache.py` does the same for its heap); raises AssertionError naming the
        index that drifted. A scan of everything, for tests: the hot path keeps paired
        assertions only."""
        live = {cid for cid, c in self.claims.items() if not c.fsm.terminal}
        assert self.live == len(live), f"live count {self.live} != {len(live)} claims in a non-terminal state"
        for state, ids in self._by_state.items():
            wrong = {cid: self.claims[cid].state for cid in ids if self.claims[cid].state != state}
            assert not wrong, f"state index has {wrong} under {state}"
        assert sum(map(len, self._by_state.values())) == len(live), "a live claim is missing from the state index"
        for tail, ids in self._by_tail.items():
            assert all(self.claims[cid].chain[-1] == tail for cid in ids), f"tail index: {tail} names another chain"
        assert all(cid in self._by_tail.get(self.claims[cid].chain[-1], ()) for cid in live), "tail index lost a claim"
        due = {cid: self.claims[cid].deadline for cid in live if self.claims[cid].deadline is not None}
        assert self._deadlines == due, f"deadline index {self._deadlines} != live claims' deadlines {due}"
        assert set(due.items()) <= {(cid, t) for t, cid in self._expiry}, "the expiry heap lost a deadline"
        held: dict[Hashable, set[str]] = {}
        for cid, entry in self.entries.items():
            for b in entry.blocks:
                held.setdefault(self.side.block_id(b), set()).add(cid)
        assert self.holders == held, f"holders {self.holders} != the blocks entries hold {held}"
        unprotected = {cid for ids in held.values() for cid in ids if self.claims[cid].state not in self.protected}
        assert not unprotected, f"claims {unprotected} hold blocks in an unprotected state"
        total, per_tenant = ReserveLedger(), {tenant: ReserveLedger() for tenant in self._tenant_ledgers}
        for cid in live:  # an ended claim reserves nothing
            c = self.claims[cid]
            total.moved(c, None)
            per_tenant.setdefault(self.entries[cid].tenant, ReserveLedger()).moved(c, None)
        assert self.ledger.names == total.names, "the reserve ledger drifted from the claims"
        for tenant, ledger in self._tenant_ledgers.items():
            assert ledger.names == per_tenant[tenant].names, f"tenant {tenant!r}'s reserve ledger drifted"

    def close(self) -> None:
        """Let go of every hold, with no event: the book and its trace are being discarded."""
        for c in self.claims.values():
            self.unhold(c)

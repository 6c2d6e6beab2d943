"""The claims of one vLLM engine: lifecycle, reserve, holding, trace and metrics.

Every move of a claim goes through the spec's lifecycle machine and is one
trace record, written before any block it frees can be reused. Blocks are held
in vLLM's own pool (see `pool.PoolView`). With ``enforce`` off the book only
observes: claims are recorded and traced but hold nothing, which is stock vLLM
with a witness, so the trace shows what stock eviction does to a claim.

Each claim belongs to the tenant that made it: only that tenant may release it
(RKC-SEC-1), and a tenant's live hard claims stay within its quota (RKC-SEC-2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kvclaims.errors import BadArgument, DuplicateId, IllegalTransition, InvalidField, InvalidInput, NotOwner, UnknownId
from kvclaims.model.feasibility import accepts
from kvclaims.model.lifecycle import Lifecycle
from kvclaims.model.terms import RESERVING, reserve_context
from kvclaims.model.claim import Claim
from kvclaims.trace import TraceWriter
from kvclaims.spec import load
from kvclaims.vllm.metrics import ClaimMetrics
from kvclaims.vllm.pool import PoolView, hexid
from kvclaims.vllm.xargs import ANONYMOUS, ClaimOp


@dataclass
class Held:
    """A claim's vLLM side: its owner, its raw chain, the blocks it holds (once
    materialized) and why it was refused (if it was)."""

    tenant: str
    chain: list[bytes]
    blocks: list = field(default_factory=list)
    refusal: str | None = None


@dataclass(frozen=True)
class Quota:
    """Per-tenant caps on hard-claimed blocks (the distinct blocks of a tenant's live hard
    claims), so that no tenant can pin the pool and starve the others. None: no cap."""

    default: int | None = None
    tenants: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> "Quota":
        """``additional_config["kvclaims"]["quota"]``: ``{"default": N, "tenants": {tenant: N}}``."""
        shape = '{"default": N, "tenants": {"<tenant>": N}}'
        if (
            not isinstance(value, dict)
            or set(value) - {"default", "tenants"}
            or not isinstance(value.get("tenants", {}), dict)
        ):
            raise BadArgument("kvclaims.quota", f"expected {shape}, got {value!r}")
        default, tenants = value.get("default"), value.get("tenants", {})
        caps = {f"tenants.{t}": n for t, n in tenants.items()}
        if default is not None:
            caps["default"] = default
        for where, n in caps.items():
            if type(n) is not int or n < 0:
                raise BadArgument(f"kvclaims.quota.{where}", f"expected a block count >= 0, got {n!r}")
        return cls(default, dict(tenants))

    def limit(self, tenant: str) -> int | None:
        return self.tenants.get(tenant, self.default)


class ClaimBook:
    def __init__(
        self, pool: PoolView, trace: TraceWriter, *, reserve: int = 0, enforce: bool = True, quota: Quota = Quota()
    ) -> None:
        if not 0 <= reserve < pool.U:
            raise InvalidInput(f"kvclaims reserve must satisfy 0 <= R < U={pool.U}, got {reserve}")
        self.spec = load()
        self.lifecycle = Lifecycle(self.spec)
        self.pool, self.trace, self.R, self.enforce, self.quota = pool, trace, reserve, enforce, quota
        self.claims: dict[str, Claim] = {}
        self.held: dict[str, Held] = {}
        self.holders: dict[int, set[str]] = {}  # block id -> claims holding it
        self.metrics = ClaimMetrics(self.spec)

    # --- queries ------------------------------------------------------------
    def get(self, claim_id: str) -> Claim:
        if claim_id not in self.claims:
            raise UnknownId(f"no claim {claim_id!r}")
        return self.claims[claim_id]

    def materialized(self, blocking: bool | None = None) -> list[Claim]:
        return [
            c
            for c in sorted(self.claims.values(), key=lambda c: c.id)
            if c.state in self.spec.lifecycle.protected and blocking in (None, c.blocking)
        ]

    def blocking_ids(self) -> set[str]:
        return {c.id for c in self.materialized(blocking=True)}

    def holding(self) -> bool:
        """Does any claim hold blocks? (Without, the engine is stock vLLM.)"""
        return bool(self.holders)

    # --- checks (raise, change nothing) -------------------------------------
    def check_new(self, op: ClaimOp, full_blocks: int, prefix: int | None = None) -> None:
        """Can `op` be submitted? A request's claim (`prefix` None) is on the first `op.blocks`
        (default all) of its prompt's `full_blocks`: a trailing partial block is simply not
        claimed. A claim made in process names its prefix, `prefix` tokens, which must be
        whole blocks, as for every runtime (RKC-RT-4). Either way at most U blocks: a longer
        chain could never be resident."""
        if op.claim_id in self.claims:
            raise DuplicateId(f"claim {op.claim_id!r} already exists")
        where, B = f"claim {op.claim_id!r}", self.pool.B
        if prefix is not None and (prefix < 1 or prefix % B):
            raise InvalidField(where, "prefix", f"must be whole blocks of {B} tokens, got {prefix} tokens")
        if full_blocks < 1 or (op.blocks or 0) > full_blocks:
            raise InvalidInput(
                f"{where}: the prompt has {full_blocks} full blocks of {B} tokens; cannot claim {op.blocks or 'them'}"
            )
        if (op.blocks or full_blocks) > self.pool.U:
            raise InvalidField(
                where,
                "prefix",
                f"has {op.blocks or full_blocks} blocks, more than the "
                f"pool's {self.pool.U}: it could never be resident",
            )

    def check_event(self, claim_id: str, event: str, tenant: str = ANONYMOUS) -> Claim:
        """The claim, if `tenant` owns it and `event` is legal in its state (RKC-SEC-1)."""
        c = self.get(claim_id)
        if self.held[claim_id].tenant != tenant:
            raise NotOwner(f"claim {claim_id!r} belongs to another tenant; only its owner may {event} it")
        if event not in c.fsm.allowed():
            raise IllegalTransition(claim_id, c.state, event, c.fsm.allowed())
        return c

    # --- moves --------------------------------------------------------------
    def submit(
        self, op: ClaimOp, chain: list[bytes], *, time: int, request: str | None = None, tenant: str = ANONYMOUS
    ) -> str:
        """Accept or refuse (reserve, then quota); materialize at once if already resident."""
        chain = chain[: op.blocks] if op.blocks else chain
        hexes = [hexid(h) for h in chain]
        c = Claim(
            op.claim_id,
            hexes,
            op.strength,
            op.priority,
            None if op.ttl is None else time + op.ttl,
            ("device",),
            op.policy,
            fsm=None,
        )
        c.fsm = self.lifecycle.claim(c.id, self._guards(c))
        self.claims[c.id], self.held[c.id] = c, Held(tenant, chain)
        self.metrics.added(c.state)
        self.trace.emit(
            "claim_submit",
            claim=c.id,
            blocks=hexes,
            strength=c.strength,
            priority=c.priority,
            ttl=op.ttl,
            tiers=["device"],
            policy=c.policy,
            request=request,
            tenant=tenant,
        )
        reason = self.refusal(c, **reserve_context(hexes, self.claims.values()))  # decided once
        ctx = {"fits": reason is None}
        if reason is None:
            self.fire(c, "accept", ctx)
            self.materialize_ready()
        else:
            self.held[c.id].refusal = reason
            self.fire(c, "refuse", ctx, reason=reason)
        return c.state

    def refusal(self, c: Claim, new_blocks: int, reserved: int) -> str | None:
        """Why `c` is refused at submission: the reserve (RKC-ACC-1), its tenant's quota
        (RKC-SEC-2), or None. A quota is a tenant's own reserve; it only ever refuses
        more, so the proved pool invariants still hold."""
        if not accepts(c.hard, new_blocks, reserved, self.pool.U, self.R, self.spec):
            return "reserve"
        tenant = self.held[c.id].tenant
        limit = self.quota.limit(tenant)
        if c.hard and limit is not None and len(self._hard_blocks(tenant) | set(c.chain)) > limit:
            return "quota"
        return None

    def _hard_blocks(self, tenant: str) -> set[str]:
        return {
            h
            for c in self.claims.values()
            if c.hard and c.state in RESERVING and self.held[c.id].tenant == tenant
            for h in c.chain
        }

    def _guards(self, c: Claim) -> dict:
        return {  # acceptance is decided once, in `submit`; the guards read the verdict
            "within_reserve": lambda fits, **_: fits,
            "exceeds_reserve": lambda fits, **_: not fits,
            "chain_resident": lambda **_: self.pool.resident(self.held[c.id].chain) is not None,
        }

    def fire(self, c: Claim, event: str, ctx: dict | None = None, **fields) -> None:
        before = c.state
        state = c.fsm.fire(event, **(ctx or {}))
        self.trace.emit("claim", claim=c.id, event=event, state=state, **fields)
        self.metrics.event(event, fields.get("reason"), before, state)

    def materialize_ready(self) -> None:
        for c in sorted(self.claims.values(), key=lambda c: c.id):
            if "materialize" not in c.fsm.allowed():
                continue
            blocks = self.pool.resident(self.held[c.id].chain)
            if blocks is not None:
                self.fire(c, "materialize", blocks=c.chain)
                if self.enforce:
                    self._hold(c, blocks)

    def hits(self, hit_hashes: list[str], request: str) -> None:
        hit = set(hit_hashes)
        for c in sorted(self.claims.values(), key=lambda c: c.id):
            if "hit" in c.fsm.allowed() and set(c.chain) <= hit:
                self.fire(c, "hit", request=request)

    def end(self, c: Claim, event: str, **fields) -> None:
        """A loss event (release, expire, harm, fail, demote): emitted first, then the blocks go."""
        self.fire(c, event, **fields)
        self._unhold(c)

    def expire(self, now: int) -> None:
        for c in sorted(self.claims.values(), key=lambda c: c.id):
            if c.deadline is not None and c.deadline <= now and "expire" in c.fsm.allowed():
                self.end(c, "expire", reason="ttl")

    def end_holders(self, block_ids: set[int], event: str, reason: str) -> None:
        for cid in sorted({c for b in block_ids for c in self.holders.get(b, ())}):
            self.end(self.claims[cid], event, reason=reason)

    def make_room(self, need: int, own: set[int] = frozenset()) -> None:
        """Demote non-blocking claims (soft first, then lower priority, then id) until
        their blocks give `need` more evictable blocks. A claim whose every block a
        request, a blocking claim or the deciding request itself (`own`: its prefix
        hits, which it is about to hold) also holds is passed over: it holds no
        yielding block, and demoting it would free nothing."""
        blocking = self.blocking_ids()
        for c in sorted(self.materialized(blocking=False), key=Claim.yield_order):
            if need <= 0:
                return
            if not any(
                b.block_id not in own
                and b.ref_cnt == len(self.holders[b.block_id])
                and not self.holders[b.block_id] & blocking
                for b in self.held[c.id].blocks
            ):
                continue
            freed = [b for b in self.held[c.id].blocks if b.ref_cnt == 1 and b.block_id not in own]
            self.end(c, "demote", reason="pressure")
            need -= len(freed)

    def close(self) -> None:
        """Let go of every hold, with no event: the book and its trace are being discarded."""
        for c in self.claims.values():
            self._unhold(c)

    # --- vLLM holds -----------------------------------------------------------
    def _hold(self, c: Claim, blocks: list) -> None:
        self.pool.hold(blocks)
        self.held[c.id].blocks = blocks
        for b in blocks:
            self.holders.setdefault(b.block_id, set()).add(c.id)

    def _unhold(self, c: Claim) -> None:
        blocks, self.held[c.id].blocks = self.held[c.id].blocks, []
        for b in blocks:
            self.holders[b.block_id].discard(c.id)
            if not self.holders[b.block_id]:
                del self.holders[b.block_id]
        if blocks:
            self.pool.unhold(blocks)

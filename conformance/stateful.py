"""The model-based test: a runtime and the oracle driven in lockstep by Hypothesis.

Each rule performs one operation on the runtime (through the adapter protocol)
and on the oracle, `kvclaims.model.adoption.AdoptingPool` under the runtime's
declared profile; the runtime must answer as the model does. After every step
the contract is checked on the runtime's *real* block table and trace, not on
its own bookkeeping:

- RKC-INV-1: every block of every claim the model holds materialized is resident
  (and, where the runtime can show it, holds exactly its tokens' KV);
- RKC-INV-3 / RKC-INV-4: class counts conserve U and hard claims fit under U - R;
- every claim's state and every request's status equal the model's;
- RKC-INV-6: a request admitted before the latest invalidation indexes nothing it
  computes, and (where the runtime can show it) an admitted or grown request of the
  current epoch holds exactly its tokens' KV, so no stale block was reused;
- the trace so far passes the checker (events before reuse, attribution, order).

A rejected operation must raise a typed error and change nothing (RKC-RT-4):
its trace, block table, class counts, claim states and request statuses, and with
`state_digest` the runtime's whole state (LRU and free-list order, KV bytes, the
host tier, the waiting order, the claim book). Besides wrong-state calls the
machine makes invalid-argument ones: the rejection suite's catalogue, and junk
arguments aimed at live requests and blocks. Faults land on any block they could
hit; decode is driven into claim-blocked pools; every request that starts running
has its KV verified (with `verify_request`).
On failure Hypothesis prints the steps as Python, ready to paste into a test.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from kvclaims.conformance.compare import Comparison, ContractViolation
from kvclaims.model.feasibility import Decision, PoolCounts
from kvclaims.model.names import EVENT, POLICY, STATE, STATUS
from kvclaims.model.terms import APPLIED
from kvclaims.conformance.adapter import (
    CarriesClaims,
    ChecksItself,
    Decodes,
    DeviceFaults,
    DigestsState,
    EvictsBlocks,
    HostFaults,
    OwnerOps,
    ResetsCache,
    RuntimeAdapter,
    VerifiesContent,
    VerifiesRequests,
    profile_of,
)
from kvclaims.errors import (
    DuplicateId,
    GuardRejected,
    IllegalTransition,
    InconsistentCounts,
    InvalidInput,
    KVClaimsError,
    NoRoom,
    UnknownId,
)
from kvclaims.model.adoption import AdoptingPool
from kvclaims.model.pool import ClaimTerms
from kvclaims.conformance.checker import OBLIGATION_OF, Checker
from kvclaims.conformance.litmus import Run
from kvclaims.conformance.rejections import REJECTIONS
from kvclaims.trace import BadLine, read_lines
from kvclaims.conformance.strategies import (
    VOCAB,
    claim_kwargs,
    extra_tokens,
    family_tokens,
    junk_terms,
    junk_tokens,
    pool_shape,
    priorities,
    prompt_shape,
    unique_tokens,
)

Factory = Callable[..., RuntimeAdapter]
# Obligations the machine checks on every step (each named in a ContractViolation below).
# The trace envelope, order and fields (RKC-TR-1..3) are the checker's, fed every record.
CHECKS = (
    "RKC-INV-1",
    "RKC-INV-2",
    "RKC-INV-3",
    "RKC-INV-4",
    "RKC-INV-6",
    "RKC-RT-8",
    "RKC-ACC-1",
    "RKC-FEAS-6",
    "RKC-FEAS-7",
    "RKC-RT-2",
    "RKC-RT-3",
    "RKC-RT-4",
    "RKC-RT-6",
    "RKC-TR-1",
    "RKC-TR-2",
    "RKC-TR-3",
    "RKC-TR-4",
    "RKC-TR-5",
    "RKC-TR-6",
    "RKC-TR-9",
    "RKC-TR-8",
    "RKC-RT-7",
    "RKC-ID-1",
    "RKC-ID-2",
    "RKC-ID-4",
    "RKC-ID-5",
)
OPERATOR_ACTIONS = ("reset_cache", "evict_blocks", "device_fault", "host_fault")
SHAPE = pool_shape()
ERRORS = {e.__name__: e for e in (IllegalTransition, GuardRejected, InvalidInput)}


class ContractMachine(RuleBasedStateMachine):
    """Subclass with `factory` set (see `machine_for`)."""

    factory: Factory
    claims = Bundle("claims")
    requests = Bundle("requests")
    # Set by `start`, the initialize rule, which Hypothesis runs before any rule or invariant.
    rt: RuntimeAdapter
    model: AdoptingPool
    counted: PoolCounts  # set by the invariant, which Hypothesis runs after every rule

    def __init__(self) -> None:
        super().__init__()
        self.stats: Counter[str] = Counter()
        self.steps = 0

    # --- setup ---------------------------------------------------------------------
    @initialize(U=SHAPE["U"], B=SHAPE["B"], reserve=SHAPE["reserve"], host=SHAPE["host"])
    def start(self, U: int, B: int, reserve: int, host: int) -> None:
        self.rt = type(self).factory(U=U, B=B, R=min(reserve, U - 1), host_blocks=host)
        self.model = AdoptingPool(self.rt.U, self.rt.R, self.rt.host_blocks, profile=profile_of(self.rt))
        self.checker = Checker()
        self.trace_pos = 0  # trace lines the checker has read
        self.unchecked: list[str] = []  # lines since, each fetched once (`_trace`)
        self.parsed: list[dict[str, Any] | None] = []  # their records (None: a line that is not one)
        self.serial = 0
        self.tokens: dict[str, list[int]] = {}  # claim id -> prefix tokens
        self.prompts: dict[str, list[int]] = {}  # request id -> its tokens so far
        self._check_trace()  # what the runtime traced as it started, before the comparison's first step
        self.compared = Comparison(self.rt, self.model)
        # Claims and requests whose final state was compared once: a long life checks each
        # step only what can still change (the checker sees any event after a final one).
        self.settled: dict[str, set[str]] = {"claims": set(), "requests": set()}

    def _can(self, capability: str) -> bool:
        return capability in self.rt.capabilities

    def _prompt(self, shape: tuple[int, int, int, bool], extra: int) -> list[int]:
        family, shared, tail, oversize = shape
        self.serial += 1
        if oversize:
            return unique_tokens(self.serial, self.rt.U + 1, self.rt.B)
        shared = shared % (self.rt.U // 3 + 1)
        tail = tail % (self.rt.U - shared + 1)
        extra %= self.rt.B
        if shared + tail == 0 and not extra:
            tail = 1
        return family_tokens(family, shared, self.rt.B) + unique_tokens(self.serial, tail, self.rt.B, extra)

    def _lru_evicted(self) -> None:
        """Hand the model what it adopts from the runtime's trace since the last check, before
        it replays the operation: the cached blocks the runtime's LRU evicted, in order, by
        the admission or growth they made room for (the `request_admit` or `request_grow`
        record that follows them), and the claims it demoted."""
        groups: dict[str, list[str]] = {}
        pending: list[str] = []
        demoted: list[str] = []
        for rec in self._trace():
            if rec is None:
                continue
            if rec.get("kind") == "block_evict" and rec.get("tier") == "device" and rec.get("reason") == "lru":
                pending += rec.get("blocks", [])
            elif rec.get("kind") in ("request_admit", "request_grow") and pending:
                groups[rec["request"]], pending = pending, []
            elif rec.get("kind") == "claim" and rec.get("event") == EVENT.demote:
                demoted.append(rec["claim"])
        self.model.lru_evicted(groups)
        self.model.demoted(demoted)

    def _rejected(self, error: type[KVClaimsError], fn: Callable[[], object], what: str) -> None:
        """`fn` must raise `error` and leave the runtime exactly as it was (RKC-RT-4)."""
        before = self._snapshot()
        try:
            fn()
        except error:
            pass
        else:
            raise ContractViolation(f"RKC-RT-4: {what} was accepted; expected {error.__name__}")
        self._unchanged(before, f"rejected {what}")

    def _unchanged(self, before: dict[str, object], what: str) -> None:
        after = self._snapshot()
        changed = [part for part in before if before[part] != after[part]]
        if changed:
            raise ContractViolation(f"RKC-RT-4: {what} changed the runtime's {', '.join(changed)}")

    def _snapshot(self) -> dict[str, object]:
        """What a rejected call must leave as it was; all of it where the runtime can digest it."""
        rt = self.rt
        snap: dict[str, object] = {
            "trace": len(self._trace()),
            "block table": frozenset(rt.resident()),
            "counts": rt.counts(),
            # Settled ones can change only with an event the checker rejects (or the digest shows).
            "claim states": tuple((c, rt.claim_state(c)) for c in self.model.claims if c not in self.settled["claims"]),
            "request statuses": tuple(
                (r, rt.request_status(r)) for r in self.model.requests if r not in self.settled["requests"]
            ),
        }
        if self._can("state_digest"):
            assert isinstance(rt, DigestsState), "a runtime with state_digest has state_digest()"
            snap["state"] = rt.state_digest()
        return snap

    # --- claims ----------------------------------------------------------------------
    @rule(target=claims, family=st.integers(0, 2), blocks=st.integers(1, 64), kwargs=claim_kwargs(host_tier=True))
    def submit_claim(self, family: int, blocks: int, kwargs: dict[str, Any]) -> str:
        return self._claim(family, blocks, kwargs)

    def _claim(self, family: int, blocks: int, kwargs: dict[str, Any]) -> str:
        """A claim on a family's prefix, by the runtime and by the model: same state (RKC-ACC-1)."""
        if not self._can("host_tier") and "host" in kwargs["tiers"]:
            kwargs = {
                **kwargs,
                "tiers": ("device",),
                "policy": POLICY.demote if kwargs["policy"] == POLICY.offload else kwargs["policy"],
            }
        tokens = family_tokens(family, 1 + blocks % max(1, self.rt.U // 3), self.rt.B)
        cid = f"c{len(self.model.claims)}"
        got = self.rt.submit_claim(cid, tokens, **kwargs)
        want = self.model.submit_claim(ClaimTerms(cid, tuple(self.rt.block_hashes(tokens)), **kwargs))
        self.tokens[cid] = tokens
        if got != want:
            raise ContractViolation(f"RKC-ACC-1: claim {cid} is {got!r}, the model says {want!r}")
        return cid

    @rule(claim=claims)
    def duplicate_claim(self, claim: str) -> None:
        tokens = self._tokens_of(claim)
        self._rejected(DuplicateId, lambda: self.rt.submit_claim(claim, tokens), f"duplicate claim {claim}")

    @rule(claim=consumes(claims))
    def release_claim(self, claim: str) -> None:
        if EVENT.release in self.model.claims[claim].fsm.allowed():
            self.rt.release_claim(claim)
            self.model.release_claim(claim)
        else:
            self._rejected(
                IllegalTransition,
                lambda: self.rt.release_claim(claim),
                f"release of {self.model.claims[claim].state} claim {claim}",
            )

    @precondition(lambda self: self._can("owner_ops"))
    @rule(claim=claims, op=st.sampled_from([EVENT.demote, EVENT.offload, EVENT.restore]), warm=st.booleans())
    def owner_op(self, claim: str, op: str, warm: bool = False) -> None:
        """An owner demotes, offloads or restores its claim (after computing its prefix, if
        `warm`); refusals must change nothing."""
        if warm:
            self._warm(claim)
        rt = self.rt
        assert isinstance(rt, OwnerOps), "a runtime with owner_ops has demote_claim, offload_claim, restore_claim"
        call = {EVENT.demote: rt.demote_claim, EVENT.offload: rt.offload_claim, EVENT.restore: rt.restore_claim}[op]
        if op == EVENT.demote:
            refusal = None if EVENT.demote in self.model.claims[claim].fsm.allowed() else "IllegalTransition"
        else:
            refusal = getattr(self.model, f"{op}_refusal")(claim)
        if refusal:
            self._rejected(ERRORS[refusal], lambda: call(claim), f"{op} of claim {claim}")
            return
        if op == EVENT.offload and self.model.profile.copies_with_compute:
            before = self._snapshot()  # the runtime may have no complete host copy: its NoRoom
            try:
                call(claim)
            except NoRoom:
                return self._unchanged(before, f"rejected offload of claim {claim} (no complete host copy)")
        else:
            call(claim)
        getattr(self.model, op)(claim)
        got, want = self.rt.claim_state(claim), self.model.claims[claim].state
        if op == EVENT.restore and got != want:
            raise ContractViolation(f"RKC-RT-2: restore of claim {claim} left it {got!r}; the model says {want!r}")

    @precondition(lambda self: self._can("owner_ops") and self._can("host_fault"))
    @rule(claim=claims, fault=st.none() | st.integers(0, 10**6))
    def offload_roundtrip(self, claim: str, fault: int | None) -> None:
        """Compute the prefix, offload, maybe corrupt one host copy (`fault` picks which, from
        every block of the chain), restore: a restore must verify every block or fail closed."""
        self._warm(claim)
        self.owner_op(claim, EVENT.offload)
        self.contract_holds()
        chain = self.model.claims[claim].terms.chain
        if fault is not None and self.model.claims[claim].state == STATE.offloaded:
            self._inject_host_fault(chain[fault % len(chain)])
        self.owner_op(claim, EVENT.restore)

    @precondition(lambda self: self._can("owner_ops") and self._can("host_fault") and self._can("host_tier"))
    @rule(
        target=claims,
        family=st.integers(0, 2),
        blocks=st.integers(1, 64),
        strength=st.sampled_from(["hard", "soft"]),
        fault=st.none() | st.integers(0, 10**6),
    )
    def host_roundtrip(self, family: int, blocks: int, strength: str, fault: int | None) -> str:
        """`offload_roundtrip` on a fresh host-tier claim: one drawn from the bundle has mostly
        ended or never materialized, so the round trip rarely got past its first step (0
        restores in 5,000 steps; with this rule, tens)."""
        terms = {"strength": strength, "policy": POLICY.offload, "tiers": ("device", "host"), "ttl": None}
        claim = self._claim(family, blocks, terms)
        self.offload_roundtrip(claim, fault)
        return claim

    def _warm(self, claim: str) -> None:
        """Compute the claim's prefix in a request that ends, so the claim can materialize."""
        rid = self._submit(self._tokens_of(claim))
        if self.model.requests[rid].status == STATUS.running:
            self.finish(rid, admit=True)
        self.contract_holds()

    @rule()
    def release_unknown_claim(self) -> None:
        self._rejected(UnknownId, lambda: self.rt.release_claim("no-such-claim"), "unknown claim")

    # --- requests --------------------------------------------------------------------
    @rule(target=requests, shape=prompt_shape(64), extra=extra_tokens())
    def submit_request(self, shape: tuple[int, int, int, bool], extra: int = 0) -> str:
        """A prompt of shared and unique blocks, ending mid-block by `extra` modulo B tokens."""
        return self._submit(self._prompt(shape, extra))

    @rule(target=requests, claim=claims, tail=st.integers(0, 3), extra=extra_tokens())
    def request_claimed_prefix(self, claim: str, tail: int, extra: int = 0) -> str:
        """The usual pattern: a claimed prefix is computed (materializing it) or reused (a hit),
        then a tail that may end mid-block (`extra` modulo B tokens)."""
        self.serial += 1
        extra %= self.rt.B
        return self._submit(self._tokens_of(claim) + unique_tokens(self.serial, tail, self.rt.B, extra))

    @precondition(lambda self: self._classes().protected > 0)
    @rule(target=requests)
    def squeeze(self) -> str:
        """A request one block too large to fit beside the protected blocks."""
        self.serial += 1
        need = self.rt.U - self.model.counts().protected + 1
        return self._submit(unique_tokens(self.serial, need, self.rt.B))

    @rule(
        strength=st.sampled_from(["hard", "soft"]),
        ranks=st.tuples(priorities(), priorities()),
        family=st.integers(0, 2),
    )
    def rivals(self, strength: str, ranks: tuple[int, int], family: int) -> None:
        """Two claims that yield (policy demote), on different prefixes, of drawn priorities,
        materialize; then a request presses: the first in yield order gives way (RKC-RT-1)."""
        for i, priority in enumerate(ranks):
            terms = {"strength": strength, "policy": POLICY.demote, "tiers": ("device",), "ttl": None}
            self._warm(self._claim((family + i) % 3, 0, {**terms, "priority": priority}))
        if self.model.counts().yielding:
            self.press()

    @precondition(lambda self: self._classes().yielding > 0)
    @rule(target=requests)
    def press(self) -> str:
        """A request one block larger than the free and cached blocks: exactly the first
        non-blocking claim in yield order (soft first, then lowest priority) gives way."""
        self.serial += 1
        counts = self.model.counts()
        return self._submit(unique_tokens(self.serial, counts.free + counts.cached + 1, self.rt.B))

    @precondition(lambda self: self._can("request_claims"))
    @rule(
        target=requests,
        family=st.integers(0, 2),
        blocks=st.integers(1, 64),
        kwargs=claim_kwargs(host_tier=False),
        taken=st.booleans(),
    )
    def request_with_claim(self, family: int, blocks: int, kwargs: dict[str, Any], taken: bool) -> str:
        """A request carries a claim on its prefix: it applies at admission, or never if the
        request is refused or aborted first or the id is taken by then (RKC-RT-8)."""
        tokens = family_tokens(family, 1 + blocks % max(1, self.rt.U // 3), self.rt.B)
        self.serial += 1
        cid = f"c{len(self.model.claims)}" if taken else f"q{self.serial}"
        return self._submit(tokens, ClaimTerms(cid, tuple(self.rt.block_hashes(tokens)), **kwargs))

    def _submit(self, tokens: list[int], claim: ClaimTerms | None = None) -> str:
        rid = f"r{len(self.model.requests)}"
        self.prompts[rid] = tokens
        got = self.rt.submit_request(rid, tokens) if claim is None else self._submit_carrying(rid, tokens, claim)
        self._lru_evicted()
        want = self.model.submit_request(
            rid, tuple(self.rt.block_hashes(tokens)), blocks=-(-len(tokens) // self.rt.B), claim=claim
        )
        self._same_decision(rid, got, want)
        self._verify(rid)
        return rid

    def _submit_carrying(self, rid: str, tokens: list[int], claim: ClaimTerms) -> Decision:
        """Submit a request that carries `claim` (the `request_claims` capability)."""
        rt = self.rt
        assert isinstance(rt, CarriesClaims), "a runtime with request_claims takes submit_request(claim=)"
        return rt.submit_request(
            rid,
            tokens,
            claim={
                "id": claim.id,
                "strength": claim.strength,
                "priority": claim.priority,
                "ttl": claim.ttl,
                "tiers": claim.tiers,
                "policy": claim.policy,
            },
        )

    def _same_decision(self, rid: str, got: Decision, want: Decision) -> None:
        if (got.outcome, tuple(got.blocking_claims)) != (want.outcome, want.blocking_claims):
            raise ContractViolation(f"RKC-FEAS-7: request {rid} got {got}, the model decides {want}")

    def _verify(self, rid: str) -> None:
        """A running request of the current epoch holds exactly its tokens' KV: no block it
        reused was computed before an invalidation, nor corrupt (RKC-INV-6), and what it
        computed itself is its tokens' (RKC-RT-6: it reused nothing, or its reused prefix
        verifies on its own)."""
        if not (
            self._can("verify_request") and self.model.requests[rid].status == STATUS.running and self.model.fresh(rid)
        ):
            return
        rt = self.rt
        assert isinstance(rt, VerifiesRequests), "a runtime with verify_request has verify_request(request_id)"
        if rt.verify_request(rid):
            return
        hits = self.model.requests[rid].hits
        reused = self.prompts[rid][: hits * rt.B]
        if not hits or (self._can("verify_content") and isinstance(rt, VerifiesContent) and rt.verify_prefix(reused)):
            raise ContractViolation(f"RKC-RT-6: request {rid} computed KV that is not its tokens' ({hits} reused)")
        raise ContractViolation(
            f"RKC-INV-6: request {rid} holds KV that is not its tokens' under its weights (stale or corrupt KV reused)"
        )

    @precondition(lambda self: self._can("decode"))
    @rule(request=requests, n=st.integers(1, 9))
    def decode(self, request: str, n: int) -> None:
        """A running request grows by `n` generated tokens; a stale one must index none."""
        self._grow(request, n)

    @precondition(lambda self: self._can("decode") and self._classes().protected > 0)
    @rule(request=requests)
    def squeeze_decode(self, request: str) -> None:
        """A running request grows one block past what fits beside the protected blocks it does
        not hold: refused naming the claims, never left running on them (RKC-RT-3)."""
        r = self.model.requests[request]
        if r.status != STATUS.running:
            return
        protected = self.model.counts(frozenset(r.held)).protected
        room = self.rt.U - r.blocks - protected  # blocks the growth could have, all yielding
        self._grow(request, r.blocks * self.rt.B - len(self.prompts[request]) + (room + 1) * self.rt.B)

    def _grow(self, request: str, n: int) -> None:
        """Decode `n` tokens into the request, as the runtime and as the model."""
        rt = self.rt
        assert isinstance(rt, Decodes), "a runtime with decode has decode(request_id, tokens)"
        if self.model.requests[request].status != STATUS.running:
            self._rejected(
                InvalidInput,
                lambda: rt.decode(request, [0]),
                f"decode of {self.model.requests[request].status} request {request}",
            )
            return
        self.serial += 1
        tokens = self.prompts[request] + [(self.serial * 7 + i) % VOCAB for i in range(n)]
        chain = tuple(self.rt.block_hashes(tokens))
        before = self.rt.resident()
        got = rt.decode(request, tokens[len(self.prompts[request]) :])
        self._lru_evicted()
        want = self.model.decode(request, chain, -(-len(tokens) // self.rt.B))
        self.stats[f"decode:{want.outcome}"] += 1
        self._same_decision(request, got, want)
        if want.outcome != "admit":
            return
        self.prompts[request] = tokens
        indexed = (self.rt.resident() - before) & set(chain)
        if indexed and not self.model.fresh(request):
            raise ContractViolation(
                f"RKC-INV-6: request {request}, admitted before the latest "
                f"invalidation, indexed blocks {sorted(indexed)}"
            )
        self._verify(request)

    @rule(request=requests, admit=st.booleans())
    def finish(self, request: str, admit: bool) -> None:
        if self.model.requests[request].status == STATUS.running:
            self.rt.finish(request, admit=admit)
            self.model.finish(request, admit=admit)
        else:
            self._rejected(
                InvalidInput,
                lambda: self.rt.finish(request, admit=admit),
                f"finish of {self.model.requests[request].status} request {request}",
            )

    @rule(request=requests)
    def abort(self, request: str) -> None:
        if self.model.requests[request].status in (STATUS.waiting, STATUS.running):
            self.rt.abort(request)
            self.model.abort(request)
        else:
            self._rejected(
                InvalidInput,
                lambda: self.rt.abort(request),
                f"abort of {self.model.requests[request].status} request {request}",
            )

    @rule(ticks=st.integers(1, 3))
    def step(self, ticks: int) -> None:
        """Advance the clock; requests it admits from the queue must hold their tokens' KV."""
        waiting = list(self.model.waiting)
        self.rt.step(ticks)
        self._lru_evicted()
        self.model.step(ticks)
        for rid in waiting:
            self._verify(rid)

    # --- invalid arguments: typed errors, nothing changed (RKC-RT-4) -------------------
    @rule(name=st.sampled_from(sorted(REJECTIONS)))
    def bad_call(self, name: str) -> None:
        """A bad call from the rejection suite's catalogue (`kvclaims.conformance.rejections`).
        Those whose ids name that suite's setup are unknown ids here, but for its duplicate
        ids, which are fresh here (the machine makes its own duplicates). Its partial blocks
        need B >= 2."""
        s = REJECTIONS[name]
        if s.error is not DuplicateId and s.needs <= self.rt.capabilities and self.rt.B >= 2:
            self._rejected(KVClaimsError, lambda: s.call(Run(self.rt)), s.what)

    @rule(request=requests, tokens=junk_tokens(), admit=st.sampled_from([None, 0, 1, "false"]))
    def junk_for_request(self, request: str, tokens: Any, admit: Any) -> None:
        """Junk arguments aimed at a running request: a non-bool `admit` to end it and bad
        tokens to grow it are rejected before anything moves."""
        if self.model.requests[request].status != STATUS.running:
            return
        rt = self.rt
        self._rejected(KVClaimsError, lambda: rt.finish(request, admit=admit), f"finish({request!r}, admit={admit!r})")
        if self._can("decode"):
            assert isinstance(rt, Decodes), "a runtime with decode has decode(request_id, tokens)"
            self._rejected(KVClaimsError, lambda: rt.decode(request, tokens), f"decode({request!r}, {tokens!r})")

    @rule(family=st.integers(0, 2), term=junk_terms(), carried=st.booleans())
    def junk_claim(self, family: int, term: tuple[str, Any], carried: bool) -> None:
        """A claim on a real prefix with one bad term, submitted alone or carried by a request
        (`request_claims`): rejected whole, the prefix computed by nobody."""
        self.serial += 1
        key, value = term
        terms = {"id": f"j{self.serial}", "strength": "hard", key: value}
        tokens, rt = family_tokens(family, 1, self.rt.B), self.rt
        if carried and self._can("request_claims"):
            assert isinstance(rt, CarriesClaims), "a runtime with request_claims takes submit_request(claim=)"
            self._rejected(
                KVClaimsError, lambda: rt.submit_request(f"j{self.serial}", tokens, claim=terms), f"a carried {terms}"
            )
        else:
            cid = terms.pop("id")
            self._rejected(KVClaimsError, lambda: rt.submit_claim(cid, tokens, **terms), f"claim {cid!r} with {terms}")

    @precondition(lambda self: self._can("evict_blocks"))
    @rule(index=st.integers(0, 10**6), junk=st.sampled_from(["0" * 16, 5, None]))
    def evict_with_junk(self, index: int, junk: Any) -> None:
        """An eviction listing a resident block and a junk one evicts neither."""
        if not self.model.resident:
            return
        rt = self.rt
        assert isinstance(rt, EvictsBlocks), "a runtime with evict_blocks has evict_blocks(hashes)"
        h = sorted(self.model.resident)[index % len(self.model.resident)]
        self._rejected(KVClaimsError, lambda: rt.evict_blocks([h, junk]), f"evict_blocks([{h!r}, {junk!r}])")

    # --- operator actions and faults ---------------------------------------------------
    @rule(action=st.sampled_from(OPERATOR_ACTIONS), index=st.integers(0, 10**6))
    def operator(self, action: str, index: int) -> None:
        """One operator action or injected fault, where the runtime supports it."""
        rt = self.rt
        if action not in rt.capabilities:
            return
        if action == "reset_cache":
            assert isinstance(rt, ResetsCache), "a runtime with reset_cache has reset_prefix_cache()"
            rt.reset_prefix_cache()
            self.model.reset_prefix_cache()
            self._grow_stale(index)
            return
        pool = self.model.host if action == "host_fault" else self.model.resident
        if not pool:
            return
        h = sorted(pool)[index % len(pool)]
        if action == "evict_blocks":
            assert isinstance(rt, EvictsBlocks), "a runtime with evict_blocks has evict_blocks(hashes)"
            rt.evict_blocks([h])
            self.model.evict_blocks({h})
        elif action == "device_fault":
            assert isinstance(rt, DeviceFaults), "a runtime with device_fault has inject_device_fault(hash)"
            rt.inject_device_fault(h)
            self.model.inject_device_fault(h)
        else:
            self._inject_host_fault(h)

    def _grow_stale(self, index: int) -> None:
        """A request running across the invalidation computes one more block: it must index
        none of it (RKC-INV-6)."""
        stale = sorted(self.model.running)
        if stale and self._can("decode"):
            self._grow(stale[index % len(stale)], self.rt.B)

    def _inject_host_fault(self, h: str) -> None:
        rt = self.rt
        assert isinstance(rt, HostFaults), "a runtime with host_fault has inject_host_fault(hash)"
        rt.inject_host_fault(h)
        self.model.inject_host_fault(h)

    def _classes(self) -> PoolCounts:
        """The oracle's classes as the last check counted them, for preconditions; counted
        now where no check has (a life keeps a failure and goes on: `kvclaims.conformance.life`)."""
        counted = vars(self).get("counted")
        return self.model.counts() if counted is None else counted

    # --- the contract, after every step ------------------------------------------------
    @invariant()
    def contract_holds(self) -> None:
        self.steps += 1
        records = self._check_trace()
        self._check_claims()
        resident = self.rt.resident()
        missing = self.model.missing_claimed(resident)
        if missing:
            raise ContractViolation(f"RKC-INV-1: materialized claims lost blocks with no event: {missing}")
        self._check_content()
        self._check_requests()
        self.compared.check(records)
        try:
            counts, want = self.rt.counts(), self.model.counts()
        except InconsistentCounts as exc:
            raise ContractViolation(f"RKC-INV-3: the runtime's block classes: {exc}") from None
        self.counted = want  # the oracle's classes until the next rule runs: its preconditions read them
        if counts.protected + counts.yielding < want.protected + want.yielding:
            raise ContractViolation(
                f"RKC-INV-2: materialized claims' blocks counted evictable: runtime {counts} != model {want}"
            )
        if counts != want:
            raise ContractViolation(f"RKC-INV-3: runtime counts {counts} != model {want}")
        if len(self.model.reserved()) > self.rt.U - self.rt.R:
            raise ContractViolation(f"RKC-INV-4: {len(self.model.reserved())} hard-claimed blocks > U - R")
        if self._can("check_valid"):  # last: a contract check names what broke before a self-check
            assert isinstance(self.rt, ChecksItself), "a runtime with check_valid has check_valid()"
            self.rt.check_valid()

    def _check_content(self) -> None:
        """RKC-RT-2, where the runtime can show KV content: every materialized claim's blocks
        hold its tokens' KV (a claim a request carried claims the prompt's full blocks)."""
        rt = self.rt
        if not self._can("verify_content"):
            return
        assert isinstance(rt, VerifiesContent), "a runtime with verify_content has verify_prefix(tokens)"
        for cid in self.model.materialized_chains():
            if not rt.verify_prefix(self._tokens_of(cid)):
                raise ContractViolation(f"RKC-RT-2: claim {cid} is materialized but its KV is not its tokens'")

    def _tokens_of(self, claim: str) -> list[int]:
        """A claim's prefix tokens; a claim a request carried claims its prompt's full blocks
        (looked up when first needed: the model applies it at the request's admission)."""
        if claim not in self.tokens:
            B = self.rt.B
            for rid, r in self.model.requests.items():
                if r.claim is not None and r.claim_outcome == APPLIED:
                    self.tokens.setdefault(r.claim.id, self.prompts[rid][: len(r.claim.chain) * B])
        return self.tokens[claim]

    def _check_claims(self) -> None:
        """Every claim's state is the model's; one that yielded (or not) out of turn under
        pressure names RKC-RT-1, its loss event."""
        lc = self.model.spec.lifecycle
        yielded = set(lc.dests(EVENT.demote)) | set(lc.dests(EVENT.offload))
        settled = self.settled["claims"]
        for cid, c in self.model.claims.items():
            if cid in settled:
                continue
            got = self.rt.claim_state(cid)
            if got != c.state:
                oid = "RKC-RT-1: " if {got, c.state} & yielded else ""
                raise ContractViolation(f"{oid}claim {cid} is {got!r}, the model says {c.state!r}")
            if c.fsm.terminal:
                settled.add(cid)

    def _check_requests(self) -> None:
        """Every request's status (RKC-RT-3) and its carried claim's outcome (RKC-RT-8)."""
        rt, settled = self.rt, self.settled["requests"]
        for rid, r in self.model.requests.items():
            if rid in settled:
                continue
            if r.status not in (STATUS.waiting, STATUS.running):
                settled.add(rid)  # compared below, once
            if rt.request_status(rid) != r.status:
                raise ContractViolation(
                    f"RKC-RT-3: request {rid} is {rt.request_status(rid)!r}, the model says {r.status!r}"
                )
            if r.claim is None:
                continue
            assert isinstance(rt, CarriesClaims), "a runtime with request_claims has claim_outcome(request_id)"
            if rt.claim_outcome(rid) != r.claim_outcome:
                raise ContractViolation(
                    f"RKC-RT-8: request {rid}'s claim is {rt.claim_outcome(rid)!r}, the model says {r.claim_outcome!r}"
                )

    def _check_refusal(self, rec: dict[str, Any]) -> None:
        """The refusal the runtime reports is the model's decision, attribution included."""
        want = self.model.requests[rec["request"]].decision
        assert want is not None, "a request the runtime refuses was decided by the model"
        got = (rec.get("reason"), tuple(rec.get("blocking_claims", ())))
        if got != (want.outcome, want.blocking_claims):
            raise ContractViolation(f"RKC-FEAS-6: trace refuses {rec['request']} as {got}, the model decides {want}")

    def _trace(self) -> list[dict[str, Any] | None]:
        """The trace's records since the last check (None for a line that is not one). Each
        line is fetched and parsed once: adoption, a rejection's before and after, the checker
        and the comparison all read them."""
        new = self.rt.trace_lines(self.trace_pos + len(self.unchecked))
        if new:
            got = dict(read_lines(new))
            self.unchecked += new
            self.parsed += [rec if isinstance(rec := got.get(n), dict) else None for n in range(1, len(new) + 1)]
        return self.parsed

    def _check_trace(self) -> list[dict[str, Any]]:
        """Feed the checker the lines since the last check; returns their records. Lines that
        are all records read the same one by one as together; any other (blank, malformed,
        cut short) are read again together, as the checker reads a file."""
        records = [rec for rec in self._trace() if rec is not None]
        lines = self.unchecked
        numbered: list[tuple[int, dict[str, Any] | BadLine]] = (
            list(enumerate(records, 1)) if len(records) == len(lines) else list(read_lines(lines))
        )
        self.unchecked, self.parsed = [], []
        for number, rec in numbered:
            self.checker.feed(self.trace_pos + number, rec)
            if isinstance(rec, dict) and rec.get("kind") == "request_refuse":
                self._check_refusal(rec)
            if isinstance(rec, dict):
                detail = rec.get("event") or rec.get("reason") if rec["kind"] in ("claim", "request_refuse") else None
                self.stats[f"{rec['kind']}:{detail}" if detail else rec["kind"]] += 1
        self.trace_pos += len(lines)
        if self.checker.report.violations:
            v = self.checker.report.violations[0]
            oid = OBLIGATION_OF.get(v.kind, "RKC-TR-3")
            raise ContractViolation(f"{oid}: trace line {v.line} (seq {v.seq}): {v.kind}: {v.message}")
        return [rec for _, rec in numbered if isinstance(rec, dict)]


def machine_for(factory: Factory) -> type[ContractMachine]:
    """A ContractMachine class driving runtimes made by `factory(U=, B=, R=, host_blocks=)`."""
    return type("ContractMachineFor", (ContractMachine,), {"factory": staticmethod(factory)})

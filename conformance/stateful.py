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

A rejected operation must raise a typed error and change nothing (RKC-RT-4).
On failure Hypothesis prints the steps as Python, ready to paste into a test.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from kvclaims.model.feasibility import Decision
from kvclaims.model.names import EVENT, POLICY, STATE, STATUS
from kvclaims.model.terms import APPLIED
from kvclaims.conformance.adapter import (
    CarriesClaims,
    Decodes,
    DeviceFaults,
    EvictsBlocks,
    HostFaults,
    OwnerOps,
    ResetsCache,
    RuntimeAdapter,
    VerifiesContent,
    VerifiesRequests,
    profile_of,
)
from kvclaims.errors import DuplicateId, GuardRejected, IllegalTransition, InvalidInput, KVClaimsError, UnknownId
from kvclaims.model.adoption import AdoptingPool
from kvclaims.model.pool import ClaimTerms
from kvclaims.conformance.checker import OBLIGATION_OF, Checker
from kvclaims.trace import read_lines
from kvclaims.conformance.strategies import VOCAB, claim_kwargs, family_tokens, prompt_shape, unique_tokens

Factory = Callable[..., RuntimeAdapter]
# Obligations the machine checks on every step (each named in a ContractViolation below).
# The trace envelope, order and fields (RKC-TR-1..3) are the checker's, fed every record.
CHECKS = (
    "RKC-INV-1",
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
    "RKC-TR-1",
    "RKC-TR-2",
    "RKC-TR-3",
    "RKC-TR-4",
    "RKC-TR-5",
    "RKC-TR-6",
    "RKC-TR-9",
)
OPERATOR_ACTIONS = ("reset_cache", "evict_blocks", "device_fault", "host_fault")
ERRORS = {e.__name__: e for e in (IllegalTransition, GuardRejected, InvalidInput)}


class ContractViolation(AssertionError):
    """The runtime broke the contract; the message names the obligation."""


def violated_obligation(exc: BaseException) -> str | None:
    """The obligation a violation names first (its message's leading id), or None: a
    crash, or a disagreement with the model that no single obligation owns."""
    match = re.match(r"(RKC-[A-Z]+-\d+):", str(exc)) if isinstance(exc, ContractViolation) else None
    return match.group(1) if match else None


class ContractMachine(RuleBasedStateMachine):
    """Subclass with `factory` set (see `machine_for`)."""

    factory: Factory
    claims = Bundle("claims")
    requests = Bundle("requests")
    # Set by `start`, the initialize rule, which Hypothesis runs before any rule or invariant.
    rt: RuntimeAdapter
    model: AdoptingPool

    def __init__(self) -> None:
        super().__init__()
        self.stats: Counter[str] = Counter()
        self.steps = 0

    # --- setup ---------------------------------------------------------------------
    @initialize(U=st.integers(8, 64), B=st.sampled_from([2, 4]), reserve=st.integers(0, 32), host=st.integers(0, 24))
    def start(self, U: int, B: int, reserve: int, host: int) -> None:
        self.rt = type(self).factory(U=U, B=B, R=min(reserve, U // 2), host_blocks=host)
        self.model = AdoptingPool(self.rt.U, self.rt.R, self.rt.host_blocks, profile=profile_of(self.rt))
        self.checker = Checker()
        self.trace_pos = 0
        self.serial = 0
        self.tokens: dict[str, list[int]] = {}  # claim id -> prefix tokens
        self.prompts: dict[str, list[int]] = {}  # request id -> its tokens so far
        self.model.sync(self.rt.resident(), self.rt.counts())

    def _can(self, capability: str) -> bool:
        return capability in self.rt.capabilities

    def _prompt(self, shape: tuple[int, int, int, bool]) -> list[int]:
        family, shared, tail, oversize = shape
        self.serial += 1
        if oversize:
            return unique_tokens(self.serial, self.rt.U + 1, self.rt.B)
        shared = shared % (self.rt.U // 3 + 1)
        tail = tail % (self.rt.U - shared + 1)
        if shared + tail == 0:
            tail = 1
        return family_tokens(family, shared, self.rt.B) + unique_tokens(self.serial, tail, self.rt.B)

    def _lru_evicted(self) -> None:
        """Hand the model the cached blocks the runtime's LRU evicted since the last check,
        before it replays the operation: in order, by the admission or growth they made
        room for (the `request_admit` or `request_grow` record that follows them)."""
        groups: dict[str, list[str]] = {}
        pending: list[str] = []
        for _, rec in read_lines(self.rt.trace_lines(self.trace_pos)):
            if not isinstance(rec, dict):
                continue
            if rec.get("kind") == "block_evict" and rec.get("tier") == "device" and rec.get("reason") == "lru":
                pending += rec.get("blocks", [])
            elif rec.get("kind") in ("request_admit", "request_grow") and pending:
                groups[rec["request"]], pending = pending, []
        self.model.lru_evicted(groups)

    def _rejected(self, error: type[KVClaimsError], fn: Callable[[], object], what: str) -> None:
        """`fn` must raise `error` and leave the runtime exactly as it was (RKC-RT-4)."""
        before = self._snapshot()
        try:
            fn()
        except error:
            pass
        else:
            raise ContractViolation(f"RKC-RT-4: {what} was accepted; expected {error.__name__}")
        if self._snapshot() != before:
            raise ContractViolation(f"RKC-RT-4: rejected {what} changed the runtime")

    def _snapshot(self) -> tuple[object, ...]:
        return (
            len(self.rt.trace_lines(self.trace_pos)),
            frozenset(self.rt.resident()),
            tuple((c, self.rt.claim_state(c)) for c in sorted(self.model.claims)),
            tuple((r, self.rt.request_status(r)) for r in sorted(self.model.requests)),
        )

    # --- claims ----------------------------------------------------------------------
    @rule(target=claims, family=st.integers(0, 2), blocks=st.integers(1, 64), kwargs=claim_kwargs(host_tier=True))
    def submit_claim(self, family: int, blocks: int, kwargs: dict[str, Any]) -> str:
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
        self._rejected(DuplicateId, lambda: self.rt.submit_claim(claim, self.tokens[claim]), f"duplicate claim {claim}")

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
        call(claim)
        getattr(self.model, op)(claim)

    @precondition(lambda self: self._can("owner_ops") and self._can("host_fault"))
    @rule(claim=claims, corrupt=st.booleans())
    def offload_roundtrip(self, claim: str, corrupt: bool) -> None:
        """Compute the prefix, offload, maybe corrupt one host copy, restore: a restore must
        verify or fail closed."""
        self._warm(claim)
        self.owner_op(claim, EVENT.offload)
        self.contract_holds()
        if corrupt and self.model.claims[claim].state == STATE.offloaded:
            self._inject_host_fault(self.model.claims[claim].terms.chain[0])
        self.owner_op(claim, EVENT.restore)

    def _warm(self, claim: str) -> None:
        """Compute the claim's prefix in a request that ends, so the claim can materialize."""
        rid = self._submit(self.tokens[claim])
        if self.model.requests[rid].status == STATUS.running:
            self.finish(rid, admit=True)
        self.contract_holds()

    @rule()
    def release_unknown_claim(self) -> None:
        self._rejected(UnknownId, lambda: self.rt.release_claim("no-such-claim"), "unknown claim")

    # --- requests --------------------------------------------------------------------
    @rule(target=requests, shape=prompt_shape(64))
    def submit_request(self, shape: tuple[int, int, int, bool]) -> str:
        return self._submit(self._prompt(shape))

    @rule(target=requests, claim=claims, tail=st.integers(0, 3))
    def request_claimed_prefix(self, claim: str, tail: int) -> str:
        """The usual pattern: a claimed prefix is computed (materializing it) or reused (a hit)."""
        self.serial += 1
        return self._submit(self.tokens[claim] + unique_tokens(self.serial, tail, self.rt.B))

    @precondition(lambda self: self.model.counts().protected > 0)
    @rule(target=requests)
    def squeeze(self) -> str:
        """A request one block too large to fit beside the protected blocks."""
        self.serial += 1
        need = self.rt.U - self.model.counts().protected + 1
        return self._submit(unique_tokens(self.serial, need, self.rt.B))

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
        """RKC-INV-6: a running request of the current epoch holds exactly its tokens' KV,
        so no block it reused was computed before an invalidation (nor corrupt)."""
        if not (
            self._can("verify_request") and self.model.requests[rid].status == STATUS.running and self.model.fresh(rid)
        ):
            return
        rt = self.rt
        assert isinstance(rt, VerifiesRequests), "a runtime with verify_request has verify_request(request_id)"
        if not rt.verify_request(rid):
            raise ContractViolation(
                f"RKC-INV-6: request {rid} holds KV that is not its tokens' "
                "under its weights (stale or corrupt KV reused)"
            )

    @precondition(lambda self: self._can("decode"))
    @rule(request=requests, n=st.integers(1, 9))
    def decode(self, request: str, n: int) -> None:
        """A running request grows by `n` generated tokens; a stale one must index none."""
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
        self.rt.step(ticks)
        self._lru_evicted()
        self.model.step(ticks)

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

    def _inject_host_fault(self, h: str) -> None:
        rt = self.rt
        assert isinstance(rt, HostFaults), "a runtime with host_fault has inject_host_fault(hash)"
        rt.inject_host_fault(h)
        self.model.inject_host_fault(h)

    # --- the contract, after every step ------------------------------------------------
    @invariant()
    def contract_holds(self) -> None:
        self.steps += 1
        self._check_trace()
        resident = self.rt.resident()
        missing = self.model.missing_claimed(resident)
        if missing:
            raise ContractViolation(f"RKC-INV-1: materialized claims lost blocks with no event: {missing}")
        self._check_content()
        for cid, c in self.model.claims.items():
            if self.rt.claim_state(cid) != c.state:
                raise ContractViolation(f"claim {cid} is {self.rt.claim_state(cid)!r}, the model says {c.state!r}")
        self._check_requests()
        counts = self.rt.counts()
        self.model.sync(resident, counts)
        if counts != self.model.counts():
            raise ContractViolation(f"RKC-INV-3: runtime counts {counts} != model {self.model.counts()}")
        if len(self.model.reserved()) > self.rt.U - self.rt.R:
            raise ContractViolation(f"RKC-INV-4: {len(self.model.reserved())} hard-claimed blocks > U - R")

    def _check_content(self) -> None:
        """RKC-RT-2, where the runtime can show KV content: every materialized claim's blocks
        hold its tokens' KV (a claim a request carried claims the prompt's full blocks)."""
        for rid, r in self.model.requests.items():
            if r.claim is not None and r.claim_outcome == APPLIED:
                self.tokens.setdefault(r.claim.id, self.prompts[rid][: len(r.claim.chain) * self.rt.B])
        rt = self.rt
        if not self._can("verify_content"):
            return
        assert isinstance(rt, VerifiesContent), "a runtime with verify_content has verify_prefix(tokens)"
        for cid in self.model.materialized_chains():
            if not rt.verify_prefix(self.tokens[cid]):
                raise ContractViolation(f"RKC-RT-2: claim {cid} is materialized but its KV is not its tokens'")

    def _check_requests(self) -> None:
        """Every request's status (RKC-RT-3) and its carried claim's outcome (RKC-RT-8)."""
        rt = self.rt
        for rid, r in self.model.requests.items():
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

    def _check_trace(self) -> None:
        lines = self.rt.trace_lines(self.trace_pos)
        for number, rec in read_lines(lines):
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


def machine_for(factory: Factory) -> type[ContractMachine]:
    """A ContractMachine class driving runtimes made by `factory(U=, B=, R=, host_blocks=)`."""
    return type("ContractMachineFor", (ContractMachine,), {"factory": staticmethod(factory)})

"""vLLM as a runtime under test: the adapter protocol (`kvclaims.conformance.adapter`) over a real
in-process engine with the claims integration switched on.

    kvclaims litmus --runtime vllm
    kvclaims conform --runtime vllm --steps 1000

What vLLM fixes, the adapter reports rather than hides:

- **Block size.** The CPU attention backend wants multiples of 32, so `B` is 32
  whatever is asked; suites read `rt.B` and `block_hashes` gives vLLM's own chain
  hashes. Token ids are taken modulo the tiny model's vocabulary (the suites'
  prompts stay distinct under it; `block_hashes` applies the same map).
- **Pool size.** One engine serves every instance of a process (a start costs
  about 11 s): each instance aborts what is left, drops the old claims' holds,
  resets the prefix cache and withholds blocks from vLLM's free queue, so vLLM
  allocates from exactly `U` blocks, as if started with ``U + 1``.
- **Logical time.** A protocol `step` is one clock tick (TTLs run out) followed by
  one engine step per waiting request, in order; submitting a request is one
  engine step that does not tick. A running request has run its prefill and is
  then kept out of the schedule (see `harness`) but for a `decode`, so it holds
  exactly its tokens' blocks until it is finished.
- **Capabilities.** `evict_blocks`, `reset_cache`, `request_claims` (a claim carried
  as the request's `kvclaims_*` arguments, applied at admission), `decode` (the tokens
  given replace what vLLM samples; growth is decided by `ClaimsScheduler.growth`),
  `device_fault` (the block's KV is corrupted in vLLM's cache tensors and reported),
  `host_tier`, `owner_ops` and `host_fault` (the claims host tier under vLLM's
  OffloadingConnector, `kvclaims.vllm.hosttier`, holding claims only as the contract's
  does: `host_tier="claims"`; an owner's restore is a request of its own for the claim's
  prefix, the only way vLLM loads from its host tier) and `check_valid`. The reset is the
  contract's: claims with resident state are harmed, then every indexed block leaves
  vLLM's prefix cache through its `BlockPool.evict_blocks` (the invalid-KV path), and
  running requests keep their blocks unindexed; vLLM's own `reset_prefix_cache` refuses
  while requests hold blocks (withheld blocks count) or preempts them. Not applicable:
  KV content cannot be compared with tokens.
- **Bad input.** Every call is checked by the same rules as the reference runtime's before
  anything reaches the engine (`kvclaims.conformance.rejections`: the same typed error for the same
  bad call, nothing changed, nothing traced); then what only vLLM refuses (a host tier,
  a prompt past the model length).

`StockVllmAdapter` is the same engine with claims recorded but not enforced:
stock vLLM with a witness, which the suites must tell apart.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Mapping, Sequence

from vllm.v1.request import RequestStatus

from kvclaims.conformance.adapter import RuntimeProfile
from kvclaims.model.names import EVENT, STATUS
from kvclaims.model.terms import APPLIED, NOT_APPLIED, PENDING
from kvclaims.errors import DuplicateId, InvalidField, InvalidInput, NoRoom, UnknownId
from kvclaims.model.feasibility import Decision, PoolCounts

# The protocol's input rules are the reference runtime's: one rule set, so a bad call
# gets the same typed error here as there (RKC-RT-4).
from kvclaims.model.checks import (
    MAX_TICKS,
    check_hash,
    check_id,
    check_int,
    check_list,
    check_tokens,
    claim_terms,
    request_claim,
)
from kvclaims.vllm.engine import VllmEngine
from kvclaims.vllm.harness import HarnessScheduler
from kvclaims.vllm.model_dir import VOCAB
from kvclaims.vllm.pool import hexid
from kvclaims.vllm.xargs import RequestOps, parse, to_xargs

ENGINE_U, MODEL_LEN = 80, 2560  # the largest pool and prompt any instance may ask for

MAX_LOAD_STEPS = 8  # a host-tier load completes within the step that issues it (copies are synchronous)
HOST_BYTES = 16 << 20  # the host tier's memory: 512 blocks of the tiny model (32 KiB each)
HARNESS = "kvclaims.vllm.harness.HarnessScheduler"
LIVE = {
    RequestStatus.RUNNING: STATUS.running,
    RequestStatus.WAITING: STATUS.waiting,
    RequestStatus.PREEMPTED: STATUS.waiting,
}

_engines: dict[bool, VllmEngine] = {}


def shared_engine(async_scheduling: bool = False) -> VllmEngine:
    """The process's harness engine (one with vLLM's async scheduling, one without), started
    on first use."""
    if async_scheduling not in _engines:
        _engines[async_scheduling] = VllmEngine(
            U=ENGINE_U,
            max_model_len=MODEL_LEN,
            scheduler=HARNESS,
            host_bytes=HOST_BYTES,
            host_tier="claims",
            async_scheduling=async_scheduling,
        )
    return _engines[async_scheduling]


class VllmAdapter:
    capabilities = frozenset(
        {
            "evict_blocks",
            "reset_cache",
            "request_claims",
            "check_valid",
            "decode",
            "device_fault",
            "host_tier",
            "host_fault",
            "owner_ops",
        }
    )
    # vLLM's own ways where the contract leaves it free (`RuntimeProfile` names their sources).
    profile = RuntimeProfile(
        recomputes_last_block=True,
        keeps_duplicate_copies=True,
        takes_cached_while_free=True,
        copies_with_compute=True,
        restore_requests="kvclaims-restore:",
    )
    enforce = True
    async_scheduling = False

    def __init__(self, U: int, B: int = 32, R: int = 0, host_blocks: int = 0) -> None:
        self.engine = shared_engine(self.async_scheduling)
        sched = self.engine.scheduler
        assert isinstance(sched, HarnessScheduler), f"the shared engine runs {HARNESS}, not {type(sched)}"
        self.sched = sched
        self.engine.clear()
        tier = self.sched.host_connector()
        assert tier is not None, "the harness engine runs the claims host tier"
        check_int("runtime", "host_blocks", host_blocks, 0, tier.host.capacity)
        self.sched.restart(U=U, reserve=R, enforce=self.enforce, host_blocks=host_blocks)
        self.U, self.B, self.R, self.host_blocks = self.sched.pool.U, self.sched.block_size, R, host_blocks
        self.prefixes: dict[str, list[int]] = {}  # claim -> the tokens it claims (for restore_claim)
        self.restores = 0
        self.ended: dict[str, str] = {}  # finished or aborted through the protocol
        self.outcomes: dict[str, str] = {}  # request -> what became of the claim it carries

    # --- tokens and hashes --------------------------------------------------------------
    @staticmethod
    def _ids(tokens: Sequence[int]) -> list[int]:
        return [t % VOCAB for t in tokens]

    def block_hashes(self, tokens: Sequence[int]) -> list[str]:
        return [hexid(h) for h in self.sched.pool.chain(self._ids(tokens))]

    # --- claims -------------------------------------------------------------------------
    def submit_claim(
        self,
        claim_id: str,
        prefix: Sequence[int],
        *,
        strength: str = "hard",
        priority: int = 0,
        ttl: int | None = None,
        tiers: Sequence[str] = ("device",),
        policy: str | None = None,
    ) -> str:
        """The protocol's claim terms (`kvclaims.model.checks.claim_terms`, against this engine's
        book: token ids are any int >= 0, taken modulo the vocabulary), then vLLM's own limits."""
        tiers, policy = claim_terms(
            self.sched.book.claims, self.U, self.B, None, claim_id, prefix, strength, priority, ttl, tiers, policy
        )
        op = parse(to_xargs(claim_id, strength=strength, priority=priority, ttl=ttl, policy=policy, tiers=tiers)).claim
        assert op is not None, "to_xargs(claim_id, ...) always carries a claim"
        state = self.sched.submit_claim(op, self._ids(prefix))
        self.prefixes[claim_id] = list(prefix)
        return state

    def release_claim(self, claim_id: str) -> None:
        check_id(claim_id, "claim")
        self.sched.release_claim(claim_id)

    def claim_state(self, claim_id: str) -> str:
        check_id(claim_id, "claim")
        return self.sched.book.get(claim_id).state

    # --- owner operations ---------------------------------------------------------------
    def demote_claim(self, claim_id: str) -> None:
        check_id(claim_id, "claim")
        self.sched.demote_claim(claim_id)

    def offload_claim(self, claim_id: str) -> None:
        """The claim's verified host copies are pinned and its device blocks go (vLLM made
        the copies when the prefix was computed; `_step_for` lets them complete)."""
        check_id(claim_id, "claim")
        self.sched.offload_claim(claim_id)

    def restore_claim(self, claim_id: str) -> str:
        """vLLM restores through its load path only, for a request: a minimal request for
        the claim's prefix loads it and ends (it is in the trace, under an id of its own).
        Checked first as the reference runtime checks: the claim is offloaded (else
        IllegalTransition), the device has room for its missing blocks (else NoRoom) and the
        reserve allows it back (else InvalidInput). Returns the claim's state: materialized,
        or failed when a copy failed its check."""
        check_id(claim_id, "claim")
        book = self.sched.book
        c = book.check_event(claim_id, EVENT.restore)
        chain = book.entries[claim_id].key
        resident = [b for b in map(self.sched.pool.block, chain) if b is not None]
        missing = len(chain) - len(resident)
        if missing > self.sched.pool.evictable(resident):
            raise NoRoom(f"claim {claim_id!r}: no room on the device for {missing} blocks")
        if not book.restore_fits(c):
            raise InvalidInput(f"claim {claim_id!r}: restoring would exceed the reserve")
        assert self.sched.host is not None, "the harness engine runs the claims host tier"
        if not missing:
            self.sched.host.restore(c, set())
            return c.state
        self.restores += 1
        rid = f"{self.profile.restore_requests}{self.restores}:{claim_id}"
        self.sched.restoring[rid] = claim_id
        self.submit_request(rid, self.prefixes[claim_id])
        if self.request_status(rid) == STATUS.running:
            self.finish(rid, admit=False)  # what it recomputes after a failed load is not cached
        return c.state

    # --- requests -----------------------------------------------------------------------
    def submit_request(
        self, request_id: str, tokens: Sequence[int], *, claim: Mapping[str, Any] | None = None
    ) -> Decision:
        """Queue the prompt and run one engine step for it alone: admitted (its prefill
        ran), waiting, or refused by the integration. `claim` travels as the request's
        `kvclaims_*` arguments, exactly as a client sends it (RKC-RT-8)."""
        check_id(request_id, "request")
        if request_id in self.engine.internal:
            raise DuplicateId(f"request {request_id!r} already exists")
        check_tokens(tokens, f"request {request_id!r}", "tokens", None)
        ops = {} if claim is None else self._carried(request_id, tokens, claim)
        try:
            self.engine.submit_request(request_id, self._ids(tokens), max_tokens=MODEL_LEN, ignore_eos=True, **ops)
        except ValueError as exc:  # vLLM's own input checks (prompt past the model length)
            raise InvalidInput(f"request {request_id!r}: {exc}") from None
        if claim is not None:
            self.outcomes[request_id] = PENDING
        self._step_for(request_id)
        status = self.request_status(request_id)
        if status == STATUS.refused:
            note = self.engine.results[request_id].kvclaims
            return Decision(note["refused"], tuple(note["blocking_claims"]))
        return Decision({STATUS.running: "admit", STATUS.waiting: "wait"}[status])

    def _carried(self, request_id: str, tokens: Sequence[int], claim) -> dict[str, Any]:
        """The protocol's checks of a carried claim; its `to_xargs` keywords."""
        cid, terms = request_claim(self.sched.book.claims, self.U, self.B, None, request_id, tokens, claim)
        blocks = terms.get("blocks") or len(tokens) // self.B
        self.prefixes[cid] = list(tokens[: blocks * self.B])
        return {"claim": cid, **terms}

    def claim_outcome(self, request_id: str) -> str | None:
        """What became of the request's claim (see the refimpl's `claim_outcome`), read off
        what the integration reports to the client."""
        self.request_status(request_id)  # a known request
        return self.outcomes.get(request_id)

    def _note_outcomes(self) -> None:
        """Settle pending carried claims from the notes the integration writes for clients."""
        for rid in [r for r, o in self.outcomes.items() if o == PENDING]:
            result = self.engine.results.get(rid)
            note = self.sched.notes.get(rid) or (result.kvclaims if result else {})
            if "claims" in note:
                self.outcomes[rid] = APPLIED
            elif "claims_not_applied" in note:
                self.outcomes[rid] = NOT_APPLIED

    def _step_for(self, request_id: str) -> None:
        """One engine step for the request alone (more while it loads from the host tier,
        which admits it in the step after its load), then the steps that complete the
        host tier's transfers (it stores a computed block one step later)."""
        self.sched.only = request_id
        try:
            self.engine.step()
            for _ in range(MAX_LOAD_STEPS):
                live = self.sched.requests.get(self.engine.internal[request_id])
                if live is None or live.status != RequestStatus.WAITING_FOR_REMOTE_KVS:
                    break
                self.engine.step()
            else:
                raise AssertionError(f"request {request_id!r} still loading after {MAX_LOAD_STEPS} steps")
        finally:
            self.sched.only = None
            self.engine.drain()
            self._note_outcomes()
        self.engine.settle()

    def request_status(self, request_id: str) -> str:
        check_id(request_id, "request")
        if request_id not in self.engine.internal:
            raise UnknownId(f"no request {request_id!r}")
        live = self.sched.requests.get(request_id)
        if live is not None and live.status in LIVE:
            return LIVE[live.status]
        if request_id in self.ended:
            return self.ended[request_id]
        result = self.engine.results.get(request_id)
        return STATUS.refused if result is not None and result.refused else STATUS.finished

    def hit_blocks(self, request_id: str) -> int:
        self.request_status(request_id)  # a known request
        for rec in self.sched.trace.records:
            if rec["kind"] == "request_admit" and rec["request"] == request_id:
                return len(rec["hit_blocks"])
        raise InvalidInput(f"request {request_id!r} was not admitted")

    def decode(self, request_id: str, tokens: Sequence[int]) -> Decision:
        """The running request generates `tokens`, decided as vLLM's growth is under claims
        (`ClaimsScheduler.growth`): admitted, one engine step computes them (the token its
        last step sampled is replaced by `tokens[0]`: the protocol names what it generates);
        a growth that must wait leaves it unchanged; a claim-blocked or too-large one ends it
        refused, with attribution."""
        self._require(request_id, STATUS.running)
        check_tokens(tokens, f"request {request_id!r}", "tokens", None)
        req = self.sched.requests[self.engine.internal[request_id]]
        A, d = self.sched.growth(req, len(tokens))
        if d is not None and d.outcome == "wait":
            return d
        if d is not None and d.outcome != "admit":
            self.sched._refuse(req, d)
            self._step_for(request_id)
            return d
        _generated(req, self._ids(tokens), self.B)
        self.sched.growing = request_id
        try:
            self.engine.step()
        finally:
            self.sched.growing = None
            self.engine.drain()
        return Decision("admit")

    def finish(self, request_id: str, admit: bool = True) -> None:
        """End a running request as if it completed; admit=False is write no-admit."""
        self._require(request_id, STATUS.running)
        if not isinstance(admit, bool):
            raise InvalidField(f"request {request_id!r}", "admit", f"must be a bool, got {admit!r}")
        if not admit:
            self.sched.ops[request_id] = replace(self.sched.ops.get(request_id, RequestOps()), no_admit=True)
        self._note_outcomes()
        self.sched.finish_requests(request_id, RequestStatus.FINISHED_STOPPED)
        self.engine.abort(request_id)  # the engine's own record of it; the scheduler's is gone
        self.ended[request_id] = STATUS.finished

    def abort(self, request_id: str) -> None:
        self._require(request_id, STATUS.waiting, STATUS.running)
        self._note_outcomes()
        self.engine.abort(request_id)  # the scheduler frees it now, saying what did not apply
        self._note_outcomes()
        self.ended[request_id] = STATUS.aborted

    def _require(self, request_id: str, *statuses: str) -> None:
        status = self.request_status(request_id)
        if status not in statuses:
            raise InvalidInput(f"request {request_id!r} is {status}")

    def step(self, ticks: int = 1) -> None:
        check_int("step", "ticks", ticks, 1, MAX_TICKS)
        for _ in range(ticks):
            self.sched.tick()
            for request in list(self.sched.waiting):
                self._step_for(request.request_id)

    # --- operator actions ---------------------------------------------------------------
    def reset_prefix_cache(self) -> None:
        self.sched.drop_prefix_cache()

    def evict_blocks(self, hashes: Sequence[str]) -> None:
        """A connector reports the blocks with these hashes invalid: each must be resident."""
        check_list("evict_blocks", "hashes", hashes)
        for i, h in enumerate(hashes):
            check_hash("evict_blocks", f"hashes[{i}]", h)
        resident = self.resident()
        gone = [h for h in dict.fromkeys(hashes) if h not in resident]
        if not hashes or gone:
            raise UnknownId(f"not resident on the device: {gone or 'no blocks given'}")
        self.sched.evict_blocks(self.sched.pool.copies(hashes))

    def inject_device_fault(self, h: str) -> None:
        """Corrupt the resident block `h` (every indexed copy) in vLLM's KV cache tensors
        and report it: claims holding it fail, then it leaves the prefix cache."""
        check_hash("inject_device_fault", "block", h)
        if h not in self.resident():
            raise UnknownId(f"block {h!r} is not resident on the device")
        self.engine.inject_device_fault(self.sched.pool.copies([h]))

    def inject_host_fault(self, h: str) -> None:
        """Corrupt the host copy of block `h` that an offloaded claim pins (on the worker,
        with the next engine step); a load checks it against its stored checksum."""
        check_hash("inject_host_fault", "block", h)
        self.sched.inject_host_fault(h)

    # --- observation --------------------------------------------------------------------
    def resident(self) -> set[str]:
        return set(self.sched.pool.cached_hashes())

    def counts(self) -> PoolCounts:
        return self.sched.pool.classes(self.sched.book.holders, self.sched.book.blocking_ids())[0]

    def trace_lines(self, start: int = 0) -> list[str]:
        return [json.dumps(r) for r in self.sched.trace.records[start:]]

    def check_valid(self) -> None:
        """The claim book's indexes, and vLLM's block pool as the book relies on it: a
        claim's hold is one reference, and vLLM's free queue holds exactly the unreferenced
        blocks but those the harness withholds to size the pool (raises AssertionError
        naming what drifted)."""
        book, bp = self.sched.book, self.sched.pool.bp
        withheld = {b.block_id for b in self.sched.pool.withheld}
        book.check_valid()
        if self.sched.host:
            self.sched.host.check_valid()
        for b in bp.blocks:
            held = len(book.holders.get(b.block_id, ()))
            assert b.ref_cnt >= held, f"block {b.block_id}: {held} claims hold it, ref_cnt {b.ref_cnt}"
        unreferenced = sum(b.ref_cnt == 0 and not b.is_null and b.block_id not in withheld for b in bp.blocks)
        assert bp.get_num_free_blocks() == unreferenced, f"free queue {bp.get_num_free_blocks()} != {unreferenced}"


def _generated(req: Any, tokens: list[int], B: int) -> None:
    """`tokens` as what `req` generated since its last computed token: they replace the
    one token vLLM sampled there (not computed yet, so not cached; its block's hash, if it
    completed one, is recomputed)."""
    pos = req.num_computed_tokens
    assert req.num_tokens == pos + 1, f"{req.request_id}: one sampled token past the computed ones"
    del req.block_hashes[pos // B :]
    req._output_token_ids[-1] = req._all_token_ids[-1] = tokens[0]
    req._output_token_ids.extend(tokens[1:])
    req._all_token_ids.extend(tokens[1:])
    req.update_block_hashes()


class AsyncVllmAdapter(VllmAdapter):
    """The same engine with vLLM's async scheduling on, the default on GPUs: a step's output
    is processed while the next is scheduled, and the integration runs as
    `AsyncClaimsScheduler` (on CPU, `VllmEngine` undoes vLLM's override in this process).
    Each operation steps until no step that computes is in flight (`VllmEngine.drain`)."""

    async_scheduling = True


class StockVllmAdapter(VllmAdapter):
    """Stock vLLM allocation: claims are recorded and traced but hold nothing."""

    enforce = False

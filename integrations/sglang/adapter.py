"""SGLang as a runtime under test: the adapter protocol (`kvclaims.conformance.adapter`) over
SGLang's own radix cache, allocator and KV pool (`kvclaims.sglang.radix`), with the
contract enforced (`SglangAdapter`, ``--runtime sglang``) or claims only witnessed
(`StockSglangAdapter`, ``--runtime sglang-stock``).

    kvclaims litmus --runtime sglang
    kvclaims fuzz --runtime sglang --steps 1000

What SGLang fixes, the adapter reports rather than hides:

- **Pages.** A block is one of SGLang's pages (``page_size`` = `B`, any size), named by
  its chain hash (``get_hash_str``, its KV events' ids); its pages 1..U are the pool.
- **Eviction.** SGLang evicts whole unlocked LRU leaves, and asks one spare page per
  request on top of the new pages: it may evict more cached pages than a request needs.
  Its trace says which; the oracle adopts them (the contract leaves that to the runtime).
- **Indexing.** A prefill's pages enter the tree when computed (SGLang's checkpoint of a
  running request), so they are reusable while it runs, as the contract's are. A hit is
  capped at the prompt length minus one token (``Req.init_next_round_input``): a
  whole-page prompt computes its last page again (`RuntimeProfile.recomputes_last_block`).
- **Write no-admit.** The request's own leaves past its prefix hit leave the tree when it
  ends (SGLang's leaf eviction, ``UnifiedRadixCache._evict_device_leaf``), unless a claim
  or another request holds them.
- **Logical time.** `step` ticks the clock (TTLs) and retries waiting requests in order.
- **Capabilities.** `check_valid`, `verify_content` (the KV pool holds values derived
  from each token and position), `request_claims` (a claim carried by a request, applied
  at its admission) and `decode` (generated tokens computed as SGLang computes a later
  chunk: the row grows through the same allocation, then a checkpoint), and with
  ``host_blocks`` > 0 SGLang's host tier, HiCache (`kvclaims.sglang.host`): ``host_tier``,
  ``owner_ops`` and ``host_fault``. Stock SGLang has no claims to offload, so
  ``sglang-stock`` lists none of these three.
- **Not applicable.** SGLang flushes its cache only when no request is queued or running
  (``Scheduler.flush_cache``: "Cache not flushed because there are pending requests"), so
  a reset beside a running request cannot be expressed (``reset_cache``); and it has no
  path that declares a device page's KV invalid while it stays allocated (vLLM's
  connectors report invalid blocks; SGLang's tree drops a page only with the pages after
  it), so neither ``evict_blocks`` nor ``device_fault``.
- **Bad input.** Every call is checked by the reference runtime's rules first
  (`kvclaims.model.checks`): the same typed error for the same bad call, nothing changed.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from kvclaims.errors import DuplicateId, InvalidField, InvalidInput, UnknownId
from kvclaims.model.checks import MAX_TICKS, check_hash, check_id, check_int, check_tokens, request_claim
from kvclaims.model.feasibility import Decision, PoolCounts
from kvclaims.model.names import EVENT, STATUS
from kvclaims.model.profile import RuntimeProfile
from kvclaims.model.terms import APPLIED, NOT_APPLIED, PENDING
from kvclaims.sglang.claims import RadixClaims


HOST = frozenset({"host_tier", "owner_ops", "host_fault"})


class SglangAdapter:
    capabilities = frozenset({"check_valid", "verify_content", "request_claims", "decode"}) | HOST
    profile = RuntimeProfile(
        recomputes_last_block=True, evicts_whole_nodes=True, shares_recomputed=True, keeps_parents=True
    )
    enforce = True

    def __init__(self, U: int, B: int = 16, R: int = 0, host_blocks: int = 0) -> None:
        check_int("runtime", "U", U, 1, 1 << 20)
        check_int("runtime", "B", B, 1, 1 << 12)
        check_int("runtime", "host_blocks", host_blocks, 0, 1 << 20)
        host_blocks = host_blocks if HOST <= self.capabilities else 0
        self.rt = RadixClaims(U, B, R, host_blocks, enforce=self.enforce)
        self.U, self.B, self.R, self.host_blocks = U, B, R, host_blocks
        self.status: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self.waiting: dict[str, list[int]] = {}
        self.carried: dict[str, tuple[str, dict]] = {}  # request -> the claim it carries (id, terms)
        self.outcomes: dict[str, str] = {}  # request -> what became of its claim

    # --- claims ----------------------------------------------------------------------------
    def block_hashes(self, tokens: Sequence[int]) -> list[str]:
        return self.rt.pool.page_hashes(list(tokens))

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
        return self.rt.submit_claim(
            claim_id, prefix, strength=strength, priority=priority, ttl=ttl, tiers=tiers, policy=policy
        )

    def release_claim(self, claim_id: str) -> None:
        book = self.rt.book
        book.end(book.check_event(claim_id, EVENT.release), EVENT.release, reason="owner")

    def claim_state(self, claim_id: str) -> str:
        return self.rt.book.get(claim_id).state

    # --- owner operations ------------------------------------------------------------------
    def demote_claim(self, claim_id: str) -> None:
        book = self.rt.book
        book.demote(book.check_event(claim_id, EVENT.demote), reason="owner")

    def offload_claim(self, claim_id: str) -> None:
        self.rt.offload_claim(claim_id)

    def restore_claim(self, claim_id: str) -> str:
        return self.rt.restore_claim(claim_id)

    def inject_host_fault(self, h: str) -> None:
        """Corrupt the host copy of page `h` that an offloaded claim pins; a restore checks it."""
        check_hash("inject_host_fault", "block", h)
        if self.rt.host is None or h not in self.rt.host.owners:
            raise UnknownId(f"block {h!r} is not in the host tier")
        self.rt.trace.emit("operator", action="inject_host_fault", blocks=[h])
        self.rt.host.corrupt(h)

    # --- requests --------------------------------------------------------------------------
    def submit_request(
        self, request_id: str, tokens: Sequence[int], *, claim: Mapping[str, Any] | None = None
    ) -> Decision:
        """Queue the prompt and decide it now. `claim` (`{"id": ..., **claim terms}`) claims
        the prompt's full pages: checked now, applied when the request is admitted if its id
        is still free, else never (RKC-RT-8; `claim_outcome`)."""
        check_id(request_id, "request")
        if request_id in self.status:
            raise DuplicateId(f"request {request_id!r} already exists")
        check_tokens(tokens, f"request {request_id!r}", "tokens", None)
        if claim is not None:
            self.carried[request_id] = request_claim(
                self.rt.book.claims, self.U, self.B, None, request_id, tokens, claim
            )
            self.outcomes[request_id] = PENDING
        d = self.rt.submit_request(request_id, list(tokens))
        self._decided(request_id, list(tokens), d)
        return d

    def _decided(self, request_id: str, tokens: list[int], d: Decision) -> None:
        if d.outcome == "admit":
            self.status[request_id] = STATUS.running
            self.hits[request_id] = self.rt.running[request_id].hits
            self.waiting.pop(request_id, None)
            self._apply_claim(request_id, tokens)
        elif d.outcome == "wait":
            self.status[request_id] = STATUS.waiting
            self.waiting[request_id] = tokens
        else:
            self.status[request_id] = STATUS.refused
            self.waiting.pop(request_id, None)
            self._never_applied(request_id)

    def _apply_claim(self, request_id: str, tokens: list[int]) -> None:
        """At admission the carried claim is submitted, if its id is still free."""
        if request_id not in self.carried:
            return
        cid, terms = self.carried.pop(request_id)
        if cid in self.rt.book.claims:
            self.outcomes[request_id] = NOT_APPLIED
            return
        self.rt.submit_claim(cid, tokens[: len(tokens) - len(tokens) % self.B], **terms)
        self.outcomes[request_id] = APPLIED

    def _never_applied(self, request_id: str) -> None:
        self.carried.pop(request_id, None)
        if self.outcomes.get(request_id) == PENDING:
            self.outcomes[request_id] = NOT_APPLIED

    def claim_outcome(self, request_id: str) -> str | None:
        """None (it carried no claim), pending, applied, or not applied."""
        self.request_status(request_id)
        return self.outcomes.get(request_id)

    def request_status(self, request_id: str) -> str:
        check_id(request_id, "request")
        if request_id not in self.status:
            raise UnknownId(f"no request {request_id!r}")
        return self.status[request_id]

    def hit_blocks(self, request_id: str) -> int:
        self.request_status(request_id)
        if request_id not in self.hits:
            raise InvalidInput(f"request {request_id!r} was not admitted")
        return self.hits[request_id]

    def decode(self, request_id: str, tokens: Sequence[int]) -> Decision:
        """The running request generates `tokens` (`RadixClaims.decode`): admitted, waiting
        (unchanged), or refused, which ends it."""
        self._require(request_id, STATUS.running)
        check_tokens(tokens, f"request {request_id!r}", "tokens", None)
        d = self.rt.decode(request_id, list(tokens))
        if d.outcome not in ("admit", "wait"):
            self.status[request_id] = STATUS.refused
        return d

    def finish(self, request_id: str, admit: bool = True) -> None:
        self._require(request_id, STATUS.running)
        if not isinstance(admit, bool):
            raise InvalidField(f"request {request_id!r}", "admit", f"must be a bool, got {admit!r}")
        self.rt.finish(request_id, admit=admit)
        self.status[request_id] = STATUS.finished

    def abort(self, request_id: str) -> None:
        self._require(request_id, STATUS.waiting, STATUS.running)
        self.waiting.pop(request_id, None)
        self.rt.abort(request_id)
        self._never_applied(request_id)
        self.status[request_id] = STATUS.aborted

    def _require(self, request_id: str, *statuses: str) -> None:
        status = self.request_status(request_id)
        if status not in statuses:
            raise InvalidInput(f"request {request_id!r} is {status}")

    def step(self, ticks: int = 1) -> None:
        check_int("step", "ticks", ticks, 1, MAX_TICKS)
        for _ in range(ticks):
            self.rt.tick()
            for rid, tokens in list(self.waiting.items()):
                self._decided(rid, tokens, self.rt.retry(rid, tokens))

    # --- observation -----------------------------------------------------------------------
    def resident(self) -> set[str]:
        return set(self.rt.resident)

    def counts(self) -> PoolCounts:
        return self.rt.classes()[0]

    def trace_lines(self, start: int = 0) -> list[str]:
        return [json.dumps(r) for r in self.rt.trace.records[start:]]

    def verify_prefix(self, tokens: Sequence[int]) -> bool:
        """Does the device KV of the resident pages of `tokens` hold exactly their KV?"""
        pages, node = self.rt.pool.match(list(tokens))
        return pages > 0 and self.rt.pool.verify(list(tokens), self.rt.pool.path_pages(node))

    def check_valid(self) -> None:
        self.rt.check_valid()


class StockSglangAdapter(SglangAdapter):
    """Stock SGLang: claims are recorded and traced but hold nothing (nothing to offload)."""

    capabilities = SglangAdapter.capabilities - HOST
    enforce = False

"""The reference runtime: claims, requests, admission and operator actions over real KV blocks.

Every claim move goes through the spec's lifecycle machine and every state
change is one record on the trace, in the order it happened. Two rules shape
the code: a claim's loss event is emitted before any of its blocks is evicted
or reused (RKC-RT-1, RKC-RT-5), and every public method validates its input
completely before it changes anything (RKC-RT-4).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from itertools import islice
from typing import IO, Any, Mapping, Sequence

import torch

from kvclaims import __version__
from kvclaims.claimbook import ClaimBook
from kvclaims.errors import DuplicateId, GuardRejected, InvalidField, InvalidInput, NoRoom, UnknownId
from kvclaims.model.claim import Claim
from kvclaims.model.checks import (
    MAX_TICKS,
    check_hash,
    check_id,
    check_int,
    check_list,
    check_tokens,
    claim_terms,
    got,
    request_claim,
)
from kvclaims.model.feasibility import Decision, PoolCounts, decide, outcome
from kvclaims.model.terms import APPLIED, NOT_APPLIED, PENDING
from kvclaims.refimpl.claims import Request
from kvclaims.refimpl.host import HostTier
from kvclaims.refimpl.kv import CACHE_IDENTITY, ROOT_HASH, block_hash, chain_hashes, content
from kvclaims.refimpl.pool import DevicePool
from kvclaims.refimpl.sides import DeviceSide, HostSide
from kvclaims.spec import Spec, load
from kvclaims.trace import TraceWriter
from kvclaims.model.names import EVENT, STATUS


class Runtime:
    """A paged KV pool of `U` blocks of `B` tokens with reserve `R` and a host tier of `host_blocks`.

    With `vocab`, token ids must lie in [0, vocab); without it, any int >= 0 is a token.
    Claims live in a `ClaimBook` (`Book`: a seeded mutant may swap in a broken one).
    """

    Book = ClaimBook

    def __init__(
        self,
        U: int,
        B: int,
        R: int = 0,
        *,
        host_blocks: int = 0,
        heads: int = 2,
        head_dim: int = 8,
        device=None,
        spec: Spec | None = None,
        sink: IO[str] | None = None,
        vocab: int | None = None,
    ) -> None:
        check_int("runtime", "U", U, 1)
        for name, value, low, high in (
            ("B", B, 1, None),
            ("R", R, 0, U - 1),
            ("host_blocks", host_blocks, 0, None),
            ("heads", heads, 1, None),
            ("head_dim", head_dim, 1, None),
        ):
            check_int("runtime", name, value, low, high)
        if vocab is not None:
            check_int("runtime", "vocab", vocab, 1)
        self.spec = spec or load()
        self.U, self.B, self.R, self.vocab = U, B, R, vocab
        try:
            self.pool = DevicePool(U, B, heads, head_dim, device)
        except (RuntimeError, AssertionError, TypeError) as exc:  # unknown device, no CUDA, no memory
            raise InvalidField("runtime", "device", f"{device!r} cannot hold the KV pool: {exc}") from None
        self.host = HostTier(host_blocks, tuple(self.pool.kv.shape[1:]), pin=self.pool.device.type == "cuda")
        self.requests: dict[str, Request] = {}
        self.waiting: list[str] = []
        self._offloaded = self.spec.lifecycle.dests(EVENT.offload)
        # Invalidation epochs (the spec's [invalidation]): `epoch` counts the operator
        # actions that declared KV invalid, `weights` those that changed every block's KV.
        self.epoch = self.weights = 0
        self.trace = TraceWriter(sink)
        self.trace.emit(
            "runtime",
            runtime="refimpl",
            version=__version__,
            U=U,
            B=B,
            R=R,
            host_blocks=host_blocks,
            device=str(self.pool.device),
            **CACHE_IDENTITY,
        )
        host = HostSide(self.host, self.pool, self.trace)
        self.book = self.Book(self.spec, self.trace, DeviceSide(self.pool), U=U, R=R, host=host)
        self.claims: dict[str, Claim] = self.book.claims

    @property
    def time(self) -> int:
        return self.trace.time

    # ------------------------------------------------------------------ queries
    def claim_state(self, claim_id: str) -> str:
        return self._claim(claim_id).state

    def counts(self) -> PoolCounts:
        return self._counts(())

    def check_valid(self) -> None:
        """Walk the pool, the claim book and what ties them (claims' holds and requests'
        refs per slot); raises AssertionError naming what drifted. For tests."""
        self.pool.check_valid()
        self.book.check_valid()
        p = self.pool
        refs = Counter(s for r in self.requests.values() for s in r.slots)
        for s in range(self.U):
            assert p.holders[s] == self.book.holders.get(s, set()), f"slot {s}: pool holders {p.holders[s]} != book's"
            assert p.refs[s] == refs[s], f"slot {s}: {p.refs[s]} refs, {refs[s]} from requests' slots"

    def feasibility(self, tokens: Sequence[int]) -> Decision:
        """What submitting `tokens` now would decide, changing nothing (a dry run)."""
        check_tokens(tokens, "feasibility", "tokens", self.vocab)
        hits = self._hits(chain_hashes(list(tokens), self.B))
        return self._decide(-(-len(tokens) // self.B) - len(hits), hits)

    def verify_request(self, request_id: str) -> bool:
        """Does every block the request holds contain exactly the KV of its tokens under the
        weights it was admitted with? A request that reused a block computed under other
        weights (stale KV) or a corrupt one fails."""
        r = self._request(request_id)
        return self._holds(r.slots, r.tokens, r.weights)

    def _holds(self, slots: Sequence[int], tokens: Sequence[int], weights: int) -> bool:
        """Does `slots[i]` hold exactly the KV of block i of `tokens` (positions from 0) under
        `weights`? The full blocks are compared in one batch with their expected KV, memoized:
        a test verifies the same claims' and requests' blocks after every step."""
        p, B = self.pool, self.B
        full = min(len(slots), len(tokens) // B)
        if full:
            want = _full_blocks(tuple(tokens[: full * B]), B, p.heads, p.head_dim, p.device, weights)
            if not torch.equal(p.kv.index_select(0, torch.tensor(slots[:full], device=p.device)), want):
                return False
        return full == len(slots) or p.verify(slots[full], tokens[full * B : (full + 1) * B], full * B, weights)

    def _claim(self, claim_id: str) -> Claim:
        return self.book.get(claim_id)

    def _request(self, request_id: str) -> Request:
        check_id(request_id, "request")
        if request_id not in self.requests:
            raise UnknownId(f"no request {request_id!r}")
        return self.requests[request_id]

    def _counts(self, own) -> PoolCounts:
        """Block classes without `own`, the deciding request's prefix hits: it keeps them
        whatever happens, so they are outside the pool it competes for. O(len(own)):
        the pool keeps its class counts as it changes."""
        p = self.pool
        n = dict(p.count)
        for slot in own:
            if p.klass[slot]:
                n[p.klass[slot]] -= 1
        return PoolCounts(U=self.U - len(own), free=len(p.free), **n)

    def _blocking(self, own) -> dict[str, frozenset]:
        """The blocks each blocking claim protects outside `own` (needed only to attribute)."""
        out: dict[str, set[str]] = {}
        p = self.pool
        for slot in p.protected.difference(own):
            h = p.hash_of[slot]
            assert h is not None, f"protected slot {slot} is not indexed"
            for c in p.holders[slot]:
                if self.claims[c].blocking:
                    out.setdefault(c, set()).add(h)
        return {c: frozenset(b) for c, b in out.items()}

    def _decide(self, A: int, own) -> Decision:
        counts = self._counts(own)
        name = outcome(A, counts, self.spec)
        return decide(A, counts, self._blocking(own), self.spec) if name == "refuse_blocked" else Decision(name)

    # ------------------------------------------------------------------ claims
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
        """Submit a claim on a whole-block prefix; returns its state after accept/refuse (and materialize).

        `policy` defaults to refuse for hard claims, demote for soft ones. What is rejected:
        `kvclaims.model.checks.claim_terms`.
        """
        tiers, policy = claim_terms(
            self.claims, self.U, self.B, self.vocab, claim_id, prefix, strength, priority, ttl, tiers, policy
        )
        chain = chain_hashes(list(prefix), self.B)
        return self.book.submit(
            claim_id, chain, chain, strength=strength, priority=priority, ttl=ttl, tiers=tiers, policy=policy
        )

    def release_claim(self, claim_id: str) -> None:
        self.book.end(self.book.check_event(claim_id, EVENT.release), EVENT.release, reason="owner")

    def demote_claim(self, claim_id: str) -> None:
        self.book.demote(self.book.check_event(claim_id, EVENT.demote), reason="owner")

    def offload_claim(self, claim_id: str) -> None:
        c = self.book.check_event(claim_id, EVENT.offload)
        if not c.host_allowed:
            raise GuardRejected(claim_id, c.state, EVENT.offload, "host_allowed")
        if not self.host.room(c.chain):
            raise NoRoom(
                f"claim {claim_id!r}: the host tier has {len(self.host.free)} free blocks, "
                f"too few for its {len(c.chain)}"
            )
        self.book.offload(c, reason="owner")

    def restore_claim(self, claim_id: str) -> str:
        """Bring an offloaded claim back; returns its state (materialized, or failed on a mismatch)."""
        c = self.book.check_event(claim_id, EVENT.restore)
        p = self.pool
        resident = [s for s in map(p.lookup, c.chain) if s is not None]
        missing = [h for h in c.chain if p.lookup(h) is None]
        if len(missing) > len(p.free) + len(set(p.lru) - set(resident)):
            raise NoRoom(f"claim {claim_id!r}: no room on the device for {len(missing)} blocks")
        if not self.book.restore_fits(c):
            raise InvalidInput(f"claim {claim_id!r}: restoring would exceed the reserve")
        for s in resident:  # pinned while room is made, so eviction cannot take them
            p.refs[s] += 1
            p.settle(s)
        slots = self._obtain(len(missing), yielding=False)
        for s in resident:
            p.refs[s] -= 1
        self._restore(c, dict(zip(missing, slots)))
        for s in slots + resident:
            p.settle(s)
        return c.state

    def _restore(self, c: Claim, targets: dict[str, int]) -> None:
        """Copy host blocks into `targets` (hash -> free slot) and verify; fail closed on a mismatch.

        A copied block's checksum is its host copy's, taken as the copy read it (see
        `HostTier`); a block still resident is digested on the device. Nothing copied is
        registered before every checksum matches, and a mismatch wipes what was copied."""
        arrived = dict(zip(targets, self.host.load(list(targets), self.pool.kv, list(targets.values()))))
        slots = [targets[h] if h in targets else self.pool.index[h] for h in c.chain]
        resident = [h for h in c.chain if h not in targets]
        arrived.update(zip(resident, self.pool.digests([self.pool.index[h] for h in resident])))
        if not self.book.matches(arrived, c):
            for slot in targets.values():
                self.pool.kv[slot].zero_()
            self.book.end(c, EVENT.fail, reason="checksum_mismatch")
            return
        for h, slot in targets.items():
            self.pool.register(slot, h)
        self.trace.emit("block_restore", claim=c.id, blocks=list(targets), tier="device")
        self.book.fire(c, EVENT.restore, {"arrived": arrived})
        self.book.hold(c, slots)
        assert self.book.host is not None
        self.book.host.drop(c, reason=EVENT.restore)

    # ------------------------------------------------------------------ requests
    def submit_request(
        self, request_id: str, tokens: Sequence[int], *, claim: Mapping[str, Any] | None = None
    ) -> Decision:
        """Submit a prompt; it is admitted, queued to wait, or refused now (with attribution).

        `claim` (`{"id": ..., **submit_claim keywords}`) claims the prompt's full blocks. It is
        validated now and applies when the request is admitted, or never (RKC-RT-8): a request
        refused or aborted first makes no claim; see `claim_outcome`.
        """
        check_id(request_id, "request")
        if request_id in self.requests:
            raise DuplicateId(f"request {request_id!r} already exists")
        check_tokens(tokens, f"request {request_id!r}", "tokens", self.vocab)
        if claim is not None:
            request_claim(self.claims, self.U, self.B, self.vocab, request_id, tokens, claim)
        r = Request(request_id, list(tokens), chain_hashes(list(tokens), self.B), claim=claim)
        self.requests[request_id] = r
        self.trace.emit("request_submit", request=request_id, tokens=len(r.tokens), blocks=r.hashes)
        return self._try_admit(r)

    def claim_outcome(self, request_id: str) -> str | None:
        """What became of the request's claim: None (it carried none), pending (not yet
        admitted), applied, or not applied (refused or aborted first, or the id was
        taken by the time it was admitted)."""
        return self._request(request_id).claim_outcome

    def _apply_claim(self, r: Request) -> None:
        """RKC-RT-8: at admission the request's claim is submitted, if its id is still free."""
        if r.claim is None:
            return
        cid, terms = r.claim["id"], {k: v for k, v in r.claim.items() if k != "id"}
        if cid in self.claims:
            r.claim_outcome = NOT_APPLIED
            return
        self.submit_claim(cid, r.tokens[: len(r.hashes) * self.B], **terms)
        r.claim_outcome = APPLIED

    def step(self, ticks: int = 1) -> None:
        """Advance the logical clock: expire claims whose TTL ran out, then retry waiting requests."""
        check_int("step", "ticks", ticks, 1, MAX_TICKS)
        for _ in range(ticks):
            self.trace.time += 1
            self.book.expire(self.time)
            for rid in list(self.waiting):
                self._try_admit(self.requests[rid])

    def decode(self, request_id: str, tokens: Sequence[int]) -> Decision:
        """Append generated tokens to a running request, growing it block by block.

        If the new blocks do not fit now the request is unchanged and the decision
        says why (`wait`: retry after others finish); a claim-blocked or too-large
        growth ends the request as refused, so it never waits on claims forever.
        """
        r = self._request(request_id)
        if r.status != STATUS.running:
            raise InvalidInput(f"request {request_id!r} is {r.status}, not running")
        check_tokens(tokens, f"request {request_id!r}", "tokens", self.vocab)
        total = len(r.tokens) + len(tokens)
        A = -(-total // self.B) - len(r.slots)
        d = self._decide(A, r.slots)
        if d.outcome == "admit":
            slots = self._obtain(A, yielding=True)
            self.trace.emit("request_grow", request=request_id, tokens=len(tokens), new_blocks=A)
            start = len(r.tokens)
            r.tokens += list(tokens)
            self._take(r, slots)
            self._compute(r, start)
            self.book.materialize_ready()
        elif d.outcome != "wait":
            self._refuse(r, d)
            self._release(r, admit=True)
        return d

    def finish(self, request_id: str, admit: bool = True) -> None:
        """End a running request; `admit=False` is write no-admit: the blocks it computed are not cached."""
        r = self._request(request_id)
        if r.status != STATUS.running:
            raise InvalidInput(f"request {request_id!r} is {r.status}, not running")
        if not isinstance(admit, bool):
            raise InvalidField(f"request {request_id!r}", "admit", f"must be a bool, {got(admit)}")
        r.status = STATUS.finished
        self.trace.emit("request_finish", request=request_id, admit=admit)
        self._release(r, admit=admit)

    def abort(self, request_id: str) -> None:
        r = self._request(request_id)
        if r.status not in (STATUS.waiting, STATUS.running):
            raise InvalidInput(f"request {request_id!r} is {r.status}, it cannot be aborted")
        if r.status == STATUS.waiting:
            self.waiting.remove(request_id)
        r.status = STATUS.aborted
        _never_applied(r)
        self.trace.emit("request_abort", request=request_id)
        self._release(r, admit=True)

    def _try_admit(self, r: Request) -> Decision:
        hits = self._hits(r.hashes)
        A = -(-len(r.tokens) // self.B) - len(hits)
        d = self._decide(A, hits)
        if d.outcome == "admit":
            if r.id in self.waiting:
                self.waiting.remove(r.id)
            self._admit(r, hits, A)
        elif d.outcome == "wait":
            if r.id not in self.waiting:
                self.waiting.append(r.id)
                self.trace.emit("request_wait", request=r.id, new_blocks=A)
        else:
            if r.id in self.waiting:
                self.waiting.remove(r.id)
            self._refuse(r, d)
        return d

    def _hits(self, chain: Sequence[str]) -> list[int]:
        """Slots of the longest prefix of `chain` resident on the device."""
        hits = []
        for h in chain:
            slot = self.pool.lookup(h)
            if slot is None:
                break
            hits.append(slot)
        return hits

    def _admit(self, r: Request, hits: list[int], A: int) -> None:
        r.status, r.hit_blocks, r.epoch, r.weights = STATUS.running, len(hits), self.epoch, self.weights
        self._take(r, hits)
        hit_hashes = r.hashes[: len(hits)]
        slots = self._obtain(A, yielding=True)
        self.trace.emit("request_admit", request=r.id, hit_blocks=hit_hashes, new_blocks=A)
        self._take(r, slots)
        self._restore_for(r, len(hits))
        self._compute(r, len(hits) * self.B)
        self.book.hits(hit_hashes, r.id)
        self.book.materialize_ready()
        self._apply_claim(r)

    def _take(self, r: Request, slots: list[int]) -> None:
        for s in slots:
            self.pool.refs[s] += 1
            self.pool.settle(s)
        r.slots += slots

    def _obtain(self, n: int, *, yielding: bool) -> list[int]:
        """`n` free slots: free first, then LRU eviction, then yielding claims after their event."""
        p = self.pool
        while len(p.free) < n:
            victims = list(islice(p.lru, n - len(p.free)))
            if victims:
                self._evict(victims, "lru")
                continue
            c = next(self.book.yielding(self._frees), None) if yielding else None
            if c is None:
                raise AssertionError("admission decided room that the pool does not have")
            self.book.give_way(c)
        return [p.take_free() for _ in range(n)]

    def _frees(self, c: Claim, slots: Sequence[int]) -> bool:
        """Would `c` giving way free a slot? Only one no request and no blocking claim holds."""
        p = self.pool
        return any(not p.refs[s] and not p.blockers[s] for s in slots)

    def _evict(self, slots: list[int], reason: str) -> None:
        hashes = self.pool.evict_all(slots)
        self.trace.emit("block_evict", blocks=hashes, tier="device", reason=reason)

    def _restore_for(self, r: Request, hit: int) -> None:
        """Offloaded claims whose chain prefixes the request are restored into its new blocks."""
        for c in self.book.in_states(*self._offloaded):
            n = len(c.chain)
            if n > hit and r.hashes[:n] == c.chain and self.book.restore_fits(c):
                targets = {h: r.slots[i] for i, h in enumerate(c.chain) if self.pool.lookup(h) is None}
                self._restore(c, targets)

    def _compute(self, r: Request, start: int) -> None:
        """Write KV for tokens from `start` into blocks not already filled; register full ones,
        unless the request is stale (RKC-INV-6)."""
        B, stored, fresh = self.B, [], self._fresh(r)
        for i in range(start // B, len(r.slots)):
            slot = r.slots[i]
            if self.pool.hash_of[slot] is not None:
                continue  # restored from the host
            lo = max(start, i * B)
            self.pool.write(slot, r.tokens[lo : (i + 1) * B], lo, lo - i * B, r.weights)
            r.new_slots.add(slot)
            if fresh and i < len(r.hashes) and self.pool.register(slot, r.hashes[i]):
                stored.append(r.hashes[i])
        if len(r.hashes) < len(r.tokens) // B:  # decode filled blocks: extend the chain
            for i in range(len(r.hashes), len(r.tokens) // B):
                h = block_hash(r.hashes[-1] if r.hashes else ROOT_HASH, r.tokens[i * B : (i + 1) * B])
                r.hashes.append(h)
                if fresh and self.pool.register(r.slots[i], h):
                    stored.append(h)
        if stored:
            self.trace.emit("block_store", request=r.id, blocks=stored, tier="device")

    def _fresh(self, r: Request) -> bool:
        """Was the request admitted in the current epoch? A stale one computes over KV an
        invalidation declared wrong, so nothing it computes may be indexed (RKC-INV-6)."""
        return r.epoch == self.epoch

    def _refuse(self, r: Request, d: Decision) -> None:
        r.status, r.reason, r.blocking_claims = STATUS.refused, d.outcome, d.blocking_claims
        _never_applied(r)
        self.trace.emit("request_refuse", request=r.id, reason=d.outcome, blocking_claims=list(d.blocking_claims))

    def _release(self, r: Request, admit: bool) -> None:
        no_admit = []
        for s in reversed(r.slots):
            self.pool.refs[s] -= 1
            if not admit and s in r.new_slots and not self.pool.held(s) and self.pool.hash_of[s] is not None:
                no_admit.append(s)
            else:
                self.pool.settle(s)
        if no_admit:
            self._evict(no_admit, "no_admit")
        r.slots = []

    # ------------------------------------------------------------------ operator actions
    def reset_prefix_cache(self) -> None:
        """Weights changed: all cached KV is invalid. Claims with resident state are harmed first;
        requests running across the reset keep their blocks, unindexed, and index nothing more."""
        self._invalidate("reset_prefix_cache")
        for c in self.book.in_states(*self.spec.lifecycle.protected, *self._offloaded):
            self.book.end(c, EVENT.harm, reason="reset_prefix_cache")
        self._drop_blocks([s for s in range(self.U) if self.pool.hash_of[s] is not None], "reset_prefix_cache")

    def evict_blocks(self, hashes: Sequence[str]) -> None:
        """A connector reported these blocks invalid: claims holding them are harmed, then they go."""
        check_list("evict_blocks", "hashes", hashes)
        for i, h in enumerate(hashes):
            check_hash("evict_blocks", f"hashes[{i}]", h)
        hashes = list(dict.fromkeys(hashes))
        gone = [h for h in hashes if h not in self.pool.index]
        if not hashes or gone:
            raise UnknownId(f"not resident on the device: {gone or 'no blocks given'}")
        slots = [self.pool.index[h] for h in hashes]
        self._invalidate("evict_blocks", blocks=list(hashes))
        self.book.end_holders(slots, EVENT.harm, "invalid_load")
        self._drop_blocks(slots, "invalid_load")

    def inject_device_fault(self, h: str) -> None:
        """Corrupt one device block: claims holding it fail closed, then it leaves the cache."""
        check_hash("inject_device_fault", "block", h)
        slot = self.pool.lookup(h)
        if slot is None:
            raise UnknownId(f"block {h!r} is not resident on the device")
        self._invalidate("inject_device_fault", blocks=[h])
        self.pool.kv[slot] += 1.0
        self.book.end_holders([slot], EVENT.fail, "device_fault")
        self._drop_blocks([slot], "device_fault")

    def inject_host_fault(self, h: str) -> None:
        """Corrupt one host copy; detected (fail-closed) when a claim restores it."""
        check_hash("inject_host_fault", "block", h)
        if h not in self.host.index:
            raise UnknownId(f"block {h!r} is not in the host tier")
        self.trace.emit("operator", action="inject_host_fault", blocks=[h])
        self.host.corrupt(h)

    def _invalidate(self, action: str, **fields) -> None:
        """Announce an operator action of the spec's [invalidation]: a new epoch begins."""
        assert action in self.spec.invalidations, action
        self.trace.emit("operator", action=action, **fields)
        self.epoch += 1
        self.weights += action in self.spec.weight_changes

    def _drop_blocks(self, slots: list[int], reason: str) -> None:
        """Remove blocks from the cache; a request still holding one keeps it, unindexed."""
        if not slots:
            return
        hashes = [self.pool.hash_of[s] for s in slots]
        for s in slots:
            if self.pool.held(s):
                self.pool.unregister(s)
            else:
                self.pool.evict(s)
        self.trace.emit("block_evict", blocks=hashes, tier="device", reason=reason)


@lru_cache(maxsize=128)
def _full_blocks(
    tokens: tuple[int, ...], B: int, heads: int, head_dim: int, device: torch.device, weights: int
) -> torch.Tensor:
    """The KV of the full blocks of `tokens` from position 0, `[blocks, 2, B, heads, head_dim]`
    as the pool lays blocks out."""
    kv = content(tokens, 0, heads, head_dim, device, weights)
    return kv.view(2, -1, B, heads, head_dim).transpose(0, 1).contiguous()


def _never_applied(r: Request) -> None:
    """A request that ends before admission applies no claim operation (RKC-RT-8)."""
    if r.claim_outcome == PENDING:
        r.claim_outcome = NOT_APPLIED

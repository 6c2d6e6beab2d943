"""The contract on SGLang's radix cache: the shared claim book holding claims with SGLang's
lock refs, and every request decided by the contract's predicate before SGLang allocates.

- **Holding.** A materialized hard claim takes a lock ref on the tree node where its
  prefix ends (``match_prefix`` splits a node there), which pins exactly its pages: SGLang
  never evicts a locked path. Running requests are the only other users of lock refs.
- **Arbitration.** With claims holding pages, a request's need (its pages past its prefix
  hit) is decided on the pool's classes before SGLang allocates: refused at once with the
  blocking claims named (stock SGLang raises "Prefill out of memory" and leaves it
  waiting, unexplained), waiting, or admitted after the yielding claims it needs gave way
  (their ``demote`` first, then SGLang evicts as it does).
- **Trace.** SGLang's KV events give the pages stored and removed, by its own chain hashes.

With ``enforce=False`` claims are recorded and traced but hold nothing: stock SGLang with
a witness.
"""

from __future__ import annotations

from typing import Any, Sequence

from kvclaims.claimbook import ClaimBook
from kvclaims.errors import GuardRejected, InvalidInput, NoRoom
from kvclaims.model.checks import CLAIM_TERMS, claim_terms
from kvclaims.model.claim import Claim
from kvclaims.model.feasibility import Decision, PoolCounts, decide
from kvclaims.spec import load as load_spec
from kvclaims.trace import TraceWriter
from kvclaims.model.names import EVENT
from kvclaims.sglang.host import SglangHostSide
from kvclaims.sglang.radix import RadixPool, Running
from kvclaims.sglang.standins import PINNED


class SglangSide:
    """The book's `Side` over SGLang's tree: a claim's key is its prefix's tokens, its
    blocks are device page ids, and holding it is a lock ref on its last node."""

    def __init__(self, pool: RadixPool) -> None:
        self.pool = pool
        self.found: dict[str, Any] = {}  # claim -> the node its resident prefix ends at
        self.locks: dict[str, Any] = {}

    def resident(self, c: Claim, key: Sequence[int]) -> list[int] | None:
        pages, node = self.pool.match(key)
        if pages < len(c.chain):
            return None
        self.found[c.id] = node
        return self.pool.path_pages(node)

    def hold(self, c: Claim, blocks: Sequence[int]) -> None:
        self.locks[c.id] = self.pool.lock(self.found.pop(c.id))

    def unhold(self, c: Claim, blocks: Sequence[int]) -> None:
        self.pool.unlock(self.locks.pop(c.id))

    def block_id(self, block: int) -> int:
        return block


class RadixClaims:
    """Claims over a `RadixPool` of `U` pages of `B` tokens with reserve `R`."""

    def __init__(self, U: int, B: int = 16, R: int = 0, host_blocks: int = 0, *, enforce: bool = True) -> None:
        """`host_blocks` > 0: offloaded claims' copies in SGLang's host tier, that many pages."""
        self.pool = RadixPool(U, B, host_pages=host_blocks)
        self.spec = load_spec()
        self.trace = TraceWriter()
        self.trace.emit(
            "runtime",
            runtime="sglang",
            version=PINNED,
            model="none: SGLang's cache without a model runner",
            hash="sha256 chain (mem_cache/utils.get_hash_str)",
            namespace="extra_key",  # SGLang keys a request's LoRA id and cache salt into its tree path
            U=U,
            B=B,
            R=R,
            host_blocks=host_blocks,
            enforce=enforce,
        )
        self.side = SglangSide(self.pool)
        self.book = ClaimBook(self.spec, self.trace, self.side, U=U, R=R, enforce=enforce)
        self.host = SglangHostSide(self, host_blocks) if host_blocks else None
        self.book.host = self.host
        self._offloaded = tuple(self.spec.lifecycle.dests(EVENT.offload))
        self.running: dict[str, Running] = {}
        self.waited: set[str] = set()  # requests whose wait is traced
        self.resident: set[str] = set()  # the tree's pages by hash, from SGLang's KV events
        self.deciding: set[int] = set()  # while room is made: the deciding request's hit pages

    # --- claims ----------------------------------------------------------------------------
    def submit_claim(self, claim_id: str, tokens: Sequence[int], **terms: Any) -> str:
        """A claim on the whole pages of `tokens`, its terms checked and defaulted by the rules
        every runtime uses (`kvclaims.model.checks.claim_terms`)."""
        t = {**CLAIM_TERMS, **terms}
        tiers, policy = claim_terms(
            self.book.claims, self.pool.U, self.pool.B, None, claim_id, tokens,
            t["strength"], t["priority"], t["ttl"], t["tiers"], t["policy"],
        )  # fmt: skip
        chain = self.pool.page_hashes(tokens)
        key = list(tokens[: len(chain) * self.pool.B])
        return self.book.submit(
            claim_id,
            chain,
            key,
            strength=t["strength"],
            priority=t["priority"],
            ttl=t["ttl"],
            tiers=tiers,
            policy=policy,
        )

    # --- owner operations --------------------------------------------------------------------
    def offload_claim(self, claim_id: str) -> None:
        """Checked as the reference runtime checks (IllegalTransition, GuardRejected without
        the host tier among its tiers, NoRoom without host room), then offloaded."""
        c = self.book.check_event(claim_id, EVENT.offload)
        if not c.host_allowed:
            raise GuardRejected(claim_id, c.state, EVENT.offload, "host_allowed")
        if self.host is None or not self.host.room(c):
            free = self.host.capacity - len(self.host.owners) if self.host else 0
            raise NoRoom(f"claim {claim_id!r}: the host tier has {free} free blocks, too few for its {len(c.chain)}")
        self.book.offload(c, reason="owner")

    def restore_claim(self, claim_id: str) -> str:
        """Bring an offloaded claim back (`SglangHostSide.restore`); returns its state. Checked
        first: IllegalTransition, NoRoom (the device cannot take its missing pages), or
        InvalidInput (the reserve)."""
        c = self.book.check_event(claim_id, EVENT.restore)
        assert self.host is not None, "only a host tier offloads"
        have, node = self.pool.match(self.book.entries[claim_id].key)
        counts = self.classes(set(self.pool.path_pages(node)) if have else set())[0]
        if len(c.chain) - have > counts.free + counts.cached:
            raise NoRoom(f"claim {claim_id!r}: no room on the device for {len(c.chain) - have} blocks")
        if not self.book.restore_fits(c):
            raise InvalidInput(f"claim {claim_id!r}: restoring would exceed the reserve")
        self.host.restore(c)
        return c.state

    # --- requests --------------------------------------------------------------------------
    def submit_request(self, rid: str, tokens: Sequence[int]) -> Decision:
        """Decide the request, then let SGLang allocate and compute it (admitted), or not."""
        self.trace.emit("request_submit", request=rid, tokens=len(tokens), blocks=self.pool.page_hashes(tokens))
        return self.retry(rid, tokens)

    def retry(self, rid: str, tokens: Sequence[int]) -> Decision:
        """Decide a submitted request (again, when it waited): the contract's predicate on the
        pool's classes while claims hold pages, else SGLang's own allocation, whose "out of
        memory" is a wait (SGLang's scheduler leaves such a request waiting)."""
        pool, B = self.pool, self.pool.B
        chain = pool.page_hashes(tokens)
        if -(-len(tokens) // B) > pool.U:  # larger than the pool: decided without SGLang
            d = (
                decide(-(-len(tokens) // B), self.classes()[0], None, self.spec)
                if self.book.enforce
                else Decision("wait")
            )
            return self._not_admitted(rid, d, -(-len(tokens) // B))
        whole = len(tokens) == len(chain) * B and pool.match(tokens)[0] == len(chain)
        r = pool.admit(rid, tokens)
        A = -(-len(tokens) // B) - r.hits
        hit_pages = set(pool.path_pages(r.req.last_node))
        if self.book.enforce and self.book.holding():
            counts, blocking = self.classes(hit_pages)
            d = decide(A, counts, blocking, self.spec)
            if d.outcome != "admit":
                pool.drop_admission(r)
                return self._not_admitted(rid, d, A)
            self._make_room(A - counts.free - counts.cached, hit_pages)
        whole = whole and chain[-1] in self.resident  # (an offload making room may have taken it)
        r, restoring = self._restore_for(r, chain, A)
        try:
            pool.prefill(r)
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            pool.drop_admission(r)
            self.sync("lru")  # (SGLang evicted what it could before it gave up)
            return self._not_admitted(rid, Decision("wait"), A)
        stored, removed = pool.events()
        self._traced(removed, "lru")
        self._traced(stored, None, request=rid)
        for c in restoring:  # (their last page is computed now)
            self.host.finish(c)  # type: ignore[union-attr]
        self.trace.emit("request_admit", request=rid, hit_blocks=chain[: r.hits], new_blocks=A)
        # a whole-page prompt computes its last page again for its last token's logits: a
        # claim on exactly that prompt is reused all the same (`recomputes_last_block`),
        # unless making room for it took that page
        whole = whole and 0 < r.hits == len(chain) - 1 and chain[-1] not in removed
        self.book.hits(chain if whole else chain[: r.hits], rid)
        self.book.materialize_ready()
        self.running[rid] = r
        self.waited.discard(rid)
        return Decision("admit")

    def _restore_for(self, r: Running, chain: Sequence[str], A: int) -> tuple[Running, list[Claim]]:
        """Offloaded claims whose chain the admitted prompt extends come back first (or fail
        closed), into pages its admission made room for; it is admitted again past them.
        Also returns those whose last page it computes, restored once it has. Nothing comes
        back for a prompt SGLang cannot allocate for (its `A` new pages beyond what is free
        or evictable: its allocation will raise, and the request wait)."""
        pool, pending = self.pool, []
        if self.host is None or not self.book.live:
            return r, []
        if A > pool.free_pages() + pool.cache.evictable_size() // pool.B:
            return r, []
        for c in self.book.in_states(*self._offloaded):
            n = len(c.chain)
            if n > r.hits and list(chain[:n]) == c.chain and self.book.restore_fits(c):
                computes_last = len(r.tokens) == n * pool.B
                if not self.host.restore(c, computes_last) and c.state in self._offloaded:
                    pending.append(c)
        if pool.match(r.tokens)[0] <= r.computed_from:
            return r, pending
        pool.drop_admission(r)
        again = pool.admit(r.req.rid, r.tokens)
        again.hits = r.hits  # (its hits are what it found; restored pages are the claims')
        return again, pending

    def _not_admitted(self, rid: str, d: Decision, A: int) -> Decision:
        if d.outcome != "wait":
            self.waited.discard(rid)
            self.trace.emit("request_refuse", request=rid, reason=d.outcome, blocking_claims=list(d.blocking_claims))
        elif rid not in self.waited:
            self.waited.add(rid)
            self.trace.emit("request_wait", request=rid, new_blocks=A)
        return d

    def decode(self, rid: str, tokens: Sequence[int]) -> Decision:
        """The running request generates `tokens`: its new pages are decided as an admission
        is, with every page it holds as its own. Admitted, SGLang computes them; a growth that
        must wait leaves it as it was; a claim-blocked or too-large one ends it refused (what
        it computed stays cached), never waiting on claims."""
        pool, r = self.pool, self.running[rid]
        pool.page_hashes(r.tokens + list(tokens))  # (names the pages it fills, for its KV events)
        A = -(-(r.req.extend_end + len(tokens)) // pool.B) - len(r.pages)
        own = set(r.pages)
        if self.book.enforce and (self.book.holding() or A > pool.U - len(own)):
            counts, blocking = self.classes(own)
            d = decide(A, counts, blocking, self.spec)
            if d.outcome not in ("admit", "wait"):
                self.trace.emit(
                    "request_refuse", request=rid, reason=d.outcome, blocking_claims=list(d.blocking_claims)
                )
                pool.release(self.running.pop(rid))
                self.book.materialize_ready()
                return d
            if d.outcome == "wait":
                return d
            self._make_room(A - counts.free - counts.cached, own)
        try:
            pool.extend(r, list(tokens))
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            self.sync("lru")
            return Decision("wait")
        stored, removed = pool.events()
        self._traced(removed, "lru")
        self.trace.emit("request_grow", request=rid, tokens=len(tokens), new_blocks=A)
        self._traced(stored, None, request=rid)
        self.book.materialize_ready()
        return Decision("admit")

    def finish(self, rid: str, admit: bool = True) -> None:
        """The request ends; `admit=False` is write no-admit: the pages it computed leave the
        tree unless a claim or another request holds them."""
        r = self.running.pop(rid)
        self.pool.release(r)
        self.trace.emit("request_finish", request=rid, admit=admit)
        if not admit:
            self.pool.evict_path(r.tokens, r.computed_from, keep=self.held_pages())
            self.sync("no_admit")
        self.book.materialize_ready()

    def abort(self, rid: str) -> None:
        """The request is aborted: a running one's computed pages stay cached, as SGLang
        keeps them; a waiting one holds nothing."""
        if rid in self.running:
            self.pool.release(self.running.pop(rid))
        self.waited.discard(rid)
        self.trace.emit("request_abort", request=rid)
        self.book.materialize_ready()

    def tick(self) -> None:
        """One step of the logical clock: TTLs run out."""
        self.trace.time += 1
        self.book.expire(self.trace.time)

    def _make_room(self, need: int, own: set[int]) -> None:
        """Yielding claims give way in the book's order until `need` more pages are evictable.
        A claim's page is freed by its demotion only if no request (running, or the deciding
        one's hits, `own`) and no other claim holds it."""
        running, holders, blocking = self._running_pages(), self.book.holders, self.book.blocking_ids()

        def frees(c: Claim, blocks: Sequence[int]) -> bool:
            return any(b not in own and b not in running and not holders[b] & blocking for b in blocks)

        self.deciding = own
        try:
            for c in self.book.yielding(frees):
                if need <= 0:
                    return
                need -= sum(
                    b not in own and b not in running and holders[b] == {c.id} for b in self.book.entries[c.id].blocks
                )
                self.book.give_way(c)
        finally:
            self.deciding = set()

    def sync(self, reason: str, restore: str | None = None, **fields: Any) -> list[str]:
        """SGLang's device KV events since the last call, into the trace: removals first (why:
        `reason`), then the pages stored, loaded back for claim `restore` if given. Returns
        the pages stored."""
        stored, removed = self.pool.events()
        self._traced(removed, reason)
        if restore and stored:
            self.resident.update(stored)
            self.trace.emit("block_restore", claim=restore, blocks=stored, tier="device")
        else:
            self._traced(stored, None, **fields)
        return stored

    def _traced(self, pages: list[str], evicted: str | None, **fields: Any) -> None:
        """Pages the tree lost (`evicted`: why) or gained, into the trace and `resident`."""
        if not pages:
            return
        if evicted:
            self.resident.difference_update(pages)
            self.trace.emit("block_evict", blocks=pages, tier="device", reason=evicted)
        else:
            self.resident.update(pages)
            self.trace.emit("block_store", blocks=pages, tier="device", **fields)

    def held_pages(self) -> set[int]:
        """Pages a claim, a running request or the request being decided holds."""
        return self._claimed_pages() | self._running_pages() | self.deciding

    def check_valid(self) -> None:
        """The claim book's indexes, and SGLang's cache as the book relies on it: the pages its
        KV events say are in the tree are the tree's; every page is free, in the tree or a
        running request's; SGLang's locked tokens cover every claim-held page (raises
        AssertionError naming what drifted)."""
        self.book.check_valid()
        pool, tree, running = self.pool, self.pool.tree_pages(), self._running_pages()
        assert len(self.resident) == len(tree), f"KV events say {len(self.resident)} pages, the tree has {len(tree)}"
        assert pool.free_pages() + len(tree | running) == pool.U, (
            f"{pool.free_pages()} free + {len(tree | running)} used != {pool.U} pages"
        )
        held = self._claimed_pages()
        assert held <= tree, f"claim-held pages outside the tree: {sorted(held - tree)}"
        assert pool.cache.protected_size() // pool.B >= len(held), "a claim-held page is not locked"
        if self.host:
            assert pool.host is not None
            lost = self.host.owners.keys() - pool.host.pages.keys()
            assert not lost, f"pinned host copies SGLang no longer holds: {sorted(lost)}"
            assert len(self.host.owners) <= self.host.capacity, "more claimed host pages than the host tier holds"
            pinned = {cid for ids in self.host.owners.values() for cid in ids}
            offloaded = {c.id for c in self.book.in_states(*self._offloaded)}
            assert pinned == set(self.host.pins) == offloaded, f"host pins {sorted(pinned)} != offloaded {offloaded}"

    # --- the pool's classes -------------------------------------------------------------------
    def _claimed_pages(self) -> set[int]:
        """Pages claims hold (the book's block ids are SGLang's page numbers here)."""
        return {int(page) for page in self.book.holders}  # type: ignore[call-overload]

    def _running_pages(self) -> set[int]:
        return {p for r in self.running.values() for p in r.pages}

    def classes(self, exclude: set[int] = frozenset()) -> tuple[PoolCounts, dict[str, frozenset]]:  # type: ignore[assignment]
        """The device pages by class, without `exclude` (a request's own prefix hits), and the
        pages each blocking claim protects."""
        n = {"free": 0, "cached": 0, "yielding": 0, "active": 0, "protected": 0}
        protects: dict[str, set[int]] = {}
        tree, running, blocking = self.pool.tree_pages(), self._running_pages(), self.book.blocking_ids()
        for page in range(1, self.pool.U + 1):  # (SGLang's page 0 pads)
            if page in exclude:
                continue
            held = self.book.holders.get(page, set())
            blockers = held & blocking
            if blockers:
                n["protected"] += 1
                for c in blockers:
                    protects.setdefault(c, set()).add(page)
            elif page in running:
                n["active"] += 1
            elif held:
                n["yielding"] += 1
            elif page in tree:
                n["cached"] += 1
            else:
                n["free"] += 1
        return PoolCounts(U=self.pool.U - len(exclude), **n), {c: frozenset(map(str, p)) for c, p in protects.items()}

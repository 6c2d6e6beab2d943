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
from kvclaims.model.checks import CLAIM_TERMS, claim_terms
from kvclaims.model.claim import Claim
from kvclaims.model.feasibility import Decision, PoolCounts, decide
from kvclaims.spec import load as load_spec
from kvclaims.trace import TraceWriter
from kvclaims.sglang.radix import RadixPool, Running


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

    def __init__(self, U: int, B: int = 16, R: int = 0, *, enforce: bool = True) -> None:
        self.pool = RadixPool(U, B)
        self.spec = load_spec()
        self.trace = TraceWriter()
        self.trace.emit("runtime", runtime="sglang", U=U, B=B, R=R, host_blocks=0, enforce=enforce)
        self.book = ClaimBook(self.spec, self.trace, SglangSide(self.pool), U=U, R=R, enforce=enforce)
        self.running: dict[str, Running] = {}

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

    # --- requests --------------------------------------------------------------------------
    def submit_request(self, rid: str, tokens: Sequence[int]) -> Decision:
        """Decide the request, then let SGLang allocate and compute it (admitted), or not."""
        pool, B = self.pool, self.pool.B
        chain = pool.page_hashes(tokens)
        self.trace.emit("request_submit", request=rid, tokens=len(tokens), blocks=chain)
        r = pool.admit(rid, tokens)
        A = -(-len(tokens) // B) - r.hits
        hit_pages = set(pool.path_pages(r.req.last_node))
        if self.book.enforce and self.book.holding():
            counts, blocking = self.classes(hit_pages)
            d = decide(A, counts, blocking, self.spec)
            if d.outcome != "admit":
                pool.drop_admission(r)
                if d.outcome == "wait":
                    self.trace.emit("request_wait", request=rid, new_blocks=A)
                else:
                    self.trace.emit(
                        "request_refuse", request=rid, reason=d.outcome, blocking_claims=list(d.blocking_claims)
                    )
                return d
            self._make_room(A - counts.free - counts.cached, hit_pages)
        pool.prefill(r)
        self._sync("lru", request=rid)
        self.trace.emit("request_admit", request=rid, hit_blocks=chain[: r.hits], new_blocks=A)
        self.book.hits(chain[: r.hits], rid)
        self.book.materialize_ready()
        self.running[rid] = r
        return Decision("admit")

    def finish(self, rid: str, admit: bool = True) -> None:
        self.pool.release(self.running.pop(rid), keep=admit)
        self.trace.emit("request_finish", request=rid, admit=admit)
        self._sync("no_admit")
        self.book.materialize_ready()

    def _make_room(self, need: int, own: set[int]) -> None:
        """Yielding claims give way in the book's order until `need` more pages are evictable."""
        running = self._running_pages()

        def frees(c: Claim, blocks: Sequence[int]) -> bool:
            return any(b not in own and b not in running for b in blocks)

        for c in self.book.yielding(frees):
            if need <= 0:
                return
            need -= sum(1 for b in self.book.entries[c.id].blocks if b not in own and b not in running)
            self.book.give_way(c)

    def _sync(self, reason: str, **fields: Any) -> None:
        """SGLang's KV events since the last call, into the trace: removals first."""
        stored, removed = self.pool.events()
        if removed:
            self.trace.emit("block_evict", blocks=removed, tier="device", reason=reason)
        if stored:
            self.trace.emit("block_store", blocks=stored, tier="device", **fields)

    # --- the pool's classes -------------------------------------------------------------------
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

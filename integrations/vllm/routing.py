"""Claim-affine routing for vLLM's data parallelism (``--data-parallel-size`` N > 1).

Each data-parallel rank is an engine with its own block pool, scheduler and claim
book: a claim protects blocks on the rank where its request ran, and only there. vLLM
sends a request to the least loaded rank unless its ``X-data-parallel-rank`` header
names one, so without routing a replay of a claimed prefix misses half the time and a
release reaches a rank that has no such claim. The front end therefore routes:

- every claim operation to the rank holding the claim (a release, a claim read; a
  claim id already in use goes to its rank, which answers ``DuplicateId``, so ids stay
  unique across ranks);
- every request whose prompt starts with a claimed prefix to the claim's rank (the
  longest claimed prefix wins);
- a request making a new claim on no claimed prefix to the rank holding the fewest
  claimed blocks;
- everything else as the client's header says, else as vLLM's balancer chooses.

What it knows, it learned from the requests it forwarded; a claim it does not know (made
through another API server process) is looked up by asking every rank
(`kvclaims.vllm.control`). Prefixes are matched on token ids: token-id prompts as
given, text prompts through the served tokenizer when there is one (chat messages are
routed by their claim operations and the header only).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Routes:
    """Where the claims known to this front end live. `block`: tokens per KV block."""

    size: int
    block: int
    rank_of: dict[str, int] = field(default_factory=dict)  # claim id -> rank
    # first block's tokens -> [(claimed prefix, claim id)]: a prompt is matched against the
    # claims that share its first block only
    prefixes: dict[tuple[int, ...], list[tuple[tuple[int, ...], str]]] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)  # claim id -> claimed blocks

    def learn(self, claim: str, rank: int, tokens: list[int] | None = None, blocks: int | None = None) -> None:
        """`claim` lives on `rank`; with `tokens`, its prefix is the first `blocks` full
        blocks of them (None: every full block)."""
        self.rank_of[claim] = rank
        if tokens is None:
            return
        n = (blocks if blocks is not None else len(tokens) // self.block) * self.block
        prefix = tuple(tokens[:n])
        if len(prefix) < self.block or len(prefix) != n:
            return
        self.blocks[claim] = n // self.block
        self.prefixes.setdefault(prefix[: self.block], []).append((prefix, claim))

    def forget(self, claim: str) -> None:
        """`claim` ended (released, refused, not applied): its prefix protects nothing."""
        self.rank_of.pop(claim, None)
        self.blocks.pop(claim, None)
        for key, entries in list(self.prefixes.items()):
            entries[:] = [e for e in entries if e[1] != claim]
            if not entries:
                del self.prefixes[key]

    def claimed(self, tokens: list[int] | None) -> str | None:
        """The claim with the longest claimed prefix `tokens` starts with (None: none)."""
        if not tokens or len(tokens) < self.block:
            return None
        best: tuple[int, str] | None = None
        for prefix, claim in self.prefixes.get(tuple(tokens[: self.block]), []):
            if len(prefix) <= len(tokens) and tuple(tokens[: len(prefix)]) == prefix:
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), claim)
        return best[1] if best else None

    def emptiest(self) -> int:
        """The rank holding the fewest claimed blocks (lowest rank on a tie)."""
        load = [0] * self.size
        for claim, n in self.blocks.items():
            load[self.rank_of[claim]] += n
        return min(range(self.size), key=lambda r: (load[r], r))

"""What a claim query answers (a control request, ``kvclaims_query``): a claim's state and
terms as its owner may read them over HTTP (``GET /v1/kvclaims/claims[/ID]``)."""

from __future__ import annotations

from typing import Any

from kvclaims.claimbook import ClaimBook
from kvclaims.vllm.wallclock import WallClock


def claim_info(book: ClaimBook, wall: WallClock, claim_id: str, rank: int) -> dict[str, Any]:
    """One claim: state, tenant, terms, blocks (count), whether it holds device blocks now,
    TTL left in engine steps and in seconds (None: no such TTL), its wall-clock deadline
    (Unix seconds), why it was refused (if it was) and the data-parallel rank it lives on."""
    c, entry = book.claims[claim_id], book.entries[claim_id]
    return {
        "claim": c.id,
        "state": c.state,
        "tenant": entry.tenant,
        "strength": c.strength,
        "priority": c.priority,
        "policy": c.policy,
        "tiers": list(c.tiers),
        "blocks": len(c.chain),
        "holding": bool(entry.blocks) and c.state in book.protected,
        "ttl_steps_left": None if c.deadline is None or c.fsm.terminal else max(0, c.deadline - book.trace.time),
        "ttl_s_left": None if c.fsm.terminal else wall.left(c.id),
        "deadline": wall.history.get(c.id),
        "refusal": entry.refusal,
        "dp_rank": rank,
    }


def answer(book: ClaimBook, wall: WallClock, query: str, tenant: str, rank: int) -> dict[str, Any]:
    """The answer to a query of one claim (`query` its id, ended or not; the caller checked
    the tenant owns it) or of the tenant's live claims (`query` is ``"*"``), with the
    engine's logical time and the earliest wall-clock deadline among its live claims (when
    the front end queries next)."""
    claims = book.claims
    ids = (
        sorted(c for c, e in book.entries.items() if e.tenant == tenant and not claims[c].fsm.terminal)
        if query == "*"
        else [query]
    )
    return {
        "claims": [claim_info(book, wall, c, rank) for c in ids],
        "time": book.trace.time,
        "next_deadline": wall.next(c for c in wall.deadlines if not claims[c].fsm.terminal),
        "dp_rank": rank,
    }

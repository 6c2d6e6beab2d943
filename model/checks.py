"""Input checks every runtime under the protocol applies, so the same bad input gets the
same typed error everywhere (RKC-RT-4): the reference runtime, the vLLM adapter and the
integration's in-process calls all call these.

Each names where the bad value was (a claim, a request, a call) and the field, and runs
before anything changes. Values arrive as JSON decodes them, so a bool is not an int, a
string is not a list, and a dict is not a sequence.
"""

from __future__ import annotations

import reprlib
from typing import Any, Collection, Mapping, Sequence

from kvclaims.errors import DuplicateId, InvalidField
from kvclaims.model.terms import PRIORITIES, POLICIES, STRENGTHS, TIERS, TTLS
from kvclaims.model.names import POLICY

MAX_TICKS = 10**6  # one step call: each tick is a sweep, so a huge count is a hang, not input


def claim_terms(
    existing: Collection[str],
    U: int,
    B: int,
    vocab: int | None,
    claim_id,
    prefix,
    strength,
    priority,
    ttl,
    tiers,
    policy,
) -> tuple[tuple[str, ...], str]:
    """Validate a claim on a pool of `U` blocks of `B` tokens whose live claim ids are
    `existing`; returns its (tiers, policy), the policy defaulted (refuse for hard, demote
    for soft).

    Rejected: an id that is not a non-empty string, or is in use (DuplicateId); terms
    `check_terms` rejects; a prefix that is not whole blocks of token ids (below `vocab`
    when given), or has more blocks than the pool (it could never be resident).
    """
    check_id(claim_id, "claim")
    if claim_id in existing:
        raise DuplicateId(f"claim {claim_id!r} already exists")
    where = f"claim {claim_id!r}"
    tiers, policy = check_terms(where, strength, priority, ttl, tiers, policy)
    check_tokens(prefix, where, "prefix", vocab)
    if len(prefix) % B:
        raise InvalidField(where, "prefix", f"must be whole blocks of {B} tokens, got {len(prefix)} tokens")
    if len(prefix) > U * B:
        raise InvalidField(
            where, "prefix", f"has {len(prefix) // B} blocks, more than the pool's {U}: it could never be resident"
        )
    return tiers, policy


def check_terms(where: str, strength, priority, ttl, tiers, policy) -> tuple[tuple[str, ...], str]:
    """A claim's terms, the one validator every runtime, front end and the oracle use;
    returns (tiers, policy), the policy defaulted (refuse for hard, demote for soft).
    Raises InvalidField naming `where` and the field for: a strength, policy or tier the
    spec does not name; tiers without 'device' or with a repeat; a soft claim that
    refuses; offload without the host tier; a priority outside PRIORITIES; a TTL outside
    TTLS (None: no TTL)."""
    check_choice(where, "strength", strength, STRENGTHS)
    policy = (POLICY.refuse if strength == "hard" else POLICY.demote) if policy is None else policy
    check_choice(where, "policy", policy, POLICIES)
    check_list(where, "tiers", tiers)
    for i, tier in enumerate(tiers):
        check_choice(where, f"tiers[{i}]", tier, TIERS)
    if "device" not in tiers or len(set(tiers)) < len(tiers):
        raise InvalidField(where, "tiers", f"must name 'device', each tier once, got {list(tiers)}")
    if strength == "soft" and policy == POLICY.refuse:
        raise InvalidField(where, "policy", "'refuse' needs a hard claim: a soft claim cannot refuse requests")
    if policy == POLICY.offload and "host" not in tiers:
        raise InvalidField(where, "policy", "'offload' needs 'host' in tiers")
    check_int(where, "priority", priority, PRIORITIES.start, PRIORITIES.stop - 1)
    if ttl is not None:
        check_int(where, "ttl", ttl, TTLS.start, TTLS.stop - 1)
    return tuple(tiers), policy


CLAIM_TERMS = {"strength": "hard", "priority": 0, "ttl": None, "tiers": ("device",), "policy": None}


def request_claim(
    existing: Collection[str], U: int, B: int, vocab: int | None, request_id: str, tokens: Sequence[int], claim
) -> tuple[str, dict[str, Any]]:
    """Validate the claim a request carries (`{"id": ..., **claim terms}`), on the prompt's
    full blocks, as `claim_terms` would; returns (claim id, its terms with defaults filled,
    tiers and policy normalized). RKC-RT-8: it applies at admission, so this is the check
    made at submission."""
    where = f"request {request_id!r}"
    if not isinstance(claim, Mapping) or "id" not in claim:
        raise InvalidField(where, "claim", f"must be a mapping with an 'id', {got(claim)}")
    terms = {**CLAIM_TERMS, **{k: v for k, v in claim.items() if k != "id"}}
    unknown = sorted(set(terms) - set(CLAIM_TERMS))
    if unknown:
        raise InvalidField(where, f"claim.{unknown[0]}", "is not a claim term")
    prefix = list(tokens)[: len(tokens) - len(tokens) % B]
    terms["tiers"], terms["policy"] = claim_terms(existing, U, B, vocab, claim["id"], prefix, **terms)
    return claim["id"], terms


def got(value) -> str:
    return f"got {reprlib.repr(value)} ({type(value).__name__})"


def check_int(where: str, field: str, value, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidField(where, field, f"must be an int {bound}, {got(value)}")


def check_id(value, kind: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidField(kind, "id", f"must be a non-empty string, {got(value)}")


def check_choice(where: str, field: str, value, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise InvalidField(where, field, f"must be one of {', '.join(choices)}, {got(value)}")


def check_list(where: str, field: str, value) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidField(where, field, f"must be a list, {got(value)}")


def check_hash(where: str, field: str, value) -> None:
    if not isinstance(value, str):
        raise InvalidField(where, field, f"must be a block hash (a string), {got(value)}")


def check_tokens(tokens, where: str, field: str, vocab: int | None) -> None:
    """A non-empty list of token ids: ints >= 0, and below `vocab` when the runtime has one."""
    check_list(where, field, tokens)
    if not tokens:
        raise InvalidField(where, field, "must not be empty")
    bad = next(
        (
            i
            for i, t in enumerate(tokens)
            if not (isinstance(t, int) and not isinstance(t, bool) and t >= 0 and (vocab is None or t < vocab))
        ),
        None,
    )
    if bad is not None:
        below = "" if vocab is None else f" and < {vocab}, the vocabulary size"
        raise InvalidField(where, f"{field}[{bad}]", f"must be a token id (an int >= 0{below}), {got(tokens[bad])}")

"""`kvclaims check --bundle MODE`: is one trace evidence for every obligation of a protection
mode's bundle (spec ``[lowering.modes]``) that a trace can show?

A trace shows an obligation when the checker finds it holding *and* the trace exercises it:
a clean trace with no restore is no evidence that restores come from the host tier. So
each obligation a trace can speak to has a witness rule below (the paper's gate, arXiv
2606.01387: a claim registered first, its identity constant, the cache named, restores
from the offload tier before the reuse they serve, a failure ending in an outcome that
names the same claim). Obligations one trace cannot show (the reserve, the feasibility
predicate, block conservation: they need the pool or the proofs) are listed apart, never
counted. Works on our traces and on the paper's, through their importer
(`kvclaims.conformance.kvresidency`), whose identity facts it reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from kvclaims.conformance.checker import OBLIGATION_OF, Report
from kvclaims.conformance.kvresidency import Imported
from kvclaims.model.names import EVENT
from kvclaims.spec import Spec
from kvclaims.spec.expr import evaluate


@dataclass(frozen=True)
class Facts:
    """What one trace shows, in either format."""

    claims: int
    materialized: int
    registered_first: bool
    cache_named: str | None  # how the trace names its cache, or None
    restores: int
    restores_sound: bool  # each from the host tier, before the reuse it serves
    failed_copies: int  # claims failed closed by a copy that did not verify
    losses: int  # claim events that give blocks up, emitted first (the spec's loss events)
    blocked_refusals: int
    early_refusals: int  # of those, before the request was admitted (not at a later boundary)
    outcomes_name_claim: bool
    terms: tuple[
        dict[str, Any], ...
    ] = ()  # each claim's terms as a mode's `when` reads them, where the trace gives them


@dataclass
class BundleVerdict:
    mode: str
    shown: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # obligation -> why the trace is no evidence for it
    violated: list[str] = field(default_factory=list)
    not_shown: list[str] = field(default_factory=list)  # what one trace cannot show

    @property
    def ok(self) -> bool:
        return not self.missing and not self.violated

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "ok": self.ok, **{k: v for k, v in self.__dict__.items() if k != "mode"}}


FAILED_COPY = ("checksum_mismatch", "offload_mismatch")  # a `fail` whose copy did not verify (spec/TRACE.md)
Rule = Callable[[Facts], "str | None"]  # None: it holds (or: it is exercised); else why not


def _need(cond: Callable[[Facts], bool], why: str) -> Rule:
    return lambda f: None if cond(f) else why


# What one trace shows beyond the checker's findings: each obligation a trace can speak to,
# what must hold for it to count...
HOLDS: dict[str, Rule] = {
    "RKC-ID-1": _need(lambda f: f.registered_first, "a lifecycle event names no claim registered before it"),
    "RKC-ID-3": _need(lambda f: f.cache_named is not None, "the trace names no cache identity"),
    "RKC-ID-4": _need(lambda f: f.restores_sound, "a restore is not from the host tier before its reuse"),
    "RKC-ID-5": _need(lambda f: f.outcomes_name_claim, "an outcome names a claim it is not about"),
}
# ...and, where the mode requires it (spec `exercised`), what the trace must contain.
EXERCISED: dict[str, Rule] = {
    "RKC-ID-1": _need(lambda f: f.claims > 0, "no claim registered before its events"),
    "RKC-ID-4": _need(lambda f: f.restores > 0, "no restore from the host tier before its reuse"),
    "RKC-ID-5": _need(
        lambda f: f.failed_copies + f.blocked_refusals > 0, "no claim-scoped outcome that names its claim"
    ),
    "RKC-RT-1": _need(lambda f: f.losses > 0, "no claim gives blocks up through its event"),
    "RKC-RT-2": _need(lambda f: f.failed_copies > 0, "no copy that failed its check fails its claim closed"),
    "RKC-INV-1": _need(lambda f: f.materialized > 0, "no claim materializes"),
    "RKC-RT-3": _need(lambda f: f.early_refusals > 0, "no claim-blocked refusal before admission (a later one is not)"),
    "RKC-TR-4": _need(lambda f: f.blocked_refusals > 0, "no claim-blocked refusal"),
}
# The obligations a trace speaks to at all: those, and what the checker checks.
SHOWN = {*HOLDS, *EXERCISED, "RKC-ID-2", "RKC-LC-4", "RKC-INV-2", "RKC-TR-1", "RKC-TR-2", "RKC-TR-3"}
SHOWN |= {"RKC-TR-5", "RKC-TR-6", "RKC-TR-8", "RKC-TR-9"}


def judge(
    mode: str, report: Report, records: Iterable[Any], spec: Spec, imported: Imported | None = None
) -> BundleVerdict:
    """The trace (its checker `report` and `records` in our format; `imported` for theirs) as
    evidence for `mode`'s bundle."""
    assert spec.lowering is not None, "the contract has a [lowering] section"
    shown = facts(report, [r for r in records if isinstance(r, dict)], spec, imported)
    violated = {OBLIGATION_OF.get(v.kind, "RKC-TR-3") for v in report.violations}
    m, v = spec.lowering.modes[mode], BundleVerdict(mode)
    if shown.terms and not any(evaluate(m.when, t) for t in shown.terms):
        v.missing["RKC-ID-1"] = f"no claim this mode covers ({m.when})"
    for oid in m.bundle:
        why = HOLDS[oid](shown) if oid in HOLDS else None
        if why is None and oid in m.exercised:
            why = EXERCISED[oid](shown)
        if oid in violated:
            v.violated.append(oid)
        elif oid not in SHOWN:
            v.not_shown.append(oid)
        elif why is not None:
            v.missing.setdefault(oid, why)
        elif oid not in v.missing:
            v.shown.append(oid)
    return v


def facts(report: Report, records: list[dict], spec: Spec, imported: Imported | None = None) -> Facts:
    """What a trace (its checker `report` and our-format `records`; `imported`: the paper's
    import, whose identity facts it reads) shows."""
    kinds = Counter(v.kind for v in report.violations)
    events = [r for r in records if r.get("kind") == "claim"]
    count = Counter(r.get("event") for r in events)
    ident = imported.identity if imported else None
    blocked, admitted = [], set()  # claim-blocked refusals; requests ever admitted (a refusal ends one)
    for r in records:
        if r.get("kind") == "request_admit":
            admitted.add(r.get("request"))
        elif r.get("kind") == "request_refuse" and r.get("reason") == "refuse_blocked":
            blocked.append(r)
    return Facts(
        claims=sum(r.get("kind") == "claim_submit" for r in records),
        materialized=count[EVENT.materialize],
        registered_first=not kinds["unknown_claim"] and (ident is None or ident.claims_registered_first),
        cache_named=_cache_named(report, imported),
        restores=len(ident.restores) if ident else count[EVENT.restore],
        restores_sound=not kinds["restore_of_resident"]
        and (ident is None or (ident.restores_from_offload_tier and ident.reuse_follows_restore)),
        failed_copies=len(ident.failures)
        if ident
        else sum(r.get("event") == EVENT.fail and r.get("reason") in FAILED_COPY for r in events),
        losses=sum(count[e] for e in spec.lifecycle.loss_events),
        blocked_refusals=len(blocked),
        early_refusals=sum(r.get("request") not in admitted for r in blocked),
        terms=tuple(_terms(r) for r in records if r.get("kind") == "claim_submit" and r.get("strength")),
        outcomes_name_claim=not kinds["refusal_without_attribution"]
        and (ident is None or ident.failures_name_same_claim),
    )


def _terms(submit: dict) -> dict[str, Any]:
    """A claim_submit's terms, named as the spec's `when` expressions read them."""
    return {
        "strength": submit.get("strength"),
        "policy": submit.get("policy"),
        "ttl_set": submit.get("ttl") is not None,
    }


def _cache_named(report: Report, imported: Imported | None) -> str | None:
    """How the trace names its cache: our runtime record's fields, or (their schema has no
    such fields) one opaque `cache_identity` label every claim carries, constant."""
    if report.identity and all(v not in (None, "") for v in report.identity.values()):
        return "model, block size, hash and namespace"
    if imported is None:
        return None
    labels = {str(v) for fields in imported.identity.claim_fields.values() for v in fields.get("cache_identity", [])}
    every = all(fields.get("cache_identity") for fields in imported.identity.claim_fields.values())
    if imported.identity.claim_fields and every and len(labels) == 1:
        return f"an opaque label, {labels.pop()!r} (their schema has no model, block size, hash or namespace)"
    return None


def render(v: BundleVerdict) -> str:
    lines = [f"bundle {v.mode}: {'evidence' if v.ok else 'NOT evidence'} for what one trace can show"]
    lines.append(f"  shown: {', '.join(v.shown) or '—'}")
    for oid in v.violated:
        lines.append(f"  violated: {oid}")
    for oid, why in v.missing.items():
        lines.append(f"  missing: {oid}: {why}")
    if v.not_shown:
        lines.append(f"  not shown by one trace (needs other evidence): {', '.join(v.not_shown)}")
    return "\n".join(lines)

"""The fail-closed lowering relation (arXiv 2606.01387): does a runtime, in one protection mode,
count as satisfying accepted claims?

A row (runtime, pinned version, mode) is classified from its descriptor's evidence
(`kvclaims.lowering.descriptor`) against the mode's bundle in the spec
(``[lowering]`` of ``spec/contract.toml``), strongest class first:

- ``rejected``: every mechanism the row rests on is one the mode lists as unable to carry
  it (hard protection on retention priority alone), or counted evidence contradicts a
  bundle obligation;
- ``native_conformance`` / ``adapter_policy`` / ``adapter_observational``: every bundle
  obligation is supported by counted evidence, the class named by the weakest depth the
  row needs (an observational adapter's evidence never counts for an obligation the
  runtime must act on: ``[lowering].acting``);
- ``approximate``: some are supported, not all;
- ``unknown``: none is.

Evidence counts only when anchored to the pinned version. Soundness, the property
`tests/test_lowering.py` checks on generated descriptors: no row is in a conformant class
unless every obligation of its bundle has counted, depth-allowed, supporting evidence
and none is contradicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvclaims.lowering.descriptor import Descriptor, Weighed, load
from kvclaims.spec import Spec

CONFORMANT = ("native_conformance", "adapter_policy", "adapter_observational")
READ_HERE = ("conformance_run", "trace")  # evidence kinds read here, not taken at a descriptor's word
CLASS_OF_DEPTH = {
    "native": "native_conformance",
    "patch": "adapter_policy",
    "policy_adapter": "adapter_policy",
    "observational_adapter": "adapter_observational",
}
DESCRIPTORS = Path(__file__).with_name("descriptors")  # the shipped ones


@dataclass
class Verdict:
    """One classified row."""

    runtime: str
    setup: str
    version: str
    mode: str
    klass: str
    missing: list[str] = field(default_factory=list)  # bundle obligations no counted evidence supports
    contradicted: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it is not stronger, one line each

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "setup": self.setup,
            "version": self.version,
            "mode": self.mode,
            "class": self.klass,
            "missing": self.missing,
            "contradicted": self.contradicted,
            "reasons": self.reasons,
        }


def classify_file(path: Path, spec: Spec) -> list[Verdict]:
    """Every row of the descriptor at `path` (raises InvalidField on a malformed one)."""
    low = spec.lowering
    assert low is not None, "the contract has a [lowering] section"
    d, weighed = load(path, low, set(spec.obligations))
    return [classify(d, i, weighed, spec) for i in range(len(d.rows))]


def classify(d: Descriptor, index: int, weighed: list[Weighed], spec: Spec) -> Verdict:
    low = spec.lowering
    assert low is not None, "the contract has a [lowering] section"
    row, mode = d.rows[index], low.modes[d.rows[index].mode]
    v = Verdict(d.runtime, d.setup, d.version, row.mode, "unknown")
    v.reasons = [f"evidence {w.item.id!r} does not count: {w.discount}" for w in weighed if w.discount]
    counted = [w for w in weighed if w.discount is None]
    v.contradicted = [oid for oid in mode.bundle if any(oid in w.contradicts for w in counted)]
    depths = {oid: _best_depth(oid, counted, spec) for oid in mode.bundle}
    v.missing = [oid for oid, depth in depths.items() if depth is None]
    for oid in v.missing:
        ignored = ", ".join(w.item.id for w in counted if oid in w.supports)
        v.reasons.append(
            f"{oid}: no counted evidence supports it"
            if not ignored
            else f"{oid}: only declared evidence ({ignored}); only a trace or a run read here can show it"
            if oid in low.read
            else f"{oid}: only an observational adapter's evidence ({ignored}), and the runtime must act on it"
        )
    if row.mechanisms and set(row.mechanisms) <= set(mode.unsound):
        v.klass = "rejected"
        v.reasons.insert(0, f"{' + '.join(row.mechanisms)} cannot carry {row.mode}: {mode.promise}")
    elif v.contradicted:
        v.klass = "rejected"
        v.reasons.insert(0, f"evidence shows {', '.join(v.contradicted)} violated")
    elif not v.missing:
        weakest = max((d for d in depths.values() if d is not None), key=low.depths.index)
        v.klass = CLASS_OF_DEPTH[weakest]
    elif len(v.missing) < len(mode.bundle):
        v.klass = "approximate"
    return v


def _best_depth(oid: str, counted: list[Weighed], spec: Spec) -> str | None:
    """The strongest depth of counted evidence supporting `oid` that may establish it."""
    low = spec.lowering
    assert low is not None, "the contract has a [lowering] section"
    allowed = [
        w.item.depth
        for w in counted
        if oid in w.supports
        and not (oid in low.acting and w.item.depth == "observational_adapter")
        and not (oid in low.read and w.item.kind not in READ_HERE)
    ]
    return min(allowed, key=low.depths.index) if allowed else None


def shipped() -> list[Path]:
    """The descriptors that ship with kvclaims, in name order."""
    return sorted(DESCRIPTORS.glob("*.toml"))

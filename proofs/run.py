"""Run every proof and exhaustive check of the spec; the JSON report format lives here."""

from __future__ import annotations

from kvclaims.proofs.feasibility import prove_feasibility
from kvclaims.proofs.lifecycle import prove_lifecycle
from kvclaims.proofs.model_check import check_machine
from kvclaims.proofs.pool import prove_invariants
from kvclaims.proofs.result import ProofResult
from kvclaims.spec import Spec, load

REPORT_SCHEMA = "kvclaims.prove/1"


def prove_all(spec: Spec | None = None) -> list[ProofResult]:
    spec = spec or load()
    return prove_lifecycle(spec) + check_machine(spec) + prove_invariants(spec) + prove_feasibility(spec)


def obligation_verdicts(spec: Spec, results: list[ProofResult]) -> dict[str, str]:
    """Per spec obligation: "proved", "failed", or "tests" (no proof; verified by the test suite)."""
    verdicts = {}
    for oid in spec.obligations:
        mine = [r for r in results if r.obligation == oid]
        verdicts[oid] = "tests" if not mine else ("proved" if all(r.proved for r in mine) else "failed")
    return verdicts


def report(spec: Spec, results: list[ProofResult]) -> dict:
    """The stable JSON document printed by `kvclaims prove --json` (see README)."""
    verdicts = obligation_verdicts(spec, results)
    return {
        "schema": REPORT_SCHEMA,
        "spec_schema_version": spec.schema_version,
        "proved": all(r.proved for r in results),
        "total_seconds": round(sum(r.seconds for r in results), 4),
        "results": [r.to_json() for r in results],
        "obligations": [
            {"id": oid, "statement": spec.obligations[oid], "verdict": verdicts[oid]} for oid in spec.obligations
        ],
    }

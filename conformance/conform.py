"""`kvclaims conform`: the whole battery against one runtime, one verdict per obligation.

Evidence per obligation id: the Z3 proofs of the contract itself, the litmus
scenarios that check it on the runtime, the rejection scenarios (the protocol's
bad input: the reference runtime's typed error, nothing changed) and the
stateful suite (which checks its ids after every step). An obligation conforms
when it has evidence and none of it failed; "not applicable" scenarios are
listed, never counted as passes.
"""

from __future__ import annotations

from collections import Counter

from kvclaims.conformance import rejections
from kvclaims.errors import BadArgument
from kvclaims.conformance.fuzz import check_steps, fuzz, runtime_factory, violation
from kvclaims.proofs.run import prove_all
from kvclaims.conformance.checker import IDENTITY, check_lines
from kvclaims.trace import read_lines
from kvclaims.conformance.litmus import B as LITMUS_B, SCENARIOS, run_all
from kvclaims.spec import load
from kvclaims.conformance.compare import violated_obligation
from kvclaims.conformance.stateful import CHECKS

REPORT_SCHEMA = "kvclaims.conformance.conform/1"
# Obligations of a serving front end (tenants, several engines), not of the runtime behind
# the adapter protocol: where they are checked instead.
TENANTS = "tenancy is the serving front end's: checked through the vLLM OpenAI server by tests/test_vllm_tenants.py"
SERVER_CHECKED = {
    "RKC-SEC-1": TENANTS,
    "RKC-SEC-2": TENANTS,
    "RKC-RT-9": "routing across engines is the serving front end's: checked through the vLLM OpenAI server "
    "with two data-parallel ranks by tests/test_vllm_dp.py",
}


# The default stateful evidence: tens of thousands of steps over a few seeds, a third of
# them one long-lived example (`kvclaims.conformance.life`).
STEPS, SEEDS, LIFE = 30_000, 3, 10_000


def conform(
    runtime: str,
    steps: int = STEPS,
    seed: int = 0,
    seeds: int = SEEDS,
    life: int | None = None,
    traces: dict[str, list[str]] | None = None,
) -> dict:
    """The battery against `runtime`; the stateful suite runs `steps` steps in all, split
    over `seeds` consecutive seeds from `seed` (each seed's programs are those `kvclaims
    fuzz --seed` runs), `life` of them (default: a third, at most `LIFE`) in one long-lived
    example at the first seed. `traces`, if given, gets each litmus scenario's trace."""
    life = min(LIFE, steps // 3) if life is None else life
    check_steps(steps, life)  # zero steps would count as stateful evidence that was never run
    check_seeds(seeds, steps)
    factory = runtime_factory(runtime)
    spec = load()
    evidence: dict[str, list[dict]] = {oid: [] for oid in spec.obligations}
    for r in prove_all(spec):
        evidence[r.obligation].append(
            {"kind": "proof", "name": r.name, "method": r.method, "result": "passed" if r.proved else "failed"}
        )
    for res in run_all(factory):
        if traces is not None:
            traces[res.name] = res.trace
        for oid in SCENARIOS[res.name].checks:
            evidence[oid].append(
                {
                    "kind": "litmus",
                    "name": res.name,
                    "result": res.status,
                    **({"reason": res.reason} if res.reason else {}),
                }
            )
    for res in rejections.run_all(factory):
        evidence[rejections.OBLIGATION].append(
            {
                "kind": "rejection",
                "name": res.name,
                "result": res.status,
                **({"reason": res.reason} if res.reason else {}),
                **({"violation": "; ".join(res.failures)} if res.failures else {}),
            }
        )
    for oid, item in _stateful(factory, steps, range(seed, seed + seeds), life).items():
        evidence[oid].append({"kind": "stateful", "name": "contract machine", **item})
    for oid, where in SERVER_CHECKED.items():
        evidence[oid].append({"kind": "server", "name": "front end", "result": "not applicable", "reason": where})
    evidence["RKC-TR-7"].append(
        {
            "kind": "checker",
            "name": "malformed-input self-test",
            "result": "passed" if _checker_survives_garbage() else "failed",
        }
    )
    header = _runtime_record(factory)
    named = all(header.get(f) not in (None, "") for f in IDENTITY)
    evidence["RKC-ID-3"].append(
        {"kind": "checker", "name": "cache identity", "result": "passed" if named else "failed"}
    )
    obligations = []
    for oid, items in evidence.items():
        results = {e["result"] for e in items}
        verdict = (
            "violated"
            if "failed" in results
            else "conforms"
            if results & {"passed"}
            else "not applicable"
            if items
            else "no evidence"
        )
        obligations.append({"id": oid, "statement": spec.obligations[oid], "verdict": verdict, "evidence": items})
    return {
        "schema": REPORT_SCHEMA,
        "runtime": runtime,
        "runtime_name": header.get("runtime"),
        "runtime_version": header.get("version"),
        "enforces_claims": header.get("enforce", True),  # false: claims only witnessed (a stock runtime)
        "identity": {f: header.get(f) for f in IDENTITY},
        "conforms": all(o["verdict"] in ("conforms", "not applicable") for o in obligations),
        "obligations": obligations,
    }


def _runtime_record(factory) -> dict:
    """A fresh runtime's first trace record: what it says it is (name, version) and the
    cache identity it names (RKC-ID-3)."""
    first = next(read_lines(factory(B=LITMUS_B, **SCENARIOS["ordinary_eviction"].shape).trace_lines()[:1]), None)
    return first[1] if first and isinstance(first[1], dict) and first[1].get("kind") == "runtime" else {}


def check_seeds(seeds: int, steps: int) -> None:
    if not 1 <= seeds <= steps:
        raise BadArgument("--seeds", f"must be in [1, steps={steps}], got {seeds}")


def _stateful(factory, steps: int, seeds: range, life: int) -> dict[str, dict]:
    """The machine's evidence per obligation, and how much of it: steps, examples and the
    seeds run. A violation that names its obligation fails that one only; the others held
    on every step before it. A crash, or a disagreement no single obligation owns, fails
    them all."""
    totals: Counter = Counter()
    short = steps - life
    for i, s in enumerate(seeds):
        share = short // len(seeds) + (i < short % len(seeds)) + (life if i == 0 else 0)
        try:
            totals += fuzz(factory, share, s, life=life if i == 0 else 0)
        except Exception as exc:  # a violation, or the runtime crashed
            failed = {
                "result": "failed",
                "seed": s,
                "violation": violation(exc),
                "program": "\n".join(getattr(exc, "__notes__", [])),
            }
            broken = violated_obligation(exc)
            if broken is None:
                return dict.fromkeys(CHECKS, failed)
            held = {"result": "passed", "until": f"the run stopped at a violation of {broken} (seed {s})"}
            return {**dict.fromkeys(CHECKS, held), broken: failed}
    gathered = {
        "steps": totals["steps"],
        "examples": totals["examples"],
        "life_steps": totals["life steps"],
        "seeds": list(seeds),
    }
    return dict.fromkeys(CHECKS, {"result": "passed", **gathered})


def _checker_survives_garbage() -> bool:
    """The checker reads garbage without crashing and names each bad line."""
    garbage = ["", "not json", "[1, 2]", '{"schema_version": 1, "seq": "x"}', "\x00\xff", "{" * 5000]
    report = check_lines(garbage)
    return sorted({v.line for v in report.violations}) == [2, 3, 4, 5, 6]

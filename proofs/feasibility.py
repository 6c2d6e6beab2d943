"""Feasibility obligations: the spec's outcome conditions against explicit allocations.

An allocation of A blocks takes x_c ≤ n_c blocks from each class c. "Now" may
use free, cached and yielding blocks; "after active KV drains" may also use the
active ones; protected blocks are never used. Outcomes are compiled from the
spec's `when` strings, first match wins, exactly as kvclaims.model.feasibility
evaluates them. Attribution is checked over Venn regions of N_CLAIMS symbolic
blocking claims: r[T] blocks are protected by exactly the claims in T.
"""

from __future__ import annotations

from itertools import combinations

import z3

from kvclaims.proofs.encoding import Sorts, new_solver, scope
from kvclaims.proofs.result import ProofResult, Stopwatch, unsat_result
from kvclaims.spec import Spec

N_CLAIMS = 4
NOW = ("free", "cached", "yielding")
DRAINED = NOW + ("active",)


class _Feas:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.sorts = Sorts(spec)
        self.v = {n: z3.Int(n) for n in spec.feasibility_inputs}
        self.assume = [self.expr(a) for a in spec.feasibility_assume]
        self.when = {o.name: self.expr(o.when) for o in spec.outcomes}

    def expr(self, src: str) -> z3.ExprRef:
        return self.sorts.compile(src, self.v)

    def decided(self, name: str) -> z3.ExprRef:
        """Outcome `name` is the decision: its condition holds and no earlier one does."""
        names = [o.name for o in self.spec.outcomes]
        earlier = names[: names.index(name)]
        return z3.And(self.when[name], *[z3.Not(self.when[e]) for e in earlier])

    def allocation(self, classes: tuple[str, ...], tag: str) -> tuple[z3.ExprRef, list]:
        xs = [z3.Int(f"x_{c}_{tag}") for c in classes]
        fits = z3.And(*[z3.And(x >= 0, x <= self.v[c]) for x, c in zip(xs, classes)], z3.Sum(xs) == self.v["A"])
        return fits, xs

    def exists(self, classes: tuple[str, ...], tag: str) -> z3.ExprRef:
        fits, xs = self.allocation(classes, tag)
        return z3.Exists(xs, fits)


def _query(oid: str, name: str, claims: list, f: _Feas, method: str = "smt") -> ProofResult:
    """Prove that `claims` (a conjunction) is unsat under the spec's assumptions."""
    clock = Stopwatch()
    s = new_solver()
    s.add(*f.assume, *claims)

    def explain(m: z3.ModelRef) -> str:
        return "counterexample: " + ", ".join(f"{k}={m.eval(v, model_completion=True)}" for k, v in f.v.items())

    return unsat_result(oid, name, method, s, clock, explain)


def prove_feasibility(spec: Spec) -> list[ProofResult]:
    f = _Feas(spec)
    v = f.v
    out = []
    out.append(
        _query("RKC-FEAS-1", "refuse_too_large iff A > U", [f.decided("refuse_too_large") != (v["A"] > v["U"])], f)
    )
    fits_now, _ = f.allocation(NOW, "n")
    out.append(
        _query(
            "RKC-FEAS-2",
            "admit ⇒ an allocation from free+cached+yielding exists",
            [f.decided("admit"), z3.Not(f.exists(NOW, "q"))],
            f,
        )
    )
    out.append(_query("RKC-FEAS-2", "an allocation now exists ⇒ admit", [fits_now, z3.Not(f.decided("admit"))], f))
    fits_drained, _ = f.allocation(DRAINED, "d")
    out.append(
        _query(
            "RKC-FEAS-3",
            "wait ⇒ no allocation now, one after active drains",
            [f.decided("wait"), z3.Or(f.exists(NOW, "q"), z3.Not(f.exists(DRAINED, "q2")))],
            f,
        )
    )
    out.append(
        _query(
            "RKC-FEAS-3",
            "no allocation now but one after draining ⇒ wait",
            [fits_drained, z3.Not(f.exists(NOW, "q")), z3.Not(f.decided("wait"))],
            f,
        )
    )
    out.append(
        _query(
            "RKC-FEAS-4",
            "refuse_blocked ⇒ no allocation leaves protected untouched",
            [f.decided("refuse_blocked"), fits_drained],
            f,
        )
    )
    out.append(
        _query("RKC-FEAS-7", "outcomes are exhaustive", [z3.Not(z3.Or(*[f.decided(o.name) for o in spec.outcomes]))], f)
    )
    for o in spec.outcomes:
        out.append(_reachable_outcome(o.name, f))
    out += _attribution(f)
    out += _acceptance(spec)
    out.append(_probe(f))
    return out


def _reachable_outcome(name: str, f: _Feas) -> ProofResult:
    """Each outcome can actually be decided (no dead rows in the spec)."""
    clock = Stopwatch()
    s = new_solver()
    s.add(*f.assume, f.decided(name))
    ok = s.check() == z3.sat
    return ProofResult(
        "RKC-FEAS-7",
        f"outcome {name!r} is decidable (sat)",
        "smt",
        ok,
        clock.seconds(),
        1,
        "" if ok else "the outcome can never be decided",
    )


def _regions(n: int):
    subsets = [frozenset(c) for k in range(1, n + 1) for c in combinations(range(n), k)]
    r = {T: z3.Int("r_" + "".join(map(str, sorted(T)))) for T in subsets}
    return subsets, r


def _attribution(f: _Feas) -> list[ProofResult]:
    """The greedy rule used for disjoint claims meets the attribution definition.

    Definition (RKC-FEAS-6): among subsets S of blocking claims with
    freed(S) >= need, the smallest; then the one freeing most; then the
    lexicographically smallest sorted ids. For disjoint claims (only singleton
    regions), greedy picks claims by (size desc, id asc) until need is met.
    """
    n = N_CLAIMS
    v = f.v
    subsets, r = _regions(n)
    protected_total = z3.Sum(list(r.values()))
    need = v["A"] - (v["U"] - v["protected"])
    base = [*(x >= 0 for x in r.values()), v["protected"] == protected_total, f.decided("refuse_blocked")]

    def freed(S):
        return z3.Sum([r[T] for T in subsets if T <= S] or [z3.IntVal(0)])

    size = [r[frozenset([i])] for i in range(n)]
    disjoint = [r[T] == 0 for T in subsets if len(T) > 1]

    def before(j, i):
        return z3.Or(size[j] > size[i], z3.And(size[j] == size[i], j < i))

    pick = [
        z3.Sum([z3.If(before(j, i), size[j], 0) for j in range(n) if j != i] or [z3.IntVal(0)]) < need for i in range(n)
    ]
    all_sets = [frozenset(c) for k in range(n + 1) for c in combinations(range(n), k)]
    is_pick = {S: z3.And(*[pick[i] if i in S else z3.Not(pick[i]) for i in range(n)]) for S in all_sets}

    def better(S2, S):
        """S2 precedes S under the definition's order."""
        if len(S2) != len(S):
            return z3.BoolVal(len(S2) < len(S))
        lex = sorted(S2) < sorted(S)
        return z3.Or(freed(S2) > freed(S), z3.And(freed(S2) == freed(S), z3.BoolVal(lex)))

    clock = Stopwatch()
    s = new_solver()
    s.add(*f.assume, *base, *disjoint)
    failures = []
    for S in all_sets:
        with scope(s):
            s.add(is_pick[S], freed(S) < need)
            if s.check() != z3.unsat:
                failures.append(f"greedy set {sorted(S)} may not suffice")
    suff = ProofResult(
        "RKC-FEAS-5",
        f"greedy attribution frees enough ({n} disjoint claims)",
        "smt",
        not failures,
        clock.seconds(),
        len(all_sets),
        "; ".join(failures),
    )

    clock = Stopwatch()
    failures = []
    queries = 0
    for S in all_sets:
        for S2 in all_sets:
            if S2 == S:
                continue
            with scope(s):
                s.add(is_pick[S], freed(S2) >= need, better(S2, S))
                queries += 1
                if s.check() != z3.unsat:
                    failures.append(f"{sorted(S2)} beats greedy {sorted(S)}")
    minimal = ProofResult(
        "RKC-FEAS-6",
        f"greedy attribution is the minimal deterministic set ({n} disjoint claims)",
        "smt",
        not failures,
        clock.seconds(),
        queries,
        "; ".join(failures[:3]),
    )

    clock = Stopwatch()
    s2 = new_solver()
    s2.add(*f.assume, *base)
    ok = True
    with scope(s2):
        s2.add(freed(frozenset(range(n))) < need)
        ok = s2.check() == z3.unsat
    exists = ProofResult(
        "RKC-FEAS-5",
        f"releasing all blocking claims always suffices ({n} overlapping claims)",
        "smt",
        ok,
        clock.seconds(),
        1,
        "" if ok else "a claim-blocked request that no release can admit",
    )
    return [suff, minimal, exists]


def _acceptance(spec: Spec) -> list[ProofResult]:
    """within_reserve and exceeds_reserve partition hard claims; soft claims are never refused."""
    sorts = Sorts(spec)
    v = {n: z3.Int(n) for n in ("reserved", "k", "U", "R")}
    v["c_hard"] = z3.Bool("c_hard")
    within = sorts.compile(spec.pool_guards["within_reserve"], v)
    exceeds = sorts.compile(spec.pool_guards["exceeds_reserve"], v)
    clock = Stopwatch()
    s = new_solver()
    s.add(
        z3.Not(
            z3.And(
                within != exceeds,
                z3.Implies(within, z3.Or(z3.Not(v["c_hard"]), v["reserved"] + v["k"] <= v["U"] - v["R"])),
            )
        )
    )
    ok = s.check() == z3.unsat
    return [
        ProofResult(
            "RKC-ACC-1",
            "accept iff within the reserve; refuse iff it would be exceeded",
            "smt",
            ok,
            clock.seconds(),
            1,
            "" if ok else str(s.model()),
        )
    ]


def _probe(f: _Feas) -> ProofResult:
    """U=80, one materialized 60-block hard claim, a 70-block prefill: refuse_blocked."""
    v = f.v
    values = {"A": 70, "U": 80, "free": 20, "cached": 0, "yielding": 0, "active": 0, "protected": 60}
    clock = Stopwatch()
    s = new_solver()
    s.add(*f.assume, *[v[k] == val for k, val in values.items()], z3.Not(f.decided("refuse_blocked")))
    ok = s.check() == z3.unsat
    from kvclaims.model.feasibility import Decision, PoolCounts, decide

    counts = {k: val for k, val in values.items() if k != "A"}
    decision: Decision | AssertionError
    try:
        decision = decide(70, PoolCounts(**counts), {"probe": frozenset(range(60))}, f.spec)
    except AssertionError as exc:  # a spec whose outcomes are not exhaustive
        decision = exc
    ok = ok and getattr(decision, "blocking_claims", None) == ("probe",)
    return ProofResult(
        "RKC-PROBE-1",
        "80/60/70 probe: refuse_blocked, attributed to the claim",
        "smt (concrete)",
        ok,
        clock.seconds(),
        1,
        "" if ok else f"decision was {decision}",
    )

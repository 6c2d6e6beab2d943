"""Lifecycle obligations checked by Z3 over the transition relation generated from the spec."""

from __future__ import annotations

import z3

from kvclaims.proofs.encoding import Sorts, new_solver, scope
from kvclaims.proofs.result import ProofResult, Stopwatch, unsat_result
from kvclaims.spec import Spec


def _relation(sorts: Sorts, spec: Spec):
    """T(s, e, d) as a Z3 formula: one disjunct per row of the spec's table."""
    S, st = sorts.enums["ClaimState"]
    E, ev = sorts.enums["ClaimEvent"]

    def T(s, e, d):
        return z3.Or(
            *[z3.And(s == st[t.source], e == ev[t.event], d == st[t.dest]) for t in spec.lifecycle.transitions]
        )

    return S, st, E, ev, T


def prove_lifecycle(spec: Spec) -> list[ProofResult]:
    sorts = Sorts(spec)
    S, st, E, ev, T = _relation(sorts, spec)
    lc = spec.lifecycle
    s, e, d, d2 = z3.Const("s", S), z3.Const("e", E), z3.Const("d", S), z3.Const("d2", S)

    def show(m):
        return f"s={m.eval(s)}, e={m.eval(e)}, d={m.eval(d)}" + (
            f", d2={m.eval(d2)}" if m.eval(d2, model_completion=False) is not None else ""
        )

    results = []
    clock = Stopwatch()
    q = new_solver()
    q.add(T(s, e, d), T(s, e, d2), d != d2)
    results.append(
        unsat_result(
            "RKC-LC-1",
            "deterministic: T(s,e,d) ∧ T(s,e,d2) ⇒ d = d2",
            "smt",
            q,
            clock,
            lambda m: f"two destinations: {show(m)}",
        )
    )

    clock = Stopwatch()
    q = new_solver()
    q.add(T(s, e, d), z3.Or(*[s == st[x] for x in lc.terminal]))
    results.append(
        unsat_result(
            "RKC-LC-3",
            "terminal states have no outgoing transition",
            "smt",
            q,
            clock,
            lambda m: f"leaves a terminal state: {show(m)}",
        )
    )

    clock = Stopwatch()
    q = new_solver()
    q.add(
        T(s, e, d),
        z3.Or(*[s == st[x] for x in lc.protected]),
        z3.And(*[d != st[x] for x in lc.protected]),
        z3.And(*[e != ev[x] for x in lc.loss_events]),
    )
    results.append(
        unsat_result(
            "RKC-LC-4",
            "leaving a protected state takes a loss-permitting event",
            "smt",
            q,
            clock,
            lambda m: f"leaves protection without a loss event: {show(m)}",
        )
    )

    results.append(_reachability(lc, st, ev, S, E, T))
    return results


def _reachability(lc, st, ev, S, E, T) -> ProofResult:
    """Every state is reached from the initial one within |states| steps (bounded, hence complete)."""
    clock = Stopwatch()
    k = len(lc.states)
    path = [z3.Const(f"p{i}", S) for i in range(k)]
    steps = [z3.Const(f"e{i}", E) for i in range(k - 1)]
    q = new_solver()
    q.add(path[0] == st[lc.initial])
    # each step either fires a transition or stays (so shorter paths are included)
    for i in range(k - 1):
        q.add(z3.Or(T(path[i], steps[i], path[i + 1]), path[i + 1] == path[i]))
    unreached = []
    for name in lc.states:
        with scope(q):
            q.add(path[-1] == st[name])
            if q.check() != z3.sat:
                unreached.append(name)
    return ProofResult(
        "RKC-LC-2",
        f"every state reachable from {lc.initial!r}",
        f"bmc k={k - 1} (complete: {k} states)",
        not unreached,
        clock.seconds(),
        len(lc.states),
        f"unreachable: {unreached}" if unreached else "",
    )

"""Pool invariants proved by induction over the spec's abstract pool.

Base case: ``Assume ∧ Init ∧ ¬I`` is unsat. Step case, one query per
(invariant conjunct × action): ``Assume ∧ Inv ∧ Guard_a ∧ T_a ∧ ¬I'`` is unsat.
When a step query is sat, a bounded search from Init looks for a real trace to
the violation, which is printed step by step and replayed in Python through
``kvclaims.model.pool_system`` (the same expressions, evaluated concretely).
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from kvclaims.proofs.encoding import Sorts, new_solver, scope
from kvclaims.proofs.result import ProofResult, Stopwatch
from kvclaims.spec import Action, Invariant, Spec

BMC_DEPTH = 12


@dataclass
class PoolEncoding:
    spec: Spec
    sorts: Sorts

    def __post_init__(self) -> None:
        self.consts = {n: z3.Const(n, self.sorts.sort(t)) for n, t in self.spec.pool_constants.items()}

    def state(self, tag: str) -> dict[str, z3.ExprRef]:
        return {n: z3.Const(f"{n}@{tag}", self.sorts.sort(t)) for n, t in self.spec.pool_vars.items()}

    def params(self, action: Action, tag: str) -> dict[str, z3.ExprRef]:
        return {n: z3.Const(f"{action.name}.{n}@{tag}", self.sorts.sort(t)) for n, t in action.params.items()}

    def expr(self, src: str, state: dict, extra: dict | None = None) -> z3.ExprRef:
        return self.sorts.compile(src, {**self.consts, **state, **(extra or {})})

    def assumptions(self) -> list[z3.ExprRef]:
        return [self.expr(a, {}) for a in self.spec.pool_assume]

    def init(self, state: dict) -> list[z3.ExprRef]:
        return [self.expr(i, state) for i in self.spec.pool_init]

    def invariant(self, inv: Invariant, state: dict) -> z3.ExprRef:
        return self.expr(inv.expr, state)

    def step(self, action: Action, pre: dict, post: dict, params: dict) -> list[z3.ExprRef]:
        """Guard conjuncts plus the frame-complete update of every variable."""
        env = {**self.consts, **pre, **params}
        terms = [self.sorts.compile(g, env) for g in action.guard]
        for var, type_name in self.spec.pool_vars.items():
            src = action.update.get(var)
            new = self.sorts.compile(src, env, type_name) if src else pre[var]
            terms.append(post[var] == new)
        return terms

    def any_step(self, pre: dict, post: dict, tag: str) -> tuple[z3.ExprRef, z3.ExprRef]:
        """A disjunction over all actions, and a selector term naming the one taken."""
        choice = z3.Int(f"action@{tag}")
        options = []
        for i, action in enumerate(self.spec.actions):
            options.append(z3.And(choice == i, *self.step(action, pre, post, self.params(action, tag))))
        return z3.Or(*options), choice

    def read_state(self, model: z3.ModelRef, state: dict) -> dict:
        return {n: self.sorts.name_of(model.eval(t, model_completion=True)) for n, t in state.items()}

    def read_consts(self, model: z3.ModelRef) -> dict:
        return self.read_state(model, self.consts)

    def read_params(self, model: z3.ModelRef, action: Action, tag: str) -> dict:
        return self.read_state(model, self.params(action, tag))


def _check(solver: z3.Solver, what: str) -> z3.CheckSatResult:
    verdict = solver.check()
    if verdict == z3.unknown:
        raise SolverUnknown(f"{what}: solver answered unknown ({solver.reason_unknown()})")
    return verdict


class SolverUnknown(RuntimeError):
    """Z3 gave neither sat nor unsat: counted as a failed proof, never as proved."""


def find_trace(enc: PoolEncoding, inv: Invariant, depth: int = BMC_DEPTH) -> list[dict] | None:
    """Shortest trace from Init to a state violating `inv`, or None within `depth` steps."""
    states = [enc.state("0")]
    s = new_solver()
    s.add(*enc.assumptions(), *enc.init(states[0]))
    choices: list[z3.ExprRef] = []
    for k in range(depth + 1):
        with_bad = z3.Not(enc.invariant(inv, states[k]))
        s.push()
        s.add(with_bad)
        if _check(s, f"bmc {inv.name} k={k}") == z3.sat:
            m = s.model()
            consts = enc.read_consts(m)
            trace = [
                {"step": 0, "action": "init", "params": {}, "state": enc.read_state(m, states[0]), "constants": consts}
            ]
            for i, choice in enumerate(choices):
                action = enc.spec.actions[m.eval(choice, model_completion=True).as_long()]
                trace.append(
                    {
                        "step": i + 1,
                        "action": action.name,
                        "params": enc.read_params(m, action, str(i)),
                        "state": enc.read_state(m, states[i + 1]),
                    }
                )
            s.pop()
            return trace
        s.pop()
        nxt = enc.state(str(k + 1))
        relation, choice = enc.any_step(states[k], nxt, str(k))
        s.add(relation, z3.And(choice >= 0, choice < len(enc.spec.actions)))
        states.append(nxt)
        choices.append(choice)
    return None


def format_trace(trace: list[dict], broken: str) -> str:
    lines = [f"counterexample to {broken}:", f"  constants: {trace[0]['constants']}"]
    prev: dict = {}
    for step in trace:
        changed = {k: v for k, v in step["state"].items() if prev.get(k, object()) != v}
        params = f" {step['params']}" if step["params"] else ""
        lines.append(f"  {step['step']:>2}. {step['action']}{params} -> {changed}")
        prev = step["state"]
    return "\n".join(lines)


def prove_invariants(spec: Spec) -> list[ProofResult]:
    """Prove every invariant conjunct by induction; one result per conjunct."""
    from kvclaims.model.pool_system import replay  # the counterexample must replay concretely

    enc = PoolEncoding(spec, Sorts(spec))
    all_inv_pre = None
    results = []
    for inv in spec.invariants:
        clock = Stopwatch()
        pre, post = enc.state("pre"), enc.state("post")
        if all_inv_pre is None:
            all_inv_pre = [enc.invariant(i, pre) for i in spec.invariants]
        queries, failures = 0, []
        s = new_solver()
        s.add(*enc.assumptions())
        try:
            with scope(s):
                s.add(*enc.init(pre), z3.Not(enc.invariant(inv, pre)))
                queries += 1
                if _check(s, f"{inv.name} base") == z3.sat:
                    failures.append("base case (Init)")
            s.add(*all_inv_pre)
            for action in spec.actions:
                with scope(s):
                    s.add(*enc.step(action, pre, post, enc.params(action, "pre")))
                    s.add(z3.Not(enc.invariant(inv, post)))
                    queries += 1
                    if _check(s, f"{inv.name} × {action.name}") == z3.sat:
                        m = s.model()
                        failures.append(
                            f"step {action.name}: from {enc.read_state(m, pre)} with "
                            f"{enc.read_params(m, action, 'pre')} to {enc.read_state(m, post)} "
                            f"(constants {enc.read_consts(m)})"
                        )
        except SolverUnknown as exc:
            failures.append(str(exc))
        detail, trace = "", []
        if failures:
            found = find_trace(enc, inv)
            if found:
                trace = found
                replay(spec, trace, inv)
                detail = format_trace(trace, f"{inv.id} {inv.name}")
            else:
                detail = (
                    f"{inv.id} {inv.name} is not inductive; no trace from Init within "
                    f"{BMC_DEPTH} steps. Failing queries:\n  " + "\n  ".join(failures)
                )
        results.append(
            ProofResult(
                inv.id,
                f"{inv.name} (base + {len(spec.actions)} steps)",
                "induction",
                not failures,
                clock.seconds(),
                queries,
                detail,
                trace,
            )
        )
    return results

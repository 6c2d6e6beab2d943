"""The spec's abstract pool, executed concretely in Python.

Used to replay solver counterexamples: a trace the prover found must also
violate the invariant when its steps run here, or the two disagree.
"""

from __future__ import annotations

from kvclaims.model.lifecycle import Lifecycle
from kvclaims.spec import Action, Invariant, Spec
from kvclaims.spec.expr import evaluate


class ReplayError(AssertionError):
    """A counterexample did not replay: the prover and the Python model disagree."""


def apply(spec: Spec, action: Action, consts: dict, state: dict, params: dict) -> dict:
    """The next state, or ReplayError if the action's guard does not hold."""
    env = {**consts, **state, **params}
    failed = [g for g in action.guard if not evaluate(g, env)]
    if failed:
        raise ReplayError(f"{action.name}: guard {failed[0]!r} is false in {env}")
    return {v: evaluate(action.update[v], env) if v in action.update else state[v] for v in spec.pool_vars}


def replay(spec: Spec, trace: list[dict], broken: Invariant) -> dict:
    """Run a counterexample's steps; check each state and that `broken` fails at the end.

    The tracked claim's state changes are also driven through the lifecycle
    machine built from the same spec, so an illegal lifecycle move in a
    counterexample would be caught here too.
    """
    consts = trace[0]["constants"]
    state = dict(trace[0]["state"])
    if not all(evaluate(i, {**consts, **state}) for i in spec.pool_init):
        raise ReplayError(f"trace does not start in Init: {state}")
    claim = Lifecycle(spec).claim("c")
    by_name = {a.name: a for a in spec.actions}
    for step in trace[1:]:
        state = apply(spec, by_name[step["action"]], consts, state, step["params"])
        if state != step["state"]:
            raise ReplayError(f"step {step['step']}: Python gives {state}, solver {step['state']}")
        if state["cs"] != claim.state:
            event = next(
                t.event
                for t in spec.lifecycle.transitions
                if t.source == claim.state
                and t.dest == state["cs"]
                and (step["params"].get("ev", t.event) == t.event)
                and by_name[step["action"]].event in (None, t.event)
            )
            claim.fire(event, unchecked_guards=True)
    if evaluate(broken.expr, {**consts, **state}):
        raise ReplayError(f"trace ends in a state where {broken.name} holds: {state}")
    return state

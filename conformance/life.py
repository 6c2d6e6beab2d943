"""Long-lived examples ("lives"): one runtime driven through 10^4-10^5 steps, so what goes
wrong only after many operations or records (a counter, a slow leak, a wrap) shows.

Hypothesis draws each example's steps into a bounded choice buffer (an example stops at
about 1,600 steps of this machine), so a life is a chain of stretches, each one example of
the ordinary contract machine that starts where the previous one stopped (runtime, oracle,
streaming checker, comparison: everything the machine's `start` built), its bundles seeded
with the claims and requests still live. Hypothesis assumes a test is a function of its
choices, so every example of one Hypothesis run must start from the same state: a stretch
is its own run of two examples, the first of which (Hypothesis' "simplest" example, always
tried first) is skipped by the `stretch` rule, and the second continues the life.

A failure is not raised inside Hypothesis: a later run could not re-create the state the
life failed in, so Hypothesis' replay and shrinking do not apply. The life stops at the
failing step and `live` raises the failure with the life's whole program, every step since
`start`, written to a file that `replay` runs on a fresh runtime.

Steps are wrapped through Hypothesis' rule markers (`hypothesis.stateful.RULE_MARKER` and
its kin: the attributes `@rule`, `@initialize` and `@invariant` set); no public API hands a
machine each step's arguments. `tests/test_life.py` fails first if they change.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections import Counter
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    INITIALIZE_RULE_MARKER,
    INVARIANT_MARKER,
    RULE_MARKER,
    initialize,
    multiple,
    run_state_machine_as_test,
)

from kvclaims.conformance.stateful import ContractMachine, Factory, machine_for
from kvclaims.model.names import EVENT, STATUS

STEPS_PER_STRETCH = 100
SHOWN = 40  # program lines a failure's notes show; the whole program is in the file
SALT = 7_919  # a life's seeds are apart from `fuzz`'s short examples' at the same --seed
KEPT = 8  # live claims a stretch hands on


class Life:
    """One life's carried machine state, its program so far and the failure that ended it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.program: list[str] = []
        self.failure: Exception | None = None
        self.depth = 0  # > 0 while a step runs


def live(
    factory: Factory,
    steps: int,
    seed_value: int,
    *,
    log: Callable[[str], object] = lambda m: None,
    progress: Callable[[int], object] = lambda steps: None,
) -> Counter:
    """Drive one runtime made by `factory` for at least `steps` steps; returns the counts
    `fuzz` reports (and tells `progress` the steps so far after each stretch). Raises the
    failure that ended the life, with notes naming the program file."""
    life, totals = Life(), Counter[str]()
    Machine = life_machine(factory, life, totals)
    stretch = 0
    while totals["steps"] < steps and life.failure is None:
        run_state_machine_as_test(
            seed(seed_value * 1_000_003 + SALT + stretch)(Machine),
            settings=settings(
                max_examples=2,
                stateful_step_count=STEPS_PER_STRETCH,
                deadline=None,
                database=None,
                derandomize=False,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate],
            ),
        )
        stretch += 1
        progress(totals["steps"])
        if stretch % 20 == 0:
            log(f"life: {totals['steps']} steps")
    if life.failure is not None:
        raise _with_program(life.failure, life.program, seed_value)
    return totals


def life_machine(factory: Factory, life: Life, totals: Counter) -> type[ContractMachine]:
    """The contract machine for `factory`, each of its examples one stretch of `life`."""
    base = machine_for(factory)
    attrs: dict[str, Any] = {name: _guarded(f, life) for name, f in _steps(base)}
    fresh: set[str] = set()

    def __init__(machine: Any) -> None:
        base.__init__(machine)
        machine.skipped, machine.calls = False, []
        fresh.update(vars(machine))
        if life.state is not None:
            vars(machine).update(life.state)

    def teardown(machine: Any) -> None:
        if machine.skipped:
            return
        if hasattr(machine, "rt"):
            _turnover(machine)
        totals.update(machine.stats)
        totals["steps"] += machine.steps
        totals["examples"] += 1
        life.program += machine.calls
        if hasattr(machine, "rt"):
            life.state = {k: v for k, v in vars(machine).items() if k not in fresh}

    @initialize(go=st.integers(0, 2**16))
    def stretch(machine: Any, go: int) -> None:
        """Hypothesis' simplest example (go=0) is skipped: it starts from the same state as
        the next, which continues the life."""
        machine.skipped = go == 0

    @initialize(target=ContractMachine.claims)
    def carried_claims(machine: ContractMachine) -> object:
        """The claims still live when the previous stretch ended (none on the first)."""
        model = getattr(machine, "model", None)
        return multiple(*([cid for cid, c in model.claims.items() if not c.fsm.terminal] if model else []))

    attrs.update(__init__=__init__, teardown=teardown, stretch=stretch, carried_claims=carried_claims)
    return type("LifeMachine", (base,), attrs)


def _turnover(machine: Any) -> None:
    """The end of a stretch: the requests it left open end (waiting ones are aborted, then
    running ones finish) and live claims past the `KEPT` newest are released. Arrivals
    outnumber departures among the machine's rules, so without this a life fills its pool
    with running requests and claims for good, and every later request waits. These are
    recorded steps, each checked like any other; the cache, the host tier, the kept claims,
    the clock and every counter live on."""
    model = machine.model
    for status, end in ((STATUS.waiting, "abort"), (STATUS.running, "finish")):
        for rid in [rid for rid, r in model.requests.items() if r.status == status]:
            if model.requests[rid].status == status:
                getattr(machine, end)(request=rid, **({"admit": True} if end == "finish" else {}))
                machine.contract_holds()
    live_claims = [cid for cid, c in model.claims.items() if not c.fsm.terminal]  # oldest first
    for cid in live_claims[:-KEPT]:
        if EVENT.release in model.claims[cid].fsm.allowed():
            machine.release_claim(claim=cid)
            machine.contract_holds()


def replay(path: str, factory: Factory) -> None:
    """Run a life's program (the file `live` wrote) on a fresh runtime made by `factory`;
    raises where the life failed, if the runtime still fails there."""
    state = machine_for(factory)()
    with open(path) as f:
        for line in f:
            if line.startswith("state."):
                eval(line, {"state": state})  # our own recorded calls: state.rule(k=literal, ...)


def _steps(machine: type[ContractMachine]):
    """Every rule, initialize rule and invariant of `machine`, by attribute name."""
    for name in dir(machine):
        f = getattr(machine, name)
        if any(getattr(f, m, None) is not None for m in (RULE_MARKER, INITIALIZE_RULE_MARKER, INVARIANT_MARKER)):
            yield name, f


def _guarded(f: Any, life: Life) -> Any:
    """`f` recorded into the life's program; once the life has failed, a no-op. A failure
    is kept, not raised (see the module's docstring)."""
    marker = next(m for m in (RULE_MARKER, INITIALIZE_RULE_MARKER, INVARIANT_MARKER) if getattr(f, m, None))
    step = getattr(f, marker)
    targets = marker != INVARIANT_MARKER and bool(step.targets)
    start = marker == INITIALIZE_RULE_MARKER

    @functools.wraps(f)
    def guarded(machine: Any, *args: Any, **kwargs: Any) -> Any:
        if life.depth:  # a rule calling another: part of the outer step
            return f(machine, *args, **kwargs)
        if life.failure is not None or machine.skipped or (start and life.state is not None):
            return multiple() if targets else None
        machine.calls.append(f"state.{f.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        life.depth += 1
        try:
            return f(machine, **kwargs)
        except Exception as exc:  # kept: the life ends here (see the module's docstring)
            life.failure = exc
            return multiple() if targets else None
        finally:
            life.depth -= 1

    setattr(guarded, marker, dataclasses.replace(step, function=guarded))
    return guarded


def _with_program(exc: Exception, program: list[str], seed_value: int) -> Exception:
    with tempfile.NamedTemporaryFile("w", prefix="kvclaims-life-", suffix=".py", delete=False) as f:
        f.write(f"# kvclaims life, seed {seed_value}: {len(program)} calls (kvclaims.conformance.life.replay)\n")
        f.write("\n".join(program) + "\n")
    exc.add_note(f"a long-lived example (seed {seed_value}) failed after {len(program)} calls; its last {SHOWN}:")
    exc.add_note("\n".join(program[-SHOWN:]))
    exc.add_note(f"the whole program: {f.name} (kvclaims.conformance.life.replay(path, runtime factory))")
    return exc

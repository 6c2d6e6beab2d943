"""`kvclaims fuzz`: the stateful contract test for N steps against any runtime adapter.

Steps run in batches of Hypothesis examples, each batch with its own seed
derived from --seed, so a run is reproducible. A failure raises with the shrunk,
replayable program in its notes (`kvclaims.cli.fuzz` prints it and exits 1);
otherwise the counts of what was exercised.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from functools import partial

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from kvclaims.conformance.adapter import load_adapter
from kvclaims.errors import BadArgument, KVClaimsError
from kvclaims.conformance.compare import violated_obligation
from kvclaims.conformance.life import live
from kvclaims.conformance.stateful import ContractMachine, Factory, machine_for

STEPS_PER_EXAMPLE = 50
EXAMPLES_PER_BATCH = 200
SUMMARY = {  # summary line -> trace record kinds (claim events as claim:<event>)
    "conflicts (claim-blocked refusals)": ("request_refuse:refuse_blocked",),
    "refusals": ("request_refuse:refuse_blocked", "request_refuse:refuse_too_large"),
    "waits": ("request_wait",),
    "evictions": ("block_evict",),
    "demotions": ("claim:demote",),
    "offloads": ("claim:offload",),
    "restores": ("claim:restore",),
    "harms": ("claim:harm",),
    "fail-closed": ("claim:fail",),
    "claims": ("claim_submit",),
    "requests": ("request_submit",),
}


def fuzz(
    runtime: str | Factory, steps: int, seed_value: int, *, faults: bool = True, life: int = 0, log=lambda msg: None
) -> Counter:
    """Run at least `steps` steps against a runtime (a name for `load_adapter`, or a factory
    from `runtime_factory`) in short examples, then, with `life`, one long-lived example of
    at least that many steps (`kvclaims.conformance.life`); raises the failing example's
    error on a violation. `steps` counts both; `life steps` the long-lived one's."""
    load_toolkit()  # a seed runs the same programs whichever command asked
    totals: Counter = Counter()
    factory = runtime_factory(runtime) if isinstance(runtime, str) else runtime
    if not faults:
        factory = _without_faults(factory)

    def teardown(machine: ContractMachine) -> None:
        totals.update(machine.stats)
        totals["steps"] += machine.steps
        totals["examples"] += 1

    Counted = type("Counted", (machine_for(factory),), {"teardown": teardown})

    batch = 0
    short = steps - life
    while totals["steps"] < short:
        machine = seed(seed_value * 1_000_003 + batch)(Counted)
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=min(EXAMPLES_PER_BATCH, -(-(short - totals["steps"]) // STEPS_PER_EXAMPLE)),
                stateful_step_count=STEPS_PER_EXAMPLE,
                deadline=None,
                database=None,
                derandomize=False,
                report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate, Phase.shrink],
            ),
        )
        batch += 1
        log(f"batch {batch}: {totals['steps']} steps")
    if life:
        lived = live(factory, life, seed_value, log=log)
        totals.update(lived)
        totals["life steps"] += lived["steps"]
    return totals


def runtime_factory(runtime: str, **fixed) -> Factory:
    """`load_adapter` for `runtime` (with `fixed` arguments, e.g. a device), built once on a
    small pool first: a runtime that cannot be built is one error up front (a bad --runtime or
    --device), not a failure inside every scenario or example."""
    factory = partial(load_adapter, runtime, **fixed)
    try:
        factory(U=8, B=4, R=0, host_blocks=0)
    except KVClaimsError:
        raise
    except Exception as exc:  # whatever the named class raises: it cannot serve as a runtime
        given = "".join(f" with {k}={v!r}" for k, v in fixed.items())
        raise BadArgument("--runtime", f"cannot build {runtime!r}{given}: {type(exc).__name__}: {exc}") from None
    return factory


def _without_faults(factory):
    def make(**shape):
        runtime = factory(**shape)
        runtime.capabilities = runtime.capabilities - {"reset_cache", "evict_blocks", "device_fault", "host_fault"}
        return runtime

    return make


def check_steps(steps: int, life: int = 0) -> None:
    if steps < 1:
        raise BadArgument("--steps", f"must be at least 1, got {steps}")
    if not 0 <= life <= steps:
        raise BadArgument("--life", f"must be in [0, steps={steps}], got {life}")


def violation(exc: BaseException) -> str:
    """The first line of what broke the contract; a crash (an untyped error) is named by its type."""
    first = (str(exc).splitlines() or [""])[0]
    if not isinstance(exc, AssertionError):
        first = f"{type(exc).__name__}: {first}"
    oid = violated_obligation(exc)
    return first if oid is None or first.startswith(oid) else f"{oid}: {first}"


# Hypothesis (6.170) mixes constants harvested from every loaded *local* module (one not in
# site-packages, e.g. an editable install of this package) into what it draws
# (`hypothesis.internal.conjecture.providers._get_local_constants`), so one seed ran other
# programs under `kvclaims conform`, which loads the proofs and litmus first, than under
# `kvclaims fuzz`. Loading the whole toolkit before the first draw makes that pool the same
# for every command; only the runtime under test adds its own, the same for both.
TOOLKIT = ("kvclaims", "kvclaims.spec", "kvclaims.model", "kvclaims.proofs", "kvclaims.conformance", "kvclaims.cli")


def load_toolkit() -> None:
    """Import every module of the toolkit's packages (not the runtimes': they come with
    --runtime, and vLLM's take seconds)."""
    for name in TOOLKIT:
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__, name + "."):
            if info.name not in ("kvclaims.__main__", "kvclaims.cli.__main__"):
                importlib.import_module(info.name)

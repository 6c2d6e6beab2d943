"""Long-lived examples (`kvclaims.conformance.life`): a life drives one runtime through
thousands of steps, the reference runtime keeps the contract all the way, a slow leak only
a life reaches is caught and named, and the program a failed life writes replays it."""

import pytest

from kvclaims.conformance.compare import violated_obligation
from kvclaims.conformance.fuzz import fuzz, runtime_factory
from kvclaims.conformance.life import STEPS_PER_STRETCH, life_machine, live, replay, Life
from kvclaims.refimpl.mutants import SUBTLE

LEAK = runtime_factory(f"{SUBTLE['leak_every_nth'].__module__}:{SUBTLE['leak_every_nth'].__name__}")


def test_every_step_of_the_machine_is_wrapped():
    """The life reaches each step through Hypothesis' rule markers: if they change, this
    fails first (not a life that silently records nothing)."""
    from collections import Counter

    Machine = life_machine(runtime_factory("refimpl"), Life(), Counter())
    steps = Machine.setup_state()
    assert len(steps.rules) > 20 and len(steps.initializers) == 3 and steps.invariants
    assert all(getattr(r.function, "__wrapped__", None) for r in steps.rules + steps.invariants)


def test_the_reference_runtime_lives_long():
    totals = live(runtime_factory("refimpl"), 3_000, 0)
    assert totals["steps"] >= 3_000 and totals["examples"] >= 3_000 // (STEPS_PER_STRETCH + 50)
    assert totals["block_evict"] and totals["request_admit"]


@pytest.mark.obligation("RKC-INV-3")
def test_a_slow_leak_is_caught_by_a_life_and_replays(tmp_path):
    """Every 64th finish leaks a free block: short examples finish a few requests each, a
    life thousands. The failure names block conservation; its program fails again on a
    fresh mutant and passes on the reference runtime."""
    with pytest.raises(Exception) as caught:
        fuzz(LEAK, 8_000, 1, life=8_000)
    assert violated_obligation(caught.value) == "RKC-INV-3"
    path = caught.value.__notes__[-1].split("the whole program: ")[1].split(" ")[0]
    with pytest.raises(Exception) as again:
        replay(path, LEAK)
    assert violated_obligation(again.value) == "RKC-INV-3"
    replay(path, runtime_factory("refimpl"))

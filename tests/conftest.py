"""Hypothesis profiles: `ci` (built in, derandomized, loaded when CI is set) for CI,
`long` for soak runs (HYPOTHESIS_PROFILE=long)."""

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

settings.register_profile("long", max_examples=5000, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif not os.environ.get("CI"):
    settings.load_profile("dev")

pytest_plugins = ["pytester"]  # tests/test_plugin.py runs pytest sessions in-process


@pytest.fixture
def stateful_steps():
    """Run the stateful contract machine against a runtime adapter class, derandomized (the
    same program every run); returns how many steps it checked. A violation fails the test
    with a replayable program."""
    from kvclaims.conformance.stateful import machine_for

    def run(adapter, max_examples: int = 50, step_count: int = 30) -> int:
        steps: list[int] = []

        class Counted(machine_for(adapter)):  # type: ignore[misc]
            def teardown(self) -> None:
                steps.append(self.steps)

        run_state_machine_as_test(
            Counted,
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=step_count,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
        return sum(steps)

    return run

"""The contract suites as pytest tests, collected by the plugin for --kvclaims-runtime."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from kvclaims.conformance.adapter import load_adapter
from kvclaims.conformance.litmus import SCENARIOS, run_scenario
from kvclaims.conformance.stateful import machine_for


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_litmus(kvclaims_runtime: str, name: str) -> None:
    result = run_scenario(name, partial(load_adapter, kvclaims_runtime))
    if result.status == "not_applicable":
        pytest.skip(f"not applicable: {result.reason}")
    assert result.status == "passed", "\n".join(result.failures)


def test_stateful_contract(kvclaims_runtime: str, pytestconfig: pytest.Config) -> None:
    run_state_machine_as_test(
        machine_for(partial(load_adapter, kvclaims_runtime)),
        settings=settings(
            max_examples=pytestconfig.getoption("kvclaims_examples"),
            stateful_step_count=pytestconfig.getoption("kvclaims_steps"),
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

"""pytest plugin (entry point `pytest11`): run the contract suites against your runtime.

    pytest --kvclaims-runtime=mypkg.adapter:MyRuntime

adds the litmus scenarios and the stateful contract machine (kvclaims.contract_suite)
to the session, driven through your RuntimeAdapter. Without the option nothing
is added. Strategies for your own tests: `kvclaims.strategies`.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("contract_suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvclaims", "Resident KV Claims contract")
    group.addoption("--kvclaims-runtime", metavar="MODULE:CLASS",
                    help="run the litmus and stateful contract suites against this runtime adapter")
    group.addoption("--kvclaims-steps", type=int, default=50,
                    help="steps per stateful example (default 50)")
    group.addoption("--kvclaims-examples", type=int, default=100,
                    help="stateful examples (default 100)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("kvclaims_runtime") and str(SUITE) not in config.args:
        config.args.append(str(SUITE))


@pytest.fixture(scope="session")
def kvclaims_runtime(request: pytest.FixtureRequest) -> str:
    """The adapter named by --kvclaims-runtime."""
    name = request.config.getoption("kvclaims_runtime")
    if not name:
        pytest.skip("no --kvclaims-runtime given")
    return name

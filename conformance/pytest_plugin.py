"""pytest plugin (entry point `pytest11`): run the contract suites against your runtime.

    pytest --kvclaims-runtime=mypkg.adapter:MyRuntime

adds the litmus scenarios and the stateful contract machine (kvclaims.conformance.contract_suite)
and the rejection scenarios (kvclaims.conformance.rejections) to the session, driven through
your RuntimeAdapter. Without the option nothing is added. Strategies for your own
tests: `kvclaims.conformance.strategies`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("contract_suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvclaims", "Resident KV Claims contract")
    group.addoption(
        "--kvclaims-runtime",
        metavar="MODULE:CLASS",
        help="run the litmus, rejection and stateful contract suites against this runtime adapter",
    )
    group.addoption("--kvclaims-steps", type=int, default=50, help="steps per stateful example (default 50)")
    group.addoption("--kvclaims-examples", type=int, default=100, help="stateful examples (default 100)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("kvclaims_runtime") and str(SUITE) not in config.args:
        config.args.append(str(SUITE))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The rejection scenarios are items beside the suite's own tests: one per scenario,
    built from the registry (kvclaims.conformance.rejections is imported only when they run)."""
    if file_path == SUITE and parent.config.getoption("kvclaims_runtime"):
        return Rejections.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def kvclaims_runtime(request: pytest.FixtureRequest) -> str:
    """The adapter named by --kvclaims-runtime."""
    name = request.config.getoption("kvclaims_runtime")
    if not name:
        pytest.skip("no --kvclaims-runtime given")
    return name


class Rejections(pytest.File):
    def collect(self):
        from kvclaims.conformance.rejections import REJECTIONS

        for name in sorted(REJECTIONS):
            yield Rejection.from_parent(self, name=f"test_rejection[{name}]", scenario=name)


class Rejection(pytest.Item):
    """One rejection scenario on the runtime: passes, fails with what went wrong, or skips
    when not applicable, with the reason."""

    def __init__(self, *, scenario: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario

    def runtest(self) -> None:
        from functools import partial

        from kvclaims.conformance.adapter import load_adapter
        from kvclaims.conformance.rejections import run_rejection

        result = run_rejection(self.scenario, partial(load_adapter, self.config.getoption("kvclaims_runtime")))
        if result.status == "not_applicable":
            pytest.skip(f"not applicable: {result.reason}")
        if result.status != "passed":
            raise Rejected(f"{result.expected}\n" + "\n".join(result.failures))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, Rejected):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"kvclaims rejection {self.scenario}"


class Rejected(AssertionError):
    """A rejection scenario failed: what it required, then what happened."""

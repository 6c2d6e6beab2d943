"""SGLang as a runtime adapter (``--runtime sglang`` / ``sglang-stock``): the litmus suite, the
bad-input suite and the stateful contract machine on SGLang's own radix cache, and stock
SGLang driven the same way (which must fail). Regression programs from `kvclaims fuzz
--runtime sglang` keep the kinds of divergence it found fixed."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed (./dev test installs the sglang extra)")


from kvclaims.conformance.litmus import SCENARIOS, run_scenario  # noqa: E402
from kvclaims.conformance.rejections import run_all as run_rejections  # noqa: E402
from kvclaims.conformance.stateful import machine_for  # noqa: E402
from kvclaims.sglang.adapter import SglangAdapter, StockSglangAdapter  # noqa: E402

HARD = {"strength": "hard", "policy": "refuse", "tiers": ("device",), "priority": 0, "ttl": None}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_litmus_on_sglang(name):
    """Every scenario SGLang can express passes; the others are not applicable, with the
    capabilities they need named."""
    result = run_scenario(name, SglangAdapter)
    assert result.report.ok, result.failures
    if SCENARIOS[name].needs <= SglangAdapter.capabilities:
        assert result.status == "passed", result.failures
    else:
        assert result.status == "not_applicable" and result.reason.startswith("the runtime lacks")


def test_stock_sglang_fails_the_hard_claim_scenario():
    """Stock SGLang (claims recorded, held by nothing): the prefill is admitted, the resident
    is evicted, and the trace convicts it from SGLang's own KV events."""
    result = run_scenario("accepted_hard_claim", StockSglangAdapter)
    assert result.status == "failed"
    assert any(f.startswith("refused, blocked by the claim") for f in result.failures)
    assert any("claimed_block_lost" in f for f in result.failures)


def test_bad_input_is_rejected_as_the_reference_runtime_rejects_it():
    results = run_rejections(SglangAdapter)
    assert not [r for r in results if r.status == "failed"], [r.failures for r in results if r.status == "failed"]
    assert sum(r.status == "passed" for r in results) >= 50


SglangMachine = machine_for(SglangAdapter)


def test_stateful_contract_on_sglang(stateful_steps):
    """At least 1,000 checked steps, derandomized: no contract violation."""
    assert stateful_steps(SglangAdapter, max_examples=60) >= 1000


def _replay(program) -> None:
    state = SglangMachine()
    program(state)
    state.teardown()


def test_regression_no_admit_keeps_a_claimed_page_and_drops_its_own():
    """fuzz --runtime sglang --seed 1: write no-admit of a request whose first page a claim
    matched (splitting its node) dropped nothing; its own leaf goes, the claimed page stays."""

    def program(state):
        state.start(U=6, B=1, reserve=0, host=0)
        r = state.submit_request(extra=0, shape=(0, 1, 1, False))
        state.submit_claim(blocks=1, family=0, kwargs=HARD)
        state.contract_holds()
        state.finish(admit=False, request=r)
        state.contract_holds()

    _replay(program)


def test_regression_two_claims_on_one_page_both_give_way():
    """fuzz --runtime sglang --seed 1: a page two yielding claims hold is freed only when both
    have given way."""

    def program(state):
        state.start(U=2, B=1, reserve=0, host=0)
        state.rivals(family=1, ranks=(0, 0), strength="hard")
        state.contract_holds()
        state.rivals(family=2, ranks=(0, 0), strength="hard")
        state.contract_holds()

    _replay(program)


def test_regression_evictions_before_an_out_of_memory_wait_are_traced():
    """fuzz --runtime sglang --seed 3: SGLang evicted cached pages for a request it then could
    not allocate for; the evictions were missing from the trace."""

    def program(state):
        state.start(U=2, B=1, reserve=0, host=0)
        state.rivals(family=0, ranks=(0, 0), strength="hard")
        r = state.press()
        state.abort(request=r)
        state.submit_request(extra=1, shape=(0, 0, 2, False))
        state.contract_holds()

    _replay(program)


def test_regression_a_recomputed_claimed_page_is_shared_not_held():
    """fuzz --runtime sglang --seed 1: a replay of a claimed whole-page prompt computes its
    page again and SGLang gives the copy back at once (profile shares_recomputed)."""

    def program(state):
        state.start(U=2, B=1, reserve=0, host=0)
        c = state.submit_claim(blocks=1, family=0, kwargs=HARD)
        state.request_claimed_prefix(claim=c, extra=0, tail=0)
        state.contract_holds()
        state.request_claimed_prefix(claim=c, extra=0, tail=0)
        state.contract_holds()

    _replay(program)


def test_regression_no_admit_after_decode_drops_what_it_generated():
    """fuzz --runtime sglang --seed 1 (with decode): a no-admit request's generated pages
    were left in the tree (its own pages were looked up by its prompt alone)."""

    def program(state):
        state.start(U=2, B=1, reserve=0, host=0)
        r = state.submit_request(extra=0, shape=(0, 0, 0, False))
        state.decode(n=1, request=r)
        state.contract_holds()
        state.finish(admit=False, request=r)
        state.contract_holds()

    _replay(program)


def test_regression_no_admit_keeps_a_page_a_cached_page_needs():
    """fuzz --runtime sglang --seed 2: a radix tree cannot drop a node under which a cached
    node stays, so write no-admit keeps it (profile keeps_parents)."""

    def program(state):
        state.start(U=6, B=1, reserve=5, host=0)
        c0 = state.submit_claim(blocks=2, family=0, kwargs=HARD)
        state.request_claimed_prefix(claim=c0, extra=0, tail=0)
        c1 = state.submit_claim(blocks=1, family=0, kwargs=HARD)
        r1 = state.request_claimed_prefix(claim=c1, extra=0, tail=0)
        r2 = state.request_claimed_prefix(claim=c1, extra=0, tail=0)
        r3 = state.request_claimed_prefix(claim=c1, extra=0, tail=1)
        state.finish(admit=False, request=r2)
        state.finish(admit=True, request=r3)
        state.finish(admit=False, request=r1)
        state.contract_holds()

    _replay(program)

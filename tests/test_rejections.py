"""The rejection scenarios (kvclaims.conformance.rejections, RKC-RT-4 through the adapter protocol): all
pass on the reference runtime, are not applicable without their capability, and can fail:
a runtime that accepts a half-block claim, answers with another error type, or traces
before it rejects is caught, by the suite, by `kvclaims rejections`, by `conform` and by
the pytest plugin."""

import json
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest

from kvclaims.conformance import conform
from kvclaims.cli import conform as conform_cli
from kvclaims.cli import main
from kvclaims.errors import InvalidInput
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.conformance.rejections import OBLIGATION, REJECTIONS, run_all, run_rejection
from fixture_runtime import ExternalRuntime

HERE = Path(__file__).parent


class HalfBlockClaims(RefimplAdapter):
    """The bug report's runtime: a claim prefix is cut to whole blocks, not rejected."""

    def submit_claim(self, claim_id, prefix, **terms):
        return super().submit_claim(claim_id, prefix[: len(prefix) // self.B * self.B] or prefix, **terms)


class LooseTokenErrors(RefimplAdapter):
    """A bad prompt is rejected, but as the parent type: a client cannot tell which field."""

    def submit_request(self, request_id, tokens):
        try:
            return super().submit_request(request_id, tokens)
        except InvalidInput as exc:
            raise InvalidInput(str(exc)) from None


class TracesFirst(RefimplAdapter):
    """An abort is traced before it is checked: rejected, but the trace has changed."""

    def abort(self, request_id):
        self.trace.emit("request_abort", request=request_id)
        super().abort(request_id)


@pytest.mark.parametrize("name", sorted(REJECTIONS))
def test_every_scenario_passes_on_the_reference_runtime(name):
    result = run_rejection(name)
    assert result.status == "passed", result.failures
    assert result.report.ok and not result.reason


def test_scenarios_without_their_capability_are_not_applicable():
    results = {r.name: r for r in run_all(ExternalRuntime)}
    for name, s in REJECTIONS.items():
        if s.needs <= ExternalRuntime.capabilities:
            assert results[name].status == "passed", results[name].failures
        else:
            missing = ", ".join(sorted(s.needs - ExternalRuntime.capabilities))
            assert (results[name].status, results[name].reason) == ("not_applicable", f"the runtime lacks {missing}")


def failed(factory) -> dict[str, list[str]]:
    return {r.name: r.failures for r in run_all(factory) if r.status == "failed"}


def test_a_half_block_claim_is_caught():
    got = failed(HalfBlockClaims)
    assert list(got) == ["claim_prefix_not_whole_blocks"]
    assert got["claim_prefix_not_whole_blocks"][0] == "accepted; expected InvalidField"
    assert any(f.startswith("changed the trace: added") for f in got["claim_prefix_not_whole_blocks"])


def test_the_error_type_must_be_exact():
    got = failed(LooseTokenErrors)
    assert set(got) == {
        "request_empty",
        "request_tokens_not_a_list",
        "request_token_negative",
        "request_token_float",
        "request_token_null",
        "request_id_empty",
        "request_id_not_a_string",
    }
    assert got["request_empty"] == ["raised InvalidInput: request 'x': tokens must not be empty; expected InvalidField"]


def test_a_rejected_call_must_change_nothing():
    got = failed(TracesFirst)
    assert set(got) == {"abort_unknown", "abort_finished"}
    assert all(f[0].startswith("changed the trace: added") for f in got.values()), got


def test_command(capsys):
    assert main(["rejections", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] and [s["name"] for s in doc["scenarios"]] == list(REJECTIONS)
    assert Counter(s["status"] for s in doc["scenarios"]) == {"passed": len(REJECTIONS)}
    assert (
        main(
            [
                "rejections",
                "--runtime",
                f"{__name__}:HalfBlockClaims",
                "--only",
                "claim_prefix_not_whole_blocks",
                "--only",
                "claim_ttl_zero",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "FAIL  claim_prefix_not_whole_blocks: a claim on 1.5 blocks: InvalidField, nothing changed"
    assert out[1] == "      accepted; expected InvalidField"
    assert out[-1] == "PASS  claim_ttl_zero: ttl 0: InvalidField, nothing changed"


@pytest.fixture
def no_proofs_nor_fuzz(monkeypatch):
    """conform with only its runtime scenarios: the proofs and the stateful run are other tests'."""
    monkeypatch.setattr(conform, "prove_all", lambda spec: [])
    monkeypatch.setattr(conform, "fuzz", lambda factory, steps, seed, life=0: Counter(steps=steps))


def rt4(report) -> dict:
    return next(o for o in report["obligations"] if o["id"] == OBLIGATION)


def test_conform_counts_the_scenarios_as_evidence(no_proofs_nor_fuzz):
    ob = rt4(conform.conform("refimpl", 1, 0, 1))
    assert ob["verdict"] == "conforms"
    assert [e["name"] for e in ob["evidence"] if e["kind"] == "rejection"] == list(REJECTIONS)


def test_conform_attributes_a_failure_to_rkc_rt_4(no_proofs_nor_fuzz, capsys):
    runtime = f"{__name__}:HalfBlockClaims"
    report = conform.conform(runtime, 1, 0, 1)
    ob = rt4(report)
    assert not report["conforms"] and ob["verdict"] == "violated"
    bad = [e for e in ob["evidence"] if e["result"] == "failed"]
    assert [(e["kind"], e["name"]) for e in bad] == [("rejection", "claim_prefix_not_whole_blocks")]
    assert bad[0]["violation"].startswith("accepted; expected InvalidField; changed the trace")
    assert (
        conform_cli.run(Namespace(runtime=runtime, steps=1, seed=0, seeds=1, life=None, json=False, evidence=None)) == 1
    )
    out = capsys.readouterr().out
    assert "RKC-RT-4 violated by rejection claim_prefix_not_whole_blocks: accepted; expected InvalidField" in out


def test_plugin_adds_the_scenarios(pytester):
    """Each scenario is a test of its own; not applicable ones skip with the reason."""
    pytester.syspathinsert(HERE)
    result = pytester.runpytest("--kvclaims-runtime=fixture_runtime:ExternalRuntime", "-k", "rejection", "-rs")
    lacking = [n for n, s in REJECTIONS.items() if not s.needs <= ExternalRuntime.capabilities]
    result.assert_outcomes(passed=len(REJECTIONS) - len(lacking), skipped=len(lacking))
    result.stdout.fnmatch_lines(["SKIPPED * not applicable: the runtime lacks owner_ops"])
    failing = pytester.runpytest(f"--kvclaims-runtime={__name__}:HalfBlockClaims", "-k", "whole_blocks")
    failing.assert_outcomes(failed=1)
    failing.stdout.fnmatch_lines(
        ["*a claim on 1.5 blocks: InvalidField, nothing changed", "accepted; expected InvalidField"]
    )

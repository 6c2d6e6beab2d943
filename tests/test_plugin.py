"""The pytest plugin and the user-facing commands, run against a runtime written outside
the package (tests/fixture_runtime.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def test_plugin_runs_the_contract_suites(pytester):
    """One option adds the litmus scenarios and the stateful machine to a runtime's own suite."""
    pytester.syspathinsert(HERE)
    pytester.makepyfile(test_own="def test_own(): pass")
    result = pytester.runpytest(
        "--kvclaims-runtime=fixture_runtime:ExternalRuntime", "--kvclaims-examples=5", "--kvclaims-steps=10"
    )
    # own test, litmus, stateful, rejection scenarios; the not-applicable ones skip
    result.assert_outcomes(passed=1 + 10 + 1 + 53, skipped=6 + 12)


def test_plugin_is_silent_without_the_option(pytester):
    pytester.makepyfile(test_own="def test_own(): pass")
    pytester.runpytest().assert_outcomes(passed=1)


def kvclaims(*args):
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "kvclaims.cli", *args], capture_output=True, text=True, env=env)


def test_fuzz_an_external_runtime():
    """`kvclaims fuzz --runtime MODULE:CLASS` drives any adapter and summarizes what it saw."""
    out = kvclaims("fuzz", "--runtime", "fixture_runtime:ExternalRuntime", "--steps", "300", "--seed", "3", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["steps"] >= 300 and summary["violations"] == 0 and summary["requests"] > 0


def test_fuzz_prints_a_replayable_program_on_violation():
    out = kvclaims("fuzz", "--runtime", "kvclaims.refimpl.mutants:SkipDemotionEvent", "--steps", "20000", "--seed", "1")
    assert out.returncode == 1
    assert "state.start(" in out.stdout and "VIOLATION" in out.stderr


def test_conform_reports_every_obligation():
    out = kvclaims("conform", "--steps", "500", "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    report = json.loads(out.stdout)
    from kvclaims.spec import load

    assert [o["id"] for o in report["obligations"]] == list(load().obligations)
    stateful = [e for o in report["obligations"] for e in o["evidence"] if e["kind"] == "stateful"]
    assert stateful and all(  # how much evidence: the steps asked for, over the default three seeds
        e["steps"] >= 500 and e["examples"] > 0 and e["seeds"] == [0, 1, 2] for e in stateful
    )
    server_only = {o["id"] for o in report["obligations"] if {e["kind"] for e in o["evidence"]} == {"server"}}
    assert server_only == {"RKC-SEC-1", "RKC-SEC-2", "RKC-RT-9"}  # tenancy, routing: through the vLLM server
    assert all(
        o["evidence"] and o["verdict"] == ("not applicable" if o["id"] in server_only else "conforms")
        for o in report["obligations"]
    )


def test_conform_fails_a_mutant():
    out = kvclaims("conform", "--runtime", "kvclaims.refimpl.mutants:WrongAttribution", "--steps", "3000")
    assert out.returncode == 1 and "DOES NOT CONFORM" in out.stdout


@pytest.mark.obligation("RKC-FEAS-6", "RKC-INV-6")
def test_conform_attributes_a_failure_to_the_obligation_it_broke():
    """A stateful violation fails only the obligation it names; the machine's other checks
    held until it (a crash would fail them all)."""
    for mutant, broken in (("WrongAttribution", "RKC-FEAS-6"), ("StaleStore", "RKC-INV-6")):
        out = kvclaims("conform", "--runtime", f"kvclaims.refimpl.mutants:{mutant}", "--steps", "3000", "--json")
        report = json.loads(out.stdout)
        failed = {
            o["id"]
            for o in report["obligations"]
            for e in o["evidence"]
            if e["kind"] == "stateful" and e["result"] == "failed"
        }
        assert failed == {broken}, (mutant, failed)


def test_a_seed_runs_the_same_programs_whichever_command_asks():
    """Hypothesis draws constants from every loaded local module, so before `fuzz` loaded the
    whole toolkit, `conform` (proofs and litmus loaded first) ran other programs for one seed."""
    run = "from kvclaims.conformance.fuzz import fuzz; print(sorted(fuzz('refimpl', 600, 7).items()))"
    preludes = (
        "import kvclaims.cli.fuzz",
        "import kvclaims.cli.conform, kvclaims.proofs.run, kvclaims.conformance.litmus",
    )
    outs = [
        subprocess.run([sys.executable, "-c", f"{p}\n{run}"], capture_output=True, text=True, timeout=600)
        for p in preludes
    ]
    assert all(o.returncode == 0 for o in outs), [o.stderr[-2000:] for o in outs]
    assert outs[0].stdout == outs[1].stdout

"""Every proof passes on the contract, and breaking any invariant-relevant line of it
makes the prover fail with a counterexample that replays in Python."""

import copy
import tomllib

import pytest

from kvclaims.proofs.feasibility import prove_feasibility
from kvclaims.proofs.lifecycle import prove_lifecycle
from kvclaims.proofs.pool import prove_invariants
from kvclaims.proofs.run import prove_all, report
from kvclaims.spec import CONTRACT_PATH, from_dict, load

RAW = tomllib.loads(CONTRACT_PATH.read_text())


@pytest.mark.obligation(
    "RKC-INV-1", "RKC-INV-2", "RKC-INV-3", "RKC-INV-4", "RKC-INV-5", "RKC-LC-1", "RKC-LC-2", "RKC-LC-3", "RKC-LC-4"
)
def test_everything_proves():
    """RKC-INV-1 RKC-INV-2 RKC-INV-3 RKC-INV-4 RKC-INV-5 RKC-LC-1 RKC-LC-2 RKC-LC-3 RKC-LC-4:
    all proved, by induction for the pool invariants."""
    results = prove_all(load())
    assert [r for r in results if not r.proved] == []
    assert {r.method for r in results if r.obligation.startswith("RKC-INV")} == {"induction"}
    doc = report(load(), results)
    assert doc["proved"] and {o["verdict"] for o in doc["obligations"]} <= {"proved", "tests"}


def mutant(edit):
    raw = copy.deepcopy(RAW)
    edit(raw)
    return from_dict(raw)


def action(raw, name):
    return next(a for a in raw["pool"]["actions"] if a["name"] == name)


# Guard lines whose removal keeps every pool invariant: each is a lifecycle or policy
# rule checked elsewhere, not a pool-invariant rule. Anything else must be necessary.
NOT_INVARIANT_RELEVANT = {
    ("claim_offload", "guard", "c_host"): "tier permission; tested on the runtime",
    ("claim_restore", "guard", "h_host"): "fail-closed restore; tested on the runtime",
}
GUARD_LINES = [
    (a["name"], key, i)
    for a in RAW["pool"]["actions"]
    for key in ("guard", "guard_h")
    for i, _ in enumerate(a.get(key, []))
]


@pytest.mark.parametrize("name,key,index", GUARD_LINES, ids=lambda x: str(x))
def test_dropping_a_guard_line_breaks_an_invariant(name, key, index):
    """Each guard line of the pool spec is needed by some invariant (a counterexample shows it)."""
    spec = mutant(lambda raw: action(raw, name)[key].pop(index))
    failed = [r for r in prove_invariants(spec) if not r.proved]
    assert failed, f"{name}.{key}[{index}] is not needed by any invariant"
    shown = [r for r in failed if r.trace]
    assert shown and "counterexample to" in shown[0].detail


LIFECYCLE_GUARDS = [g for g in RAW["pool"]["guards"]]


@pytest.mark.parametrize("guard", LIFECYCLE_GUARDS)
def test_weakening_a_lifecycle_guard(guard):
    """A lifecycle guard read as `True` breaks an invariant unless it is a policy rule."""
    spec = mutant(lambda raw: raw["pool"]["guards"].__setitem__(guard, "True"))
    broken = not all(r.proved for r in prove_invariants(spec))
    policy = {"exceeds_reserve", "host_allowed", "checksums_match"}
    assert broken == (guard not in policy)


@pytest.mark.parametrize(
    "name,var",
    [
        ("claim_offload", "h_host"),
        ("claim_materialize", "h"),
        ("claim_accept", "reserved"),
        ("claim_restore", "h"),
        ("claim_end", "h"),
    ],
)
def test_dropping_an_update_breaks_an_invariant(name, var):
    """An action that forgets one of its effects is caught."""
    spec = mutant(lambda raw: action(raw, name)["update"].pop(var))
    assert not all(r.proved for r in prove_invariants(spec))


@pytest.mark.parametrize("frm", ["yielding", "protected", "active"])
def test_evicting_a_held_block_is_caught(frm):
    """The seeded bug of the brief: eviction that ignores who holds the block."""
    spec = mutant(lambda raw: action(raw, "evict").__setitem__("moves", [frm, "free"]))
    failed = [r for r in prove_invariants(spec) if not r.proved]
    assert {r.obligation for r in failed} & {"RKC-INV-1", "RKC-INV-2"}
    trace = next(r.trace for r in failed if r.trace)
    assert trace[-1]["action"] == "evict[h]"


def test_counterexample_is_a_real_trace_from_init():
    """A found trace starts in Init and each step's guard holds when replayed in Python."""
    from kvclaims.model.pool_system import replay

    spec = mutant(lambda raw: action(raw, "finish")["guard_h"].clear())
    failed = next(r for r in prove_invariants(spec) if not r.proved and r.trace)
    inv = next(i for i in spec.invariants if failed.name.startswith(i.name))
    replay(spec, failed.trace, inv)
    assert failed.trace[0]["action"] == "init" and len(failed.trace) >= 2


@pytest.mark.obligation("RKC-LC-3", "RKC-LC-4")
def test_lifecycle_mutants_fail():
    """RKC-LC-3 and RKC-LC-4 fail when the table lets a terminal state or protection leak."""

    def leak_terminal(raw):
        raw["lifecycle"]["transitions"]["rows"].append(["released", "accept", "accepted", ""])

    def leak_protection(raw):
        raw["lifecycle"]["loss_events"].remove("demote")

    for edit, oid in ((leak_terminal, "RKC-LC-3"), (leak_protection, "RKC-LC-4")):
        failed = {r.obligation for r in prove_lifecycle(mutant(edit)) if not r.proved}
        assert oid in failed


@pytest.mark.obligation("RKC-LC-2")
def test_unreachable_state_is_reported():
    """RKC-LC-2 fails when a state has no way in."""

    def orphan(raw):
        rows = raw["lifecycle"]["transitions"]["rows"]
        rows[:] = [r for r in rows if r[2] != "harmed"]

    failed = [r for r in prove_lifecycle(mutant(orphan)) if not r.proved]
    assert [r.obligation for r in failed] == ["RKC-LC-2"] and "harmed" in failed[0].detail


@pytest.mark.parametrize(
    "name,when,oid",
    [
        ("admit", "A <= free + cached + yielding + active", "RKC-FEAS-2"),
        ("wait", "A <= U", "RKC-FEAS-3"),
        ("refuse_too_large", "A >= U", "RKC-FEAS-1"),
        ("refuse_blocked", "A > U + 1", "RKC-FEAS-7"),
    ],
)
def test_feasibility_mutants_fail(name, when, oid):
    """Weakening one outcome condition is caught by the obligation it breaks."""

    def edit(raw):
        next(o for o in raw["feasibility"]["outcomes"] if o["name"] == name)["when"] = when

    failed = {r.obligation for r in prove_feasibility(mutant(edit)) if not r.proved}
    assert oid in failed

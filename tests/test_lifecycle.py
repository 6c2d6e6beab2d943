"""The lifecycle machine against the spec's table: every legal move, every illegal one."""

import pytest

from kvclaims.errors import GuardRejected, IllegalTransition
from kvclaims.model.lifecycle import Lifecycle, mermaid
from kvclaims.proofs.model_check import _claim_in
from kvclaims.spec import load

SPEC = load()
LC = SPEC.lifecycle
TABLE = {(t.source, t.event): t for t in LC.transitions}
ALL_TRUE = {g: (lambda **_: True) for g in LC.guards}


@pytest.fixture(scope="module")
def lifecycle():
    return Lifecycle(SPEC)


@pytest.mark.obligation("RKC-LC-6")
@pytest.mark.parametrize("row", LC.transitions, ids=lambda t: f"{t.source}-{t.event}")
def test_every_legal_transition(lifecycle, row):
    """RKC-LC-6: a legal event with its guard true reaches the table's destination."""
    claim = _claim_in(lifecycle, SPEC, row.source, dict(ALL_TRUE))
    assert claim.fire(row.event) == row.dest


@pytest.mark.obligation("RKC-LC-6")
@pytest.mark.parametrize("row", [t for t in LC.transitions if not t.guard], ids=lambda t: f"{t.source}-{t.event}")
def test_unguarded_moves_skip_the_trigger_with_its_answer(lifecycle, row):
    """The unguarded rows' shortcut (`Lifecycle.unguarded`) lands where the machine's own
    trigger does."""
    claim = _claim_in(lifecycle, SPEC, row.source, dict(ALL_TRUE))
    cursor = lifecycle.cursor
    cursor.claim, cursor.state = claim, row.source
    assert cursor.trigger(row.event) and cursor.state == lifecycle.unguarded[(row.source, row.event)] == row.dest


ILLEGAL = [(s, e) for s in LC.states for e in LC.events if (s, e) not in TABLE]


@pytest.mark.obligation("RKC-LC-5")
@pytest.mark.parametrize("state,event", ILLEGAL, ids=lambda x: str(x))
def test_every_illegal_event_is_rejected_unchanged(lifecycle, state, event):
    """RKC-LC-5: illegal events raise IllegalTransition and leave the state unchanged."""
    claim = _claim_in(lifecycle, SPEC, state, dict(ALL_TRUE))
    with pytest.raises(IllegalTransition) as info:
        claim.fire(event)
    assert claim.state == state
    assert info.value.state == state and info.value.event == event
    assert event in str(info.value) and state in str(info.value)


GUARDED = [t for t in LC.transitions if t.guard]


@pytest.mark.obligation("RKC-LC-6")
@pytest.mark.parametrize("row", GUARDED, ids=lambda t: f"{t.source}-{t.event}-{t.guard}")
def test_false_guard_rejects_unchanged(lifecycle, row):
    """RKC-LC-6: a false guard raises GuardRejected naming the guard; state unchanged."""
    guards = dict(ALL_TRUE)
    claim = _claim_in(lifecycle, SPEC, row.source, guards)
    guards[row.guard] = lambda **_: False
    with pytest.raises(GuardRejected) as info:
        claim.fire(row.event)
    assert claim.state == row.source and info.value.guard == row.guard


def test_guards_receive_context(lifecycle):
    seen = {}

    def within(**ctx):
        seen.update(ctx)
        return ctx["new_blocks"] <= 3

    claim = lifecycle.claim("ctx", {"within_reserve": within})
    assert claim.fire("accept", new_blocks=2) == "accepted"
    assert seen == {"new_blocks": 2}


def test_no_auto_transitions_backdoor(lifecycle):
    claim = lifecycle.claim("backdoor")
    assert not any(name.startswith("to_") for name in dir(claim))


def test_claims_share_one_machine_model(lifecycle):
    """Claims keep their own state; the machine holds one cursor model, however many claims live."""
    a, b = lifecycle.claim("a", dict(ALL_TRUE)), lifecycle.claim("b", dict(ALL_TRUE))
    a.fire("accept")
    b.fire("refuse")
    assert (a.state, b.state) == ("accepted", "refused") and lifecycle.machine.models == [lifecycle.cursor]


def test_diagram_drawn_from_table():
    text = mermaid(SPEC)
    assert text.startswith("stateDiagram-v2")
    for t in LC.transitions:
        assert f"{t.source} --> {t.dest}: {t.event}" in text
    for s in LC.terminal:
        assert f"{s} --> [*]" in text

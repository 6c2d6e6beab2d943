"""The claim lifecycle as a `transitions` machine, built from the spec's table.

One shared ``Machine`` with a single model, a cursor, serves every claim: a
claim keeps its own state, and `fire` loads it into the cursor, triggers, and
reads the result back. `transitions` registers models in a list it scans on
every ``add_model``, so a model per claim made each new claim cost O(live
claims). The machine is built with ``auto_transitions=False``: the generated
``to_<state>()`` methods would bypass every guard. Illegal events and failed
guards raise typed errors and leave the state as it was.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

from transitions import Machine

from kvclaims.errors import GuardRejected, IllegalTransition
from kvclaims.spec import Spec, load

GuardFn = Callable[..., bool]


class ClaimFSM:
    """One claim's lifecycle state. `fire` is the only way to move it."""

    def __init__(self, lifecycle: "Lifecycle", claim_id: str, guards: Mapping[str, GuardFn] | None) -> None:
        self.claim_id = claim_id
        self.state = lifecycle.spec.lifecycle.initial
        self._lifecycle = lifecycle
        self.guards: Mapping[str, GuardFn] = guards or {}  # set once, before the first fire
        self._failed_guard: str | None = None

    def __repr__(self) -> str:
        return f"ClaimFSM({self.claim_id!r}, state={self.state!r})"

    @property
    def terminal(self) -> bool:
        return self.state in self._lifecycle.spec.lifecycle.terminal

    def allowed(self) -> list[str]:
        return self._lifecycle.allowed(self.state)

    def fire(self, event: str, *, unchecked_guards: bool = False, **context: Any) -> str:
        """Apply `event`; return the new state. Raises IllegalTransition or GuardRejected.

        `context` is passed to the guard callables (e.g. ``new_blocks=3``).
        `unchecked_guards` is for replaying a trace whose guards were already
        decided elsewhere (the trace checker, solver counterexamples).
        """
        dest = self._lifecycle.unguarded.get((self.state, event))
        if dest is None and unchecked_guards:
            dest = self._lifecycle.guarded.get((self.state, event))
        if dest is not None:
            self.state = dest
            return dest
        if event not in self.allowed():
            raise IllegalTransition(self.claim_id, self.state, event, self.allowed())
        self._failed_guard = None
        cursor = self._lifecycle.cursor
        cursor.claim, cursor.state = self, self.state
        if not cursor.trigger(event, _unchecked=unchecked_guards, **context):
            raise GuardRejected(self.claim_id, self.state, event, self._failed_guard or "?")
        self.state = cursor.state
        return self.state

    def _check(self, guard: str, event_data) -> bool:
        if event_data.kwargs.get("_unchecked"):
            return True
        fn = self.guards.get(guard)
        ok = bool(fn(**{k: v for k, v in event_data.kwargs.items() if k != "_unchecked"})) if fn else False
        if not ok:
            self._failed_guard = guard if fn else f"{guard} (no guard function given)"
        return ok


class Lifecycle:
    """The machine for a spec; hands out claims that share it."""

    def __init__(self, spec: Spec | None = None) -> None:
        self.spec = spec or load()
        lc = self.spec.lifecycle
        transitions = []
        for t in lc.transitions:
            row: dict[str, Any] = {"trigger": t.event, "source": t.source, "dest": t.dest}
            if t.guard:
                row["conditions"] = [partial(_guard_condition, t.guard)]
            transitions.append(row)
        self.cursor = _Cursor()
        self.machine = Machine(
            model=self.cursor,
            states=list(lc.states),
            transitions=transitions,
            initial=lc.initial,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
        )
        self._allowed = {s: [t.event for t in lc.transitions if t.source == s] for s in lc.states}
        # (state, event) -> dest of the unguarded rows: the machine's answer without a trigger,
        # which costs tens of microseconds (a claim's hit, on every request that reuses it).
        self.unguarded = {(t.source, t.event): t.dest for t in lc.transitions if not t.guard}
        # (state, event) -> dest of its first guarded row: where a trigger with every guard taken
        # as holding goes (`fire(unchecked_guards=True)`: the oracle's, a replay's), likewise.
        self.guarded: dict[tuple[str, str], str] = {}
        for t in lc.transitions:
            if t.guard:
                self.guarded.setdefault((t.source, t.event), t.dest)

    def allowed(self, state: str) -> list[str]:
        return self._allowed[state]

    def claim(self, claim_id: str, guards: Mapping[str, GuardFn] | None = None) -> ClaimFSM:
        return ClaimFSM(self, claim_id, guards)


class _Cursor:
    """The machine's only model: the claim being fired, and its state while it is.
    `transitions` sets `state` and binds `trigger` on it (annotations only: it binds
    no name the model already has)."""

    claim: ClaimFSM
    state: str
    trigger: Callable[..., bool]


def _guard_condition(guard: str, event_data) -> bool:
    return event_data.model.claim._check(guard, event_data)


def mermaid(spec: Spec | None = None) -> str:
    """The lifecycle as a mermaid state diagram, drawn from the spec's table."""
    lc = (spec or load()).lifecycle
    lines = ["stateDiagram-v2", f"    [*] --> {lc.initial}"]
    for t in lc.transitions:
        guard = f" [{t.guard}]" if t.guard else ""
        lines.append(f"    {t.source} --> {t.dest}: {t.event}{guard}")
    lines += [f"    {s} --> [*]" for s in lc.terminal]
    return "\n".join(lines)

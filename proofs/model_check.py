"""Exhaustive check that the `transitions` machine behaves as the spec's table says.

For every (state, event) pair: a legal event reaches exactly the table's
destination; an illegal one raises IllegalTransition; a guarded event whose
guard is false raises GuardRejected; a rejection leaves the state unchanged.
"""

from __future__ import annotations

from kvclaims.errors import GuardRejected, IllegalTransition
from kvclaims.model.lifecycle import Lifecycle
from kvclaims.proofs.result import ProofResult, Stopwatch
from kvclaims.spec import Spec


def _claim_in(lc: Lifecycle, spec: Spec, state: str, guards: dict):
    """A claim driven to `state` along a shortest path of the table (guards held true)."""
    paths: dict[str, list[str]] = {spec.lifecycle.initial: []}
    frontier = [spec.lifecycle.initial]
    while frontier and state not in paths:
        nxt = []
        for s in frontier:
            for t in spec.lifecycle.transitions:
                if t.source == s and t.dest not in paths:
                    paths[t.dest] = paths[s] + [t.event]
                    nxt.append(t.dest)
        frontier = nxt
    claim = lc.claim(f"probe-{state}", guards)
    for event in paths[state]:
        claim.fire(event)
    return claim


def check_machine(spec: Spec) -> list[ProofResult]:
    lc = Lifecycle(spec)
    table = {(t.source, t.event): t for t in spec.lifecycle.transitions}
    illegal_bad, guard_bad, legal_bad = [], [], []
    checked = {"illegal": 0, "guard": 0}
    clock = Stopwatch()
    for state in spec.lifecycle.states:
        for event in spec.lifecycle.events:
            allow = {g: (lambda **_: True) for g in spec.lifecycle.guards}
            claim = _claim_in(lc, spec, state, allow)
            row = table.get((state, event))
            if row is None:
                checked["illegal"] += 1
                try:
                    claim.fire(event)
                    illegal_bad.append(f"{state} --{event}--> accepted")
                except IllegalTransition:
                    if claim.state != state:
                        illegal_bad.append(f"{state} --{event}--> rejected but moved to {claim.state}")
                continue
            if row.guard:
                checked["guard"] += 1
                allow[row.guard] = lambda **_: False
                try:
                    claim.fire(event)
                    guard_bad.append(f"{state} --{event}--> fired with guard {row.guard} false")
                except GuardRejected as exc:
                    if claim.state != state or exc.guard != row.guard:
                        guard_bad.append(f"{state} --{event}--> moved or named {exc.guard}")
                allow[row.guard] = lambda **_: True
            if claim.fire(event) != row.dest:
                legal_bad.append(f"{state} --{event}--> {claim.state}, spec says {row.dest}")
    secs = clock.seconds()
    return [
        ProofResult(
            "RKC-LC-5",
            "illegal events raise IllegalTransition, state unchanged",
            "exhaustive",
            not illegal_bad,
            secs / 2,
            checked["illegal"],
            "; ".join(illegal_bad),
        ),
        ProofResult(
            "RKC-LC-6",
            "false guards raise GuardRejected, state unchanged; legal events reach the table's destination",
            "exhaustive",
            not (guard_bad or legal_bad),
            secs / 2,
            checked["guard"] + len(table),
            "; ".join(guard_bad + legal_bad),
        ),
    ]

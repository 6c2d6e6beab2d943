"""The spec's names as attributes, so code names a state, an event, a request status or a
policy only through the spec: ``EVENT.demote`` is ``"demote"``, and a name the spec does
not define raises AttributeError where it is used, so a typo or a renamed state cannot
pass silently. Outside the spec's own generators, these names never appear as string
literals (tests/test_names.py enforces it).
"""

from __future__ import annotations

from typing import Iterable

from kvclaims.spec import load


class Names:
    """One kind of name from the spec (`kind`: what the error calls it)."""

    def __init__(self, kind: str, names: Iterable[str]) -> None:
        self._kind, self._names = kind, frozenset(names)
        for name in self._names:  # plain attributes: a lookup costs what a literal does
            setattr(self, name, name)

    def __getattr__(self, name: str) -> str:
        """Called only for a name that is not an attribute: one the spec lacks."""
        raise AttributeError(f"the spec has no {self._kind} {name!r}")

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __repr__(self) -> str:
        return f"Names({self._kind!r}, {sorted(self._names)})"


_SPEC = load()
STATE = Names("claim state", _SPEC.lifecycle.states)
EVENT = Names("claim event", _SPEC.lifecycle.events)
STATUS = Names("request status", _SPEC.request_statuses)
POLICY = Names("claim policy", _SPEC.policies)

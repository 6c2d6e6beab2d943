"""Z3 sorts and terms generated from the spec: enum sorts for states, events and block classes."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import z3

from kvclaims.spec import Spec
from kvclaims.spec.expr import ExprError, Z3Env, to_z3


_ENUMS: dict[tuple[str, tuple[str, ...]], tuple[z3.SortRef, dict[str, z3.ExprRef]]] = {}


def _enum_sort(name: str, values: tuple[str, ...]) -> tuple[z3.SortRef, dict[str, z3.ExprRef]]:
    """Z3 declares a sort name once per context: reuse it for identical value lists."""
    key = (name, values)
    if key not in _ENUMS:
        sort, consts = z3.EnumSort(f"{name}{len(_ENUMS) or ''}", list(values))
        _ENUMS[key] = (sort, dict(zip(values, consts)))
    return _ENUMS[key]


@dataclass
class Sorts:
    """The spec's enumerations as Z3 datatypes (built once per spec)."""

    spec: Spec

    @cached_property
    def enums(self) -> dict[str, tuple[z3.SortRef, dict[str, z3.ExprRef]]]:
        lc = self.spec.lifecycle
        out = {}
        for name, values in (
            ("ClaimState", list(lc.states)),
            ("ClaimEvent", list(lc.events)),
            ("BlockClass", list(self.spec.block_classes)),
        ):
            out[name] = _enum_sort(name, tuple(values))
        return out

    def sort(self, type_name: str) -> z3.SortRef:
        if type_name == "int":
            return z3.IntSort()
        if type_name == "bool":
            return z3.BoolSort()
        return self.enums[type_name][0]

    def literal(self, sort: z3.SortRef | None, text: str) -> z3.ExprRef:
        """The enum constant `text` of `sort`; with no sort, of the one enum that has it."""
        owners = [consts for s, consts in self.enums.values() if (sort is None or s == sort) and text in consts]
        if len(owners) != 1:
            where = f"a {sort}" if sort is not None else "any single enumeration"
            raise ExprError(f"literal {text!r} is not a value of {where}")
        return owners[0][text]

    def name_of(self, value: z3.ExprRef) -> object:
        """A Python value for a model value: int, bool, or the enum literal's name."""
        if z3.is_int_value(value):
            return value.as_long()
        if z3.is_true(value) or z3.is_false(value):
            return z3.is_true(value)
        return str(value)

    def env(self, terms: dict[str, z3.ExprRef]) -> Z3Env:
        return Z3Env(terms, self.literal)

    def compile(self, src: str, terms: dict[str, z3.ExprRef], type_name: str | None = None) -> z3.ExprRef:
        """Compile a spec expression; `type_name` gives enum literals their sort."""
        return to_z3(src, self.env(terms), self.sort(type_name) if type_name else None)


@contextmanager
def scope(solver: z3.Solver):
    """push/pop around one query, so each query stands alone and names what it checks."""
    solver.push()
    try:
        yield solver
    finally:
        solver.pop()


def new_solver(timeout_ms: int = 20_000) -> z3.Solver:
    """A solver with a fixed seed, so runs are reproducible."""
    s = z3.Solver()
    s.set("random_seed", 7)
    s.set("timeout", timeout_ms)
    return s

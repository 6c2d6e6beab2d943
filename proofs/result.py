"""What one proof obligation check returns, and how results are printed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import z3


class Stopwatch:
    """How every proof times itself: wall time (`time.perf_counter`) since it was made."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class ProofResult:
    """One solver-checked obligation: `proved` only when every query was unsat."""

    obligation: str  # spec obligation id, e.g. "RKC-INV-1"
    name: str  # what exactly was checked
    method: str  # "induction", "exhaustive", "bmc k=N", "smt"
    proved: bool
    seconds: float
    queries: int = 1
    detail: str = ""  # readable counterexample or solver verdict when not proved
    trace: list[dict] = field(default_factory=list)  # counterexample steps, replayable

    def to_json(self) -> dict:
        return {
            "obligation": self.obligation,
            "name": self.name,
            "method": self.method,
            "result": "proved" if self.proved else "failed",
            "seconds": round(self.seconds, 4),
            "queries": self.queries,
            "detail": self.detail,
            "trace": self.trace,
        }


def unsat_result(
    oid: str,
    name: str,
    method: str,
    solver: z3.Solver,
    clock: Stopwatch,
    explain: Callable[[z3.ModelRef], str],
    queries: int = 1,
) -> ProofResult:
    """Check `solver`, whose assertions negate what is being proved, into a result: unsat
    proves it; unknown fails (never counted as proved); sat fails, with `explain(model)`
    as the counterexample. `clock` was started when the proof began."""
    verdict = solver.check()
    seconds = clock.seconds()
    if verdict == z3.unsat:
        return ProofResult(oid, name, method, True, seconds, queries)
    detail = f"solver answered unknown: {solver.reason_unknown()}" if verdict == z3.unknown else explain(solver.model())
    return ProofResult(oid, name, method, False, seconds, queries, detail)

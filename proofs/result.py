"""What one proof obligation check returns, and how results are printed."""

from __future__ import annotations

from dataclasses import dataclass, field


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

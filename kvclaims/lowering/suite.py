"""The bad-lowering suite: descriptors (and the traces they cite) that a fail-closed relation
must not count as conformance, each with the class and the reason it must get.

The cases live in ``bad/cases.toml`` beside this module: the paper's list of unsound
lowerings (arXiv 2606.01387) written as descriptors, the trace-level ones as small traces
in our format whose flaw our checker finds (a claim named after its events, restore after
reuse, a recompute counted as a restore, attribution smeared over a claim that did not
block, a materialization over a lost block 0, ...).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from kvclaims.lowering import CONFORMANT, classify_file
from kvclaims.spec import Spec

BAD = Path(__file__).with_name("bad")


@dataclass
class CaseResult:
    name: str
    expected: str  # the class it must get (never a conformant one)
    reason: str  # a phrase its reasons must contain
    got: str
    reasons: list[str]

    @property
    def passed(self) -> bool:
        return self.got == self.expected and any(self.reason in r for r in self.reasons)


def run(spec: Spec, folder: Path = BAD) -> list[CaseResult]:
    cases = tomllib.loads((folder / "cases.toml").read_text())["case"]
    out = []
    for case in cases:
        assert case["expect"] not in CONFORMANT, f"bad case {case['name']} expects a conformant class"
        verdict = next(v for v in classify_file(folder / case["descriptor"], spec) if v.mode == case["mode"])
        out.append(CaseResult(case["name"], case["expect"], case["reason"], verdict.klass, verdict.reasons))
    return out

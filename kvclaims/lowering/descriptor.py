"""Lowering descriptors: a runtime at a pinned version, the modes it is lowered onto, and the
evidence for them (TOML, schema `kvclaims.lowering/1`, `docs/lowering.md`).

Parsed with msgspec against the structs below (unknown fields, wrong types and names the
spec does not know are errors naming the field), then each evidence item is *weighed*:
whether it is anchored to a pinned, checkable place, and what it supports. A conformance
run's support is read off its report (`kvclaims conform --evidence`), never declared.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from kvclaims.errors import InvalidField
from kvclaims.spec import Lowering

SCHEMA = "kvclaims.lowering/1"
# owner/repo@<full commit>:path:line — a place in a pinned tree anyone can check out.
REPO_ANCHOR = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}:[^:\s]+:\d+(-\d+)?$")
URL_ANCHOR = re.compile(r"^https://\S+$")
# pypi:name==version#sha256=<wheel's>:path:line — a place in a published wheel, pinned by its hash.
PYPI_ANCHOR = re.compile(r"^pypi:[\w.-]+==[\w.+!-]+#sha256=[0-9a-f]{64}:[^:\s]+:\d+(-\d+)?$")


class Evidence(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    kind: str  # spec [lowering].kinds
    depth: str  # spec [lowering].depths
    version: str  # the runtime version it is about
    supports: list[str] = []
    contradicts: list[str] = []
    anchor: str | None = None  # owner/repo@commit:path:line, pypi:name==v#sha256=…:path:line, or an https URL (docs)
    file: str | None = None  # relative to the descriptor, with its sha256
    sha256: str | None = None
    note: str = ""


class Row(msgspec.Struct, forbid_unknown_fields=True):
    mode: str  # spec [lowering.modes]
    mechanisms: list[str]  # what the lowering rests on: spec [lowering].mechanisms
    note: str = ""


class Descriptor(msgspec.Struct, forbid_unknown_fields=True):
    schema: str
    runtime: str  # as its trace's runtime record names it
    version: str
    rows: list[Row]
    setup: str = ""  # how it runs when one runtime has several (stock, with an adapter)
    evidence: list[Evidence] = []
    note: str = ""


@dataclass(frozen=True)
class Weighed:
    """An evidence item as the classifier counts it: what it supports and contradicts if it
    counts at all, else why not (`discount`)."""

    item: Evidence
    supports: frozenset[str]
    contradicts: frozenset[str]
    discount: str | None  # "unanchored", "stale: ...", "wrong version ..."; None: it counts
    shows: Any = None  # a trace's `bundle.Facts`: what a mode's row may require it to exercise


def load(path: Path, low: Lowering, obligations: set[str]) -> tuple[Descriptor, list[Weighed]]:
    """Parse and check the descriptor at `path`, and weigh its evidence. Raises InvalidField
    naming the file and field for anything malformed."""
    where = f"descriptor {path}"
    try:
        raw = tomllib.loads(path.read_text())
        d = msgspec.convert(raw, Descriptor)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise InvalidField(where, "file", f"is not a {SCHEMA} descriptor: {exc}") from None
    _check(d, where, low, obligations)
    return d, [weigh(e, d.version, path.parent, d.runtime) for e in d.evidence]


def _check(d: Descriptor, where: str, low: Lowering, obligations: set[str]) -> None:
    if d.schema != SCHEMA:
        raise InvalidField(where, "schema", f"must be {SCHEMA!r}, got {d.schema!r}")
    for r in d.rows:
        if r.mode not in low.modes:
            raise InvalidField(where, "rows.mode", f"{r.mode!r} is not a mode of the spec: {sorted(low.modes)}")
        bad = set(r.mechanisms) - set(low.mechanisms)
        if bad:
            raise InvalidField(where, "rows.mechanisms", f"unknown {sorted(bad)}: the spec has {list(low.mechanisms)}")
    for e in d.evidence:
        if e.kind not in low.kinds:
            raise InvalidField(where, f"evidence {e.id!r} kind", f"{e.kind!r} is not one of {list(low.kinds)}")
        if e.depth not in low.depths:
            raise InvalidField(where, f"evidence {e.id!r} depth", f"{e.depth!r} is not one of {list(low.depths)}")
        unknown = (set(e.supports) | set(e.contradicts)) - obligations
        if unknown:
            raise InvalidField(where, f"evidence {e.id!r} supports", f"names unknown obligations {sorted(unknown)}")
        if e.kind == "conformance_run" and (e.supports or e.contradicts):
            raise InvalidField(where, f"evidence {e.id!r}", "a conformance run's support is read off its report")


def weigh(e: Evidence, version: str, base: Path, runtime: str) -> Weighed:
    """Fail-closed: evidence counts only anchored and about the pinned version."""
    discount = _anchoring(e, base)
    if discount is None and e.version != version:
        discount = f"wrong version: about {e.version!r}, the descriptor pins {version!r}"
    supports, contradicts = set(e.supports), set(e.contradicts)
    if discount is None and e.kind == "conformance_run":
        assert e.file is not None, "_anchoring requires a file for a conformance run"
        report = json.loads((base / e.file).read_text())
        if report.get("runtime_version") != version or report.get("runtime_name") != runtime:
            discount = (
                f"wrong run: of {report.get('runtime_name')!r} {report.get('runtime_version')!r}, "
                f"not {runtime!r} {version!r}"
            )
        verdicts = {o["id"]: o["verdict"] for o in report.get("obligations", [])}
        supports = {oid for oid, v in verdicts.items() if v == "conforms"}
        contradicts = {oid for oid, v in verdicts.items() if v == "violated"}
    elif discount is None and e.kind == "trace" and e.file is not None:  # (one pinned elsewhere is taken as declared)
        supports, contradicts, shows = _checked(base / e.file, supports, contradicts)
        return Weighed(e, frozenset(supports), frozenset(contradicts), discount, shows)
    return Weighed(e, frozenset(supports), frozenset(contradicts), discount)


def _checked(path: Path, supports: set[str], contradicts: set[str]) -> tuple[set[str], set[str], Any]:
    """A trace supports what it was declared to only where our checker finds it holding
    (`kvclaims.conformance.bundle`: a trace naming no cache identity cannot support
    RKC-ID-3); each violation contradicts its obligation. Also returns what it shows, for
    a row whose mode requires a trace to exercise some obligations (a refusal before
    admission, for RKC-RT-3)."""
    from kvclaims.conformance.bundle import HOLDS, facts
    from kvclaims.conformance.checker import OBLIGATION_OF, check_lines
    from kvclaims.spec import load
    from kvclaims.trace import file_lines, read_lines

    with open(path, "rb") as fh:
        lines = list(file_lines(fh))
    report = check_lines(lines)
    shown = facts(report, [rec for _, rec in read_lines(lines) if isinstance(rec, dict)], load())
    violated = {OBLIGATION_OF.get(v.kind, "RKC-TR-3") for v in report.violations}
    unheld = {oid for oid, rule in HOLDS.items() if rule(shown) is not None}
    return supports - violated - unheld, contradicts | violated, shown


def _anchoring(e: Evidence, base: Path) -> str | None:
    """None when `e` points at a pinned, checkable place; else what is wrong."""
    if e.file is not None:
        path = base / e.file
        if not path.is_file():
            return f"unanchored: {e.file} does not exist"
        if e.sha256 is None:
            return f"unanchored: {e.file} has no sha256"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return None if digest == e.sha256 else f"stale: {e.file} has sha256 {digest[:12]}…, not {e.sha256[:12]}…"
    if e.kind == "conformance_run":
        return "unanchored: a conformance run is its report file, with its sha256"
    if e.anchor is None:
        return "unanchored: no anchor"
    if REPO_ANCHOR.match(e.anchor) or PYPI_ANCHOR.match(e.anchor) or (e.kind == "docs" and URL_ANCHOR.match(e.anchor)):
        return None
    return f"unanchored: {e.anchor!r} is neither owner/repo@<40-hex commit>:path:line nor a pinned wheel" + (
        " nor an https URL" if e.kind == "docs" else ""
    )

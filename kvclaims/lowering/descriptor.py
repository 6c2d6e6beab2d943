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

import msgspec

from kvclaims.errors import InvalidField
from kvclaims.spec import Lowering

SCHEMA = "kvclaims.lowering/1"
# owner/repo@<full commit>:path:line — a place in a pinned tree anyone can check out.
REPO_ANCHOR = re.compile(r"\w[\w.-]*/\w[\w.-]*@[0-9a-f]{40}:[^:\s]+:(?P<lines>[1-9]\d*(-[1-9]\d*)?)")
TRACE_FORMATS = ("ours", "kv-residency")
URL_ANCHOR = re.compile(r"https://\S+")
# pypi:name==version#sha256=<wheel's>:path:line — a place in a published wheel, pinned by its hash.
PYPI_ANCHOR = re.compile(r"pypi:\w[\w.-]*==[\w.+!-]+#sha256=[0-9a-f]{64}:[^:\s]+:(?P<lines>[1-9]\d*(-[1-9]\d*)?)")


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
    format: str = "ours"  # a trace's: ours (spec/TRACE.md) or kv-residency (the paper's telemetry)
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


def load(path: Path, low: Lowering, obligations: set[str]) -> tuple[Descriptor, list[Weighed]]:
    """Parse and check the descriptor at `path`, and weigh its evidence. Raises InvalidField
    naming the file and field for anything malformed."""
    where = f"descriptor {path}"
    try:
        raw = tomllib.loads(path.read_text())
        d = msgspec.convert(raw, Descriptor)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise InvalidField(where, "file", f"is not a {SCHEMA} descriptor: {exc}") from None
    _check(d, where, low, obligations)
    return d, [weigh(e, d.version, path.parent, d.runtime) for e in d.evidence]


def _check(d: Descriptor, where: str, low: Lowering, obligations: set[str]) -> None:
    if d.schema != SCHEMA:
        raise InvalidField(where, "schema", f"must be {SCHEMA!r}, got {d.schema!r}")
    for name, seen in (("rows.mode", [r.mode for r in d.rows]), ("evidence.id", [e.id for e in d.evidence])):
        twice = sorted({x for x in seen if seen.count(x) > 1})
        if twice:
            raise InvalidField(where, name, f"names {twice} more than once")
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
        for name in ("supports", "contradicts"):
            unknown = set(getattr(e, name)) - obligations
            if unknown:
                raise InvalidField(where, f"evidence {e.id!r} {name}", f"names unknown obligations {sorted(unknown)}")
        if e.kind == "conformance_run" and (e.supports or e.contradicts):
            raise InvalidField(where, f"evidence {e.id!r}", "a conformance run's support is read off its report")
        if e.format not in TRACE_FORMATS:
            raise InvalidField(where, f"evidence {e.id!r} format", f"{e.format!r} is not one of {list(TRACE_FORMATS)}")


def weigh(e: Evidence, version: str, base: Path, runtime: str) -> Weighed:
    """Fail-closed: evidence counts only anchored and about the pinned version; what a
    conformance run or a trace supports is what it shows when read here."""
    discount = _anchoring(e, base)
    if discount is None and e.version != version:
        discount = f"wrong version: about {e.version!r}, the descriptor pins {version!r}"
    supports, contradicts = frozenset(e.supports), frozenset(e.contradicts)
    if discount is None and e.file is not None and e.kind in ("conformance_run", "trace"):
        read = _run if e.kind == "conformance_run" else _trace
        try:
            supports, contradicts, discount = read(base / e.file, e, version, runtime)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # (a file that is not one)
            discount = f"unreadable: {e.file} is not a {e.kind.replace('_', ' ')} ({type(exc).__name__}: {exc})"
    return Weighed(e, supports, contradicts, discount)


Read = tuple[frozenset[str], frozenset[str], "str | None"]


def _run(path: Path, e: Evidence, version: str, runtime: str) -> Read:
    """A conformance report: what conforms it supports, what is violated it contradicts. A
    run whose runtime only witnesses claims (its trace's `enforce` false) is an observer's."""
    report = json.loads(path.read_text())
    verdicts = {o["id"]: o["verdict"] for o in report["obligations"]}
    discount = None
    if report.get("runtime_version") != version or report.get("runtime_name") != runtime:
        discount = (
            f"wrong run: of {report.get('runtime_name')!r} {report.get('runtime_version')!r}, "
            f"not {runtime!r} {version!r}"
        )
    elif report.get("enforces_claims") is False and e.depth != "observational_adapter":
        discount = f"a run that only witnesses claims counts at depth observational_adapter, not {e.depth}"
    supports = frozenset(oid for oid, v in verdicts.items() if v == "conforms")
    return supports, frozenset(oid for oid, v in verdicts.items() if v == "violated"), discount


def _trace(path: Path, e: Evidence, version: str, runtime: str) -> Read:
    """A trace supports what it was declared to only where our checker finds it holding and
    the trace shows it (`kvclaims.conformance.bundle`: a claim registered before its events,
    a restore from the host tier, a refusal before admission, ...); each violation
    contradicts its obligation. One in our format must be of the pinned runtime and version
    (its runtime record); the paper's telemetry names neither."""
    from kvclaims.conformance import kvresidency
    from kvclaims.conformance.bundle import EXERCISED, HOLDS, facts
    from kvclaims.conformance.checker import OBLIGATION_OF, check_lines
    from kvclaims.spec import load
    from kvclaims.trace import file_lines, read_lines

    imported = kvresidency.import_file(path) if e.format == "kv-residency" else None
    if imported is not None:
        report, records = kvresidency.check(imported), [rec for _, rec in imported.records]
    else:
        with open(path, "rb") as fh:
            lines = list(file_lines(fh))
        report, records = check_lines(lines), [rec for _, rec in read_lines(lines)]
    dicts = [r for r in records if isinstance(r, dict)]
    head = next((r for r in dicts if r.get("kind") == "runtime"), {})
    discount = None
    if imported is None and (head.get("runtime"), head.get("version")) != (runtime, version):
        discount = f"wrong run: a trace of {head.get('runtime')!r} {head.get('version')!r}, not {runtime!r} {version!r}"
    shown = facts(report, dicts, load(), imported)
    violated = {OBLIGATION_OF.get(v.kind, "RKC-TR-3") for v in report.violations}
    unshown = {oid for oid, rule in (*HOLDS.items(), *EXERCISED.items()) if rule(shown) is not None}
    return frozenset(set(e.supports) - violated - unshown), frozenset(set(e.contradicts) | violated), discount


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
    if e.kind in ("conformance_run", "trace"):
        return f"unchecked: a {e.kind.replace('_', ' ')} counts when read here: give its file and sha256"
    if e.anchor is None:
        return "unanchored: no anchor"
    if _pinned(e.anchor) or (e.kind == "docs" and URL_ANCHOR.fullmatch(e.anchor)):
        return None
    return f"unanchored: {e.anchor!r} is neither owner/repo@<40-hex commit>:path:line nor a pinned wheel" + (
        " nor an https URL" if e.kind == "docs" else ""
    )


def _pinned(anchor: str) -> bool:
    """A place in a pinned tree or wheel, its line range ascending from 1."""
    m = REPO_ANCHOR.fullmatch(anchor) or PYPI_ANCHOR.fullmatch(anchor)
    if m is None:
        return False
    first, _, last = m["lines"].partition("-")
    return not last or int(first) <= int(last)

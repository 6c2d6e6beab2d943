"""The fail-closed lowering relation (`kvclaims lower`, `kvclaims.lowering`): soundness on
generated descriptors, the bad-lowering suite case by case, our own rows re-derived from
fresh conformance runs, and the identity findings of the checker it relies on."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kvclaims.cli import main
from kvclaims.cli.conform import write_bundle
from kvclaims.conformance.checker import check_lines
from kvclaims.conformance.conform import conform
from kvclaims.errors import InvalidField
from kvclaims.lowering import CONFORMANT, classify, classify_file, shipped
from kvclaims.lowering.descriptor import PYPI_ANCHOR, REPO_ANCHOR, URL_ANCHOR, Descriptor, Evidence, Row, weigh
from kvclaims.lowering.suite import BAD, run as run_bad_suite
from kvclaims.spec import load

SPEC = load()
LOW = SPEC.lowering
assert LOW is not None
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ANCHORS = [
    f"owner/repo@{COMMIT}:src/x.py:12",
    "https://docs.example.org/kv",
    "pypi:pkg==1.0#sha256=" + "ab" * 32 + ":pkg/x.py:3",
    "owner/repo@main:src/x.py:1",
    "pypi:pkg==1.0:pkg/x.py:3",
    f"../..@{COMMIT}:x.py:1",
    f"owner/repo@{COMMIT}:x.py:0",
    f"owner/repo@{COMMIT}:x.py:1\n",
    None,
    "x",
]


def _anchored(e: Evidence) -> bool:
    """The property's own reading of an anchor (not the classifier's code)."""
    if e.anchor is None:
        return False
    pinned = REPO_ANCHOR.fullmatch(e.anchor) or PYPI_ANCHOR.fullmatch(e.anchor)
    return bool(pinned or (e.kind == "docs" and URL_ANCHOR.fullmatch(e.anchor)))


RUNS = Path(tempfile.mkdtemp(prefix="kvclaims-lowering-"))  # generated conformance reports


def _report(verdicts: dict[str, str], version: str) -> tuple[str, str]:
    """A conformance report with these verdicts, written once: (its file, its sha256)."""
    doc = {
        "runtime_name": "x",
        "runtime_version": version,
        "obligations": [{"id": k, "verdict": v} for k, v in verdicts.items()],
    }
    text = json.dumps(doc, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    (RUNS / f"{digest}.json").write_text(text)
    return f"{digest}.json", digest


@st.composite
def descriptors(draw):
    mode = draw(st.sampled_from(sorted(LOW.modes)))
    bundle = list(LOW.modes[mode].bundle)
    items = []
    for i in range(draw(st.integers(0, 6))):
        items.append(
            Evidence(
                id=f"e{i}",
                kind=draw(st.sampled_from(["source", "docs", "adapter", "patch"])),
                depth=draw(st.sampled_from(LOW.depths)),
                version=draw(st.sampled_from(["1", "1", "2"])),
                supports=draw(st.lists(st.sampled_from(bundle), unique=True)),
                contradicts=draw(st.lists(st.sampled_from(bundle), max_size=1)),
                anchor=draw(st.sampled_from(ANCHORS)),
            )
        )
    for i in range(draw(st.integers(0, 2))):  # conformance runs, read here
        verdict = st.sampled_from(["conforms", "conforms", "conforms", "violated", "not applicable"])
        name, digest = _report({oid: draw(verdict) for oid in bundle}, draw(st.sampled_from(["1", "1", "2"])))
        stale = draw(st.booleans()) and draw(st.booleans())
        items.append(
            Evidence(
                id=f"run{i}",
                kind="conformance_run",
                depth=draw(st.sampled_from(LOW.depths)),
                version="1",
                file=name,
                sha256="0" * 64 if stale else digest,
            )
        )
    mechanisms = draw(st.lists(st.sampled_from(LOW.mechanisms), min_size=1, max_size=3, unique=True))
    return Descriptor("kvclaims.lowering/1", "x", "1", [Row(mode, mechanisms)], items)


def _read(e: Evidence) -> tuple[bool, set[str], set[str]]:
    """The property's own reading of one item: (counts, supports, contradicts)."""
    if e.kind != "conformance_run":
        return _anchored(e) and e.version == "1", set(e.supports), set(e.contradicts)
    text = (RUNS / str(e.file)).read_text()
    report = json.loads(text)
    fresh = hashlib.sha256(text.encode()).hexdigest() == e.sha256 and report["runtime_version"] == "1"
    verdicts = {o["id"]: o["verdict"] for o in report["obligations"]}
    return (
        fresh,
        {k for k, v in verdicts.items() if v == "conforms"},
        {k for k, v in verdicts.items() if v == "violated"},
    )


@given(descriptors())
@settings(max_examples=300, deadline=None)
def test_no_row_is_conformant_without_anchored_depth_allowed_evidence_for_its_whole_bundle(d):
    """Soundness: a conformant class only when every bundle obligation has anchored evidence
    about the pinned version, from a depth allowed for it (and, for what a trace says of
    itself, read here), and nothing counted contradicts."""
    verdict = classify(d, 0, [weigh(e, d.version, RUNS, d.runtime) for e in d.evidence], SPEC)
    mode = LOW.modes[d.rows[0].mode]
    good = [(e, sup, con) for e in d.evidence for ok, sup, con in [_read(e)] if ok]
    if verdict.klass in CONFORMANT:
        assert not set(d.rows[0].mechanisms) <= set(mode.unsound)
        assert not any(oid in con for _, _, con in good for oid in mode.bundle)
        for oid in mode.bundle:
            assert any(
                oid in sup
                and not (oid in LOW.acting and e.depth == "observational_adapter")
                and not (oid in LOW.read and e.kind != "conformance_run")
                for e, sup, _ in good
            ), f"{oid} has no anchored, depth-allowed evidence, yet the row is {verdict.klass}"
    if verdict.klass == "native_conformance":
        assert all(any(oid in sup and e.depth == "native" for e, sup, _ in good) for oid in mode.bundle)


def test_the_relation_is_not_vacuous():
    """A row with native evidence read here for its whole bundle is native conformance; the
    same support only declared is not."""
    mode = LOW.modes["hard_protected"]
    name, digest = _report(dict.fromkeys(mode.bundle, "conforms"), "1")
    run = Evidence("run", "conformance_run", "native", "1", file=name, sha256=digest)
    d = Descriptor("kvclaims.lowering/1", "x", "1", [Row("hard_protected", ["claims"])], [run])
    assert classify(d, 0, [weigh(run, "1", RUNS, "x")], SPEC).klass == "native_conformance"
    said = Evidence("src", "source", "native", "1", supports=list(mode.bundle), anchor=ANCHORS[0])
    assert classify(d, 0, [weigh(said, "1", RUNS, "x")], SPEC).klass == "approximate"


CASES = tomllib.loads((BAD / "cases.toml").read_text())["case"]


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_the_bad_lowering_suite_rejects_each_case_with_its_reason(name):
    result = next(r for r in run_bad_suite(SPEC) if r.name == name)
    assert result.passed, (result.got, result.reasons)
    assert result.got not in CONFORMANT


def test_every_bad_trace_case_would_be_conformant_without_its_flaw():
    """Each trace case declares the whole bundle: only what the checker finds keeps it out."""
    for case in CASES:
        d = tomllib.loads((BAD / case["descriptor"]).read_text())
        for e in d.get("evidence", []):
            if e["kind"] == "trace":
                assert set(e["supports"]) == set(LOW.modes[case["mode"]].bundle), case["name"]


def test_lower_classifies_every_shipped_descriptor(capsys):
    assert main(["lower", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    runtimes = {r["runtime"] for r in rows}
    assert {"refimpl"} <= runtimes and all(r["class"] in LOW.classes for r in rows)
    assert len(rows) == sum(len(tomllib.loads(p.read_text())["rows"]) for p in shipped())
    refimpl = {r["mode"]: r["class"] for r in rows if r["runtime"] == "refimpl"}
    assert refimpl["hard_protected"] == "native_conformance" and refimpl["routed_reuse"] == "approximate"


# The shipped rows as measured: a change of class is a finding to explain, never a drift
# (an anchored file that changed, a conformance run regenerated).
SHIPPED = {
    ("refimpl", ""): {m: "native_conformance" for m in LOW.modes} | {"routed_reuse": "approximate"},
    ("vllm", "claims integration"): {m: "adapter_policy" for m in LOW.modes},
    ("sglang", "claims adapter"): {m: "adapter_policy" for m in LOW.modes}
    | {"hard_protected": "approximate", "routed_reuse": "approximate"},
    ("sglang", "stock: claims only witnessed"): {
        "best_effort": "adapter_observational",
        "soft_priority": "rejected",
        "hard_protected": "rejected",
        "offloadable": "rejected",
    },
    ("vllm", "stock: claims only witnessed"): dict.fromkeys(
        ["best_effort", "hard_protected", "offloadable"], "rejected"
    ),
    ("TensorRT-LLM", ""): dict.fromkeys(["soft_priority", "hard_protected", "expiring", "best_effort"], "unknown")
    | {"offloadable": "rejected"},
    ("Dynamo", ""): dict.fromkeys(["hard_protected", "offloadable", "best_effort"], "unknown")
    | {"routed_reuse": "rejected"},
    ("LMCache", ""): dict.fromkeys(["hard_protected", "offloadable", "expiring"], "rejected")
    | {"best_effort": "unknown"},
}


def test_the_shipped_rows_are_as_measured():
    got: dict[tuple[str, str], dict[str, str]] = {}
    for path in shipped():
        for v in classify_file(path, SPEC):
            got.setdefault((v.runtime, v.setup), {})[v.mode] = v.klass
    arbiter = got.pop(("vllm", "patched: the paper author's kv-residency arbiter"))
    here = (shipped()[0].parents[3].parent / "shared" / "paper-artifacts").is_dir()  # (beside this checkout)
    assert set(arbiter.values()) == {"approximate" if here else "unknown"}, arbiter
    assert got == SHIPPED


def test_shipped_evidence_files_are_current():
    """A shipped descriptor's files exist and hash as anchored: nothing counts as absent
    because the repository moved on (run `kvclaims conform --evidence` again, then rehash)."""
    for path in shipped():
        d = tomllib.loads(path.read_text())
        for e in d.get("evidence", []):
            if "file" in e and not e["file"].startswith("../"):
                w = weigh(Evidence(**e), d["version"], path.parent, d["runtime"])
                assert w.discount is None or not w.discount.startswith(("stale", "unanchored")), (path.name, w.discount)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _rederived(runtime: str, name: str, tmp_path: Path, steps: int) -> dict[str, str]:
    traces: dict[str, list[str]] = {}
    report = conform(runtime, steps=steps, seeds=1, traces=traces)
    folder = tmp_path / "descriptors"
    shutil.copytree(shipped()[0].parent, folder, ignore=shutil.ignore_patterns("evidence"))
    write_bundle(folder / "evidence" / name, report, traces)
    repo = shipped()[0].parent.parents[2]  # (files of this checkout the descriptor anchors, from its copy)
    text = (folder / f"{name}.toml").read_text().replace('"../../../', f'"{repo}/')
    manifest = json.loads((folder / "evidence" / name / "MANIFEST.json").read_text())
    for e in tomllib.loads(text)["evidence"]:
        if e["kind"] == "conformance_run":
            text = text.replace(e["sha256"], manifest["sha256"]["report.json"])
    (folder / f"{name}.toml").write_text(text)
    return {v.mode: v.klass for v in classify_file(folder / f"{name}.toml", SPEC)}


@pytest.mark.parametrize(
    "runtime,name,steps",
    [
        ("refimpl", "refimpl", 600),
        pytest.param("sglang", "sglang", 600, marks=pytest.mark.skipif(not _has("sglang"), reason="needs sglang")),
        pytest.param("vllm", "vllm", 300, marks=pytest.mark.skipif(not _has("vllm"), reason="needs vllm")),
    ],
)
def test_our_rows_rederive_from_a_fresh_conformance_run(tmp_path, runtime, name, steps):
    """Anyone can re-derive our rows: a fresh run, its bundle, the descriptor re-anchored to
    it, the same classes."""
    shipped_rows = {v.mode: v.klass for v in classify_file(shipped()[0].parent / f"{name}.toml", SPEC)}
    assert _rederived(runtime, name, tmp_path, steps=steps) == shipped_rows


def test_a_malformed_descriptor_names_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'schema = "kvclaims.lowering/1"\nruntime = "x"\nversion = "1"\n[[rows]]\nmode = "sturdy"\nmechanisms = []\n'
    )
    with pytest.raises(InvalidField, match="rows.mode"):
        classify_file(bad, SPEC)
    bad.write_text('schema = "kvclaims.lowering/1"\nruntime = "x"\nversion = "1"\nrows = []\ncolour = 1\n')
    with pytest.raises(InvalidField, match="colour"):
        classify_file(bad, SPEC)
    assert main(["lower", str(bad)]) == 2


# --- the identity findings the lowering relies on ------------------------------------
def _trace(*records: dict, identity: bool = True) -> list[str]:
    head = {"kind": "runtime", "runtime": "t", "B": 1}
    if identity:
        head |= {"model": "m", "hash": "h", "namespace": "n"}
    return [json.dumps({"schema_version": 1, "seq": i, "time": 0, **r}) for i, r in enumerate([head, *records])]


SUBMIT = {"kind": "claim_submit", "claim": "c", "blocks": ["h0"], "strength": "hard", "policy": "offload"}
STORE = {"kind": "block_store", "blocks": ["h0"], "tier": "device"}


@pytest.mark.obligation("RKC-ID-1")
def test_a_claim_event_before_its_registration_is_an_identity_violation():
    report = check_lines(_trace({"kind": "claim", "claim": "c", "event": "accept"}, SUBMIT))
    assert [v.kind for v in report.violations] == ["unknown_claim"]


@pytest.mark.obligation("RKC-ID-2")
def test_a_materialization_over_another_chain_is_an_identity_violation():
    report = check_lines(
        _trace(
            SUBMIT,
            {"kind": "claim", "claim": "c", "event": "accept"},
            {"kind": "block_store", "blocks": ["h0", "h1"], "tier": "device"},
            {"kind": "claim", "claim": "c", "event": "materialize", "blocks": ["h1"]},
        )
    )
    assert "chain_changed" in [v.kind for v in report.violations]


@pytest.mark.obligation("RKC-ID-3")
def test_every_runtime_names_its_cache_identity():
    from kvclaims.conformance.adapter import reference_runtime

    assert check_lines(_trace()).identity == {"model": "m", "B": 1, "hash": "h", "namespace": "n"}
    assert check_lines(_trace(identity=False)).identity == {"model": None, "B": 1, "hash": None, "namespace": None}
    identity = check_lines(reference_runtime(U=4, B=2).trace_lines()).identity
    assert identity is not None and all(identity.values())
    report = conform("refimpl", steps=200, seeds=1)
    assert next(o for o in report["obligations"] if o["id"] == "RKC-ID-3")["verdict"] == "conforms"


@pytest.mark.obligation("RKC-ID-4")
def test_a_restore_of_a_block_the_device_holds_is_not_a_restore():
    offloaded = [
        SUBMIT,
        {"kind": "claim", "claim": "c", "event": "accept"},
        STORE,
        {"kind": "claim", "claim": "c", "event": "materialize", "blocks": ["h0"]},
        {"kind": "block_offload", "claim": "c", "blocks": ["h0"], "tier": "host"},
        {"kind": "claim", "claim": "c", "event": "offload"},
        {"kind": "block_evict", "blocks": ["h0"], "tier": "device", "reason": "offload"},
    ]
    restore = [
        {"kind": "block_restore", "claim": "c", "blocks": ["h0"], "tier": "device"},
        {"kind": "claim", "claim": "c", "event": "restore"},
    ]
    assert check_lines(_trace(*offloaded, *restore)).ok
    recomputed = check_lines(_trace(*offloaded, STORE, *restore))
    assert [v.kind for v in recomputed.violations] == ["restore_of_resident"]


@pytest.mark.obligation("RKC-ID-5")
def test_a_refusal_naming_a_claim_that_did_not_block_is_found():
    hard = [
        {"kind": "claim_submit", "claim": "a", "blocks": ["h0"], "strength": "hard", "policy": "refuse"},
        {"kind": "claim", "claim": "a", "event": "accept"},
        {"kind": "claim_submit", "claim": "b", "blocks": ["h1"], "strength": "hard", "policy": "refuse"},
        {"kind": "claim", "claim": "b", "event": "accept"},
        STORE,
        {"kind": "claim", "claim": "a", "event": "materialize"},
        {"kind": "request_submit", "request": "r"},
    ]
    refuse = {"kind": "request_refuse", "request": "r", "reason": "refuse_blocked"}
    assert check_lines(_trace(*hard, {**refuse, "blocking_claims": ["a"]})).ok
    smeared = check_lines(_trace(*hard, {**refuse, "blocking_claims": ["a", "b"]}))
    assert [v.kind for v in smeared.violations] == ["refusal_without_attribution"]


# --- what a first user tried (each once let a row through, or crashed) -----------------
def _one(tmp_path: Path, evidence: str, mode: str = "best_effort") -> object:
    path = tmp_path / "d.toml"
    path.write_text(
        f'schema = "kvclaims.lowering/1"\nruntime = "refimpl"\nversion = "0.1.0"\n'
        f'[[rows]]\nmode = "{mode}"\nmechanisms = ["claims"]\n[[evidence]]\n{evidence}'
    )
    return classify_file(path, SPEC)[0]


def test_a_trace_counts_only_read_here_and_of_the_pinned_runtime(tmp_path):
    every = json.dumps(list(LOW.modes["best_effort"].bundle))
    pinned = f'id = "t"\nkind = "trace"\ndepth = "native"\nversion = "0.1.0"\nsupports = {every}\n'
    v = _one(tmp_path, pinned + f'anchor = "example/runtime@{COMMIT}:trace.jsonl:1"\n')
    assert v.klass == "unknown" and "unchecked" in v.reasons[0]
    (tmp_path / "t.jsonl").write_text(json.dumps({"schema_version": 1, "seq": 0, "time": 0, "kind": "runtime",
                                                  "runtime": "other", "version": "0.1.0"}) + "\n")  # fmt: skip
    digest = hashlib.sha256((tmp_path / "t.jsonl").read_bytes()).hexdigest()
    v = _one(tmp_path, pinned + f'file = "t.jsonl"\nsha256 = "{digest}"\n')
    assert v.klass == "unknown" and "wrong run" in v.reasons[0]


def test_an_empty_trace_of_the_right_runtime_shows_nothing_it_does_not_exercise(tmp_path):
    head = {"schema_version": 1, "seq": 0, "time": 0, "kind": "runtime", "runtime": "refimpl", "version": "0.1.0"}
    head |= {"model": "m", "hash": "h", "namespace": "n", "B": 4}
    (tmp_path / "t.jsonl").write_text(json.dumps(head) + "\n")
    digest = hashlib.sha256((tmp_path / "t.jsonl").read_bytes()).hexdigest()
    every = json.dumps(list(LOW.modes["best_effort"].bundle))
    v = _one(tmp_path, f'id = "t"\nkind = "trace"\ndepth = "native"\nversion = "0.1.0"\nsupports = {every}\n'
                       f'file = "t.jsonl"\nsha256 = "{digest}"\n')  # fmt: skip
    assert v.klass == "approximate" and "RKC-ID-1" in v.missing


def test_a_report_that_is_not_one_is_no_evidence(tmp_path):
    for text in ("", "[1, 2]", '{"obligations": "x"}', '{"obligations": [{}]}'):
        (tmp_path / "r.json").write_text(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        v = _one(tmp_path, f'id = "r"\nkind = "conformance_run"\ndepth = "native"\nversion = "0.1.0"\n'
                           f'file = "r.json"\nsha256 = "{digest}"\n')  # fmt: skip
        assert v.klass == "unknown" and "unreadable" in v.reasons[0], text


def test_a_stock_run_counts_only_as_an_observers(tmp_path):
    report = json.loads((shipped()[0].parent / "evidence" / "refimpl" / "report.json").read_text())
    (tmp_path / "r.json").write_text(json.dumps({**report, "enforces_claims": False}))
    digest = hashlib.sha256((tmp_path / "r.json").read_bytes()).hexdigest()
    v = _one(tmp_path, f'id = "r"\nkind = "conformance_run"\ndepth = "native"\nversion = "0.1.0"\n'
                       f'file = "r.json"\nsha256 = "{digest}"\n')  # fmt: skip
    assert v.klass == "unknown" and "only witnesses claims" in v.reasons[0]


def test_anchors_are_pinned_places_and_descriptors_name_things_once(tmp_path):
    from kvclaims.lowering.descriptor import _pinned

    assert _pinned(f"owner/repo@{COMMIT}:x.py:3-9") and not _pinned(f"owner/repo@{COMMIT}:x.py:10-5")
    for bad in (f"../..@{COMMIT}:x.py:1", f"owner/repo@{COMMIT}:x.py:0", f"owner/repo@{COMMIT}:x.py:1\n"):
        assert not _pinned(bad), bad
    twice = 'schema = "kvclaims.lowering/1"\nruntime = "x"\nversion = "1"\n'
    twice += '[[rows]]\nmode = "best_effort"\nmechanisms = []\n' * 2
    (tmp_path / "d.toml").write_text(twice)
    with pytest.raises(InvalidField, match="more than once"):
        classify_file(tmp_path / "d.toml", SPEC)
    (tmp_path / "d.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidField, match="d.toml"):
        classify_file(tmp_path / "d.toml", SPEC)

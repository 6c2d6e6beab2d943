"""The checker's typed path agrees with its exact one, finding for finding.

`check_lines` and `check_file` decode each line with msgspec into a typed record
(`kvclaims.conformance.records`) and take a line the decoder refuses through `json` and
`_shape`; the exact path reads every line that way (`read_lines`, `Checker.feed`). On
mixtures of well-formed and mangled lines the two reports are equal: kinds, messages,
line and seq numbers, outcomes, counts. The seeded bug: a decoder without the UTF-8
guard takes a line `json` refuses (test_the_seeded_bug_...)."""

import io
import json

import pytest
from hypothesis import given, settings, strategies as st

from kvclaims.conformance import checker as checker_module
from kvclaims.conformance.checker import FIELDS, Checker, Report, check_file, check_lines
from kvclaims.conformance.records import TYPES
from kvclaims.model.terms import TIERS
from kvclaims.spec import load
from kvclaims.trace import BadLine, file_blocks, file_lines, read_lines

SPEC = load()
H1, H2, H3 = "a" * 32, "b" * 32, "c" * 32
EVENTS = sorted(SPEC.lifecycle.events)
STATES = sorted(SPEC.lifecycle.states)
OUTCOMES = sorted(SPEC.outcome_names)


def exact(lines, on_end=None) -> Report:
    """The exact path: every line through `json` (`read_lines`) and `Checker.feed`."""
    checker = Checker(on_end=on_end)
    for number, rec in read_lines(lines):
        checker.feed(number, rec)
    return checker.finish()


def both(lines) -> tuple[Report, Report]:
    return check_lines(lines), exact(lines)


# ---------------------------------------------------------------------- records, whole and mangled
def raw(value) -> str:
    return json.dumps(value)


ids = st.sampled_from(["c0", "c1", "r0", "r1", ""])
chains = st.lists(st.sampled_from([H1, H2, H3]), max_size=3)
GOOD = {  # a field name -> JSON texts of well-formed values for it
    "claim": ids.map(raw),
    "request": ids.map(raw),
    "event": st.sampled_from(EVENTS + ["nonsense"]).map(raw),
    "state": st.sampled_from(STATES).map(raw),
    "reason": st.sampled_from([*OUTCOMES, "lru", ""]).map(raw),
    "blocks": chains.map(raw),
    "hit_blocks": chains.map(raw),
    "blocking_claims": st.lists(ids, max_size=2).map(raw),
    "tier": st.sampled_from([*TIERS, "moon"]).map(raw),
    "admit": st.booleans().map(raw),
    "action": st.sampled_from([*sorted(SPEC.invalidations), "noop"]).map(raw),
    "model": st.sampled_from(["m", ""]).map(raw),
    "B": st.sampled_from(["16", "true", "0"]),
}
# JSON (and not quite JSON) that json and msgspec may read differently, or one of them not at all
HOSTILE_VALUES = [
    "null", "true", "false", "0", "-0", "1.0", "1e2", "-1", "123456789012345678901234567890", "1e400",
    "NaN", "Infinity", "-Infinity", '""', '"x"', "[]", '[""]', '["x", ""]', "[1]", "{}", '{"a": 1, "a": 2}',
    '"\\ud800"', '"\\ud83d\\ude00"', '"caf\\u00e9"', '"café"', '"\\u0000"', '"tab\there"', '"a\\/b"',
    "[" * 40 + "]" * 40, "[" * 3000 + "]" * 3000, "01", "1.", ".5", "tru", '"unterminated',
]  # fmt: skip
HOSTILE = st.sampled_from(HOSTILE_VALUES)
EXTRA = st.sampled_from(["state", "reason", "blocks", "hit_blocks", "blocking_claims", "tier", "request", "x", "kind"])


@st.composite
def record_line(draw, seq: int) -> str:
    """A record of a known kind as JSON text, its fields well-formed, mangled or repeated."""
    kind = draw(st.sampled_from(sorted(FIELDS)))
    items = [
        ("schema_version", draw(st.sampled_from(["1"] * 8 + ["2", "true", "1.0"]))),
        ("seq", str(seq) if draw(st.integers(0, 9)) else draw(st.sampled_from(["-1", "0", "true", str(seq + 2)]))),
        ("time", draw(st.sampled_from(["0"] * 6 + ["1", "-1", "0.5"]))),
        ("kind", raw(kind)),
    ]
    for name in [*FIELDS[kind], *draw(st.lists(EXTRA, max_size=3))]:
        good = GOOD.get(name, st.just(raw("v")))
        if draw(st.integers(0, 7)):
            items.append((name, draw(good)))
        elif draw(st.booleans()):
            items.append((name, draw(HOSTILE)))
    if draw(st.integers(0, 9)) == 0:
        items.append((draw(st.sampled_from(["kind", "seq", "claim", "kin\\u0064"])), draw(HOSTILE | GOOD["event"])))
    order = draw(st.permutations(items)) if draw(st.integers(0, 9)) == 0 else items
    return "{" + ", ".join(f'"{key}": {value}' for key, value in order) + "}"


@st.composite
def trace_lines(draw) -> list[str]:
    """Lines of a trace: records mostly in sequence, some mangled, cut, padded or garbage."""
    lines = []
    for seq in range(draw(st.integers(0, 25))):
        line = draw(record_line(seq))
        spoil = draw(st.integers(0, 19))
        if spoil == 0:
            line = line[: draw(st.integers(0, len(line)))]
        elif spoil == 1:
            line = (
                draw(st.sampled_from([" ", "\t", "\ufeff", "\x0c", ""]))
                + line
                + draw(st.sampled_from(["", " ", "\r", " x", "{}", "\x0b"]))
            )
        elif spoil == 2:
            line = draw(st.sampled_from(["", "   ", "[]", "1", "not json", "{", '"s"']))
        lines.append(line)
    return lines


@settings(deadline=None)
@given(trace_lines(), st.booleans())
def test_typed_and_exact_paths_agree(lines, streamed):
    """The same report either way, for bare lines (`check_lines`) and with outcomes streamed."""
    if streamed:
        got, want = [], []
        assert check_lines(lines, on_end=lambda *x: got.append(x)) == exact(lines, lambda *x: want.append(x))
        assert got == want
    else:
        typed, by_json = both(lines)
        assert typed == by_json, (typed.violations, by_json.violations)


@settings(deadline=None)
@given(trace_lines(), st.integers(1, 400), st.integers(20, 300), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_files_in_blocks_agree_with_the_exact_path(lines, size, limit, eol, ended):
    """`file_blocks` (blocks of any size, lines over the limit, a last line with or without its
    newline) and `feed_blocks` give the exact path's report over `file_lines`."""
    data = eol.join(line.encode("utf-8", "surrogatepass") for line in lines) + (eol if ended and lines else b"")
    checker = Checker()
    checker.feed_blocks(file_blocks(io.BytesIO(data), limit, size))
    typed = checker.finish()
    assert typed == exact(file_lines(io.BytesIO(data), limit))
    blocks = list(file_blocks(io.BytesIO(data), limit, size))
    assert [line for block, _ in blocks for line in block] == list(file_lines(io.BytesIO(data), limit))
    for block, ascii in blocks:  # ASCII only if so: a non-ASCII byte may hide in a line too long
        assert not ascii or all(line.isascii() for line in block if type(line) is bytes)


def test_file_blocks_keeps_what_file_lines_gives():
    """A line over the limit is a `line_too_long` of its length; every other line is kept with its newline."""
    data = b'{"a": 1}\r\n' + b"x" * 50 + b"\n\n" + b"y" * 30 + b"\n" + b"z" * 70
    for size in (1, 7, 16, 64, 1 << 16):
        lines = [line for block, _ in file_blocks(io.BytesIO(data), 40, size) for line in block]
        assert lines == list(file_lines(io.BytesIO(data), 40))
        assert [(x.kind, str(x)) for x in lines if type(x) is BadLine] == [
            ("line_too_long", "line longer than 40 bytes (51 bytes); not parsed"),
            ("line_too_long", "line longer than 40 bytes (70 bytes); not parsed"),
        ]


# ---------------------------------------------------------------------- the lines one path refuses
ENVELOPE = '"schema_version": 1, "seq": 0, "time": 0'
REFUSED = [  # lines msgspec's typed decoder refuses or reads otherwise: the exact path decides
    b"{" + ENVELOPE.encode() + b', "kind": "runtime", "x": "\xff"}',  # invalid UTF-8 in a field it skips
    b"{" + ENVELOPE.encode() + b', "kind": "runtime", "x": "\xed\xa0\x80"}',  # an encoded surrogate
    b"{" + ENVELOPE.encode() + b', "kind": "runtime", "x": "caf\xc3\xa9"}',  # UTF-8, fine
    "{" + ENVELOPE + ', "kind": "runtime", "model": "\\ud800"}',
    "{" + ENVELOPE + ', "kind": "runtime", "model": "\ud800"}',  # a lone surrogate in the text itself
    "{" + ENVELOPE + ', "kind": "runtime", "x": NaN}',
    "{" + ENVELOPE + ', "kind": "runtime", "B": true}',
    "{" + ENVELOPE + ', "kind": "runtime", "kind": "operator"}',
    "{" + ENVELOPE + ', "kind": "claim_submit", "claim": "c", "blocks": [], "kind": "runtime"}',
    "{" + ENVELOPE + ', "kind": "request_submit", "request": "r", "tier": null}',
    "{" + ENVELOPE + ', "kind": "request_submit", "request": "r", "blocks": null}',
    "{" + ENVELOPE + ', "kind": "block_store", "blocks": [], "tier": "device", "request": null}',
    "{" + ENVELOPE + ', "kind": "claim", "claim": "c", "event": "accept", "state": null}',
    "{" + ENVELOPE + ', "kind": "claim", "claim": "c", "event": "accept", "state": 7}',
    "{" + ENVELOPE + ', "kind": "claim", "claim": "c", "event": "refuse", "reason": 0}',
    "{" + ENVELOPE + ', "kind": "runtime", "x": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"schema_version": 1, "seq": 0, "time": 0, "kin\\u0064": "runtime", "se\\u0071": 3}',
    '{"schema_version": 1, "seq": 1e0, "time": 0, "kind": "runtime"}',
    '\ufeff{"schema_version": 1, "seq": 0, "time": 0, "kind": "runtime"}',
    BadLine("malformed_line", '{"schema_version": 1, "seq": 0, "time": 0, "kind": "runtime"}'),
]


@pytest.mark.parametrize("line", REFUSED, ids=range(len(REFUSED)))
def test_lines_the_decoder_may_not_judge(line):
    claim = '{"schema_version": 1, "seq": 1, "time": 0, "kind": "claim_submit", "claim": "c", "blocks": []}'
    follow = claim.encode() if isinstance(line, bytes) else claim
    lines = [line, follow]
    typed, by_json = both(lines)
    assert typed == by_json, (typed.violations, by_json.violations)
    data = b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in lines) + b"\n"
    checker = Checker()
    checker.feed_blocks(file_blocks(io.BytesIO(data)))
    assert checker.finish() == exact(file_lines(io.BytesIO(data)))


def test_each_field_of_each_kind_spoiled_each_way():
    """Every field a record type holds (and a few it does not), given each hostile value,
    in one trace: the typed path's report is the exact one's."""
    good = {"event": raw(EVENTS[0]), "tier": raw(TIERS[0]), "admit": "true", "B": "16", "blocks": raw([H1])}
    lines = []
    for kind, typ in sorted(TYPES.items()):
        fields = {name: good.get(name, raw([] if typ is list else "v")) for name, typ in FIELDS[kind].items()}
        for name in [*typ.__struct_fields__, "kind", "x"]:
            for value in HOSTILE_VALUES:
                spoiled = {**fields, name: value}
                head = f'"schema_version": 1, "seq": {len(lines)}, "time": 0, "kind": "{kind}"'
                lines.append("{" + head + "".join(f', "{k}": {v}' for k, v in spoiled.items()) + "}")
    typed, by_json = both(lines)
    for mine, theirs in zip(typed.violations, by_json.violations):
        assert mine == theirs, lines[theirs.line - 1]
    assert typed == by_json


def test_every_kind_has_its_record_type():
    """The Structs are made from the field tables: one a kind, tagged by it, holding its fields."""
    assert set(TYPES) == set(FIELDS)
    for kind, typ in TYPES.items():
        assert typ.__struct_config__.tag == kind and set(FIELDS[kind]) <= set(typ.__struct_fields__)


def test_the_seeded_bug_a_decoder_without_the_utf8_guard(monkeypatch):
    """The seeded bug these tests catch: decode a byte line that is not ASCII as it is. msgspec
    skips the fields it does not read without checking their UTF-8, so the line is a record
    on the typed path and a malformed line on the exact one."""
    lines = [REFUSED[0] + b"\n"]
    assert both(lines)[0] == both(lines)[1]
    monkeypatch.setattr(checker_module, "as_text", lambda line: line)
    typed, by_json = both(lines)
    assert [v.kind for v in by_json.violations] == ["malformed_line"] and typed.ok
    assert typed != by_json


def test_check_file_reads_in_blocks(tmp_path):
    """`check_file` is the exact path's report over `file_lines` (a cut tail too)."""
    lines = [
        '{"schema_version": 1, "seq": 0, "time": 0, "kind": "runtime"}',
        "",
        '{"schema_version": 1, "seq": 1, "time": 0, "kind": "request_submit", "request": "r"}',
        '{"schema_version": 1, "seq": 2, "time": 0, "kind": "request_admit", "req',
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines))
    report = check_file(path)
    with open(path, "rb") as fh:
        assert report == exact(file_lines(fh))
    assert [(v.kind, v.line) for v in report.violations] == [("truncated_tail", 4)] and report.records == 2

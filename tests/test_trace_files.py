"""Trace files as bad input, through `kvclaims check`: each class of damage is a typed
finding with its line (and seq when readable), exit 1; an unreadable path is exit 2
with one line; nothing ends in a traceback. A runtime killed mid-trace leaves a
prefix that checks clean but for its reported truncated tail."""

import io
import json
import random
import signal
import subprocess
import sys
import time
import tracemalloc

from hypothesis import given, strategies as st

from kvclaims.cli import main
from kvclaims.conformance.checker import check_file, check_lines
from kvclaims.conformance.litmus import run_scenario
from kvclaims.trace import MAX_LINE, file_lines


def rec(seq, kind="runtime", **fields):
    return json.dumps({"schema_version": 1, "seq": seq, "time": 0, "kind": kind, **fields})


def write(tmp_path, *lines: str | bytes, end=b"\n"):
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + end)
    return path


def check(path, capsys):
    """Exit code and (kind, line, seq) findings of `kvclaims check --json`; the text report must agree."""
    code = main(["check", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert main(["check", str(path)]) == code
    text = capsys.readouterr().out
    found = [(v["kind"], v["line"], v["seq"]) for v in report["violations"]]
    for kind, line, seq in found:
        assert f"line {line}{'' if seq is None else f' seq {seq}'}: {kind}: " in text
    return code, found, report


def test_empty_file(tmp_path, capsys):
    for blank in (b"", b"\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(blank)
        code, found, _ = check(path, capsys)
        assert code == 1 and found == [("empty_trace", 1, None)]


def test_binary_garbage_is_reported_by_line(tmp_path, capsys):
    code, found, report = check(write(tmp_path, rec(0), b"\x00\xff\xfe\x89PNG garbage", rec(1)), capsys)
    assert code == 1 and found == [("malformed_line", 2, None)]
    assert "not UTF-8" in report["violations"][0]["message"] and "column 2" in report["violations"][0]["message"]
    noise = random.Random(0).randbytes(1 << 16)
    code, found, _ = check(write(tmp_path, noise, end=b""), capsys)
    assert code == 1 and found and {kind for kind, _, _ in found} <= {"malformed_line", "truncated_tail"}


def test_wrong_schema_version(tmp_path, capsys):
    bad = json.dumps({"schema_version": 2, "seq": 1, "time": 0, "kind": "runtime"})
    code, found, report = check(write(tmp_path, rec(0), bad, rec(2)), capsys)
    assert code == 1 and found == [("malformed_line", 2, 1), ("sequence_gap", 3, 2)]
    assert report["violations"][0]["message"] == "schema_version must be 1, got 2"


def test_truncated_last_line_is_the_tail_not_a_malformed_line(tmp_path, capsys):
    cut = rec(2, "request_submit", request="r")[:-9]
    code, found, report = check(write(tmp_path, rec(0), rec(1), cut, end=b""), capsys)
    assert code == 1 and found == [("truncated_tail", 3, None)] and report["records"] == 2
    code, found, _ = check(write(tmp_path, rec(0), cut, rec(1)), capsys)
    assert code == 1 and found == [("malformed_line", 2, None)]
    assert check(write(tmp_path, rec(0), rec(1), end=b""), capsys)[:2] == (0, [])


def test_duplicate_and_missing_sequence_numbers(tmp_path, capsys):
    code, found, report = check(write(tmp_path, rec(0), rec(1), rec(1), rec(4)), capsys)
    assert code == 1 and found == [("sequence_order", 3, 1), ("sequence_gap", 4, 4)]
    assert [v["message"] for v in report["violations"]] == [
        "duplicate seq 1: the record before has it too",
        "seq 4 follows 1: 2 record(s) missing",
    ]


def test_gigantic_line_is_skipped_in_bounded_memory(tmp_path, capsys):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(rec(0).encode() + b"\n" + b'{"pad": "' + b"x" * (50 << 20) + b'"}\n' + rec(1).encode() + b"\n")
    tracemalloc.start()
    try:
        code, found, report = check(path, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 1 and found == [("line_too_long", 2, None)] and report["records"] == 2
    assert peak < 3 * MAX_LINE < 50 << 20  # readline may hold two copies of a capped line
    assert f"{(50 << 20) + 12} bytes" in report["violations"][0]["message"]


def test_unreadable_paths_are_usage_errors(tmp_path, capsys):
    for path in (tmp_path / "missing.jsonl", tmp_path, write(tmp_path, rec(0)) / "below"):
        assert main(["check", str(path)]) == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err.startswith("kvclaims check: error: ") and out.err.count("\n") == 1


def test_cli_never_prints_a_traceback(tmp_path):
    """The command in its own process, on garbage: findings on stdout, nothing on stderr."""
    claim = rec(0, "claim_submit", claim="\ud800", blocks=[])  # a lone surrogate stdout cannot encode
    path = write(tmp_path, b"\xff", b"[" * 100_000, claim, b"{", end=b"")
    done = subprocess.run(
        [sys.executable, "-m", "kvclaims.cli", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and done.stderr == "", done.stderr
    assert "line 4: truncated_tail" in done.stdout and "claim \\ud800: requested" in done.stdout


CHILD = """
import itertools, sys
from kvclaims.refimpl.runtime import Runtime

with open(sys.argv[1], "w", encoding="utf-8") as sink:
    rt = Runtime(32, 4, 4, host_blocks=8, sink=sink)
    for i in itertools.count():
        family = [(i % 5) * 1000 + t for t in range(8)]
        rt.submit_claim(f"c{i}", family, strength="hard" if i % 2 else "soft", ttl=3,
                        tiers=("device", "host"), policy="offload")
        rt.submit_request(f"r{i}", family + [50_000 + i] * (1 + i % 9))
        rt.step()
        for r in list(rt.requests.values()):
            if r.status == "running":
                rt.finish(r.id, admit=i % 3 > 0)
"""


def test_runtime_killed_mid_trace_leaves_a_clean_prefix(tmp_path):
    """SIGKILL loses at most the record being written: the sink is flushed per record."""
    path = tmp_path / "killed.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)])
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and path.stat().st_size > 50_000):
            assert child.poll() is None and time.monotonic() < deadline, "the runtime stopped early"
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    report = check_file(path)
    assert [v.kind for v in report.violations] in ([], ["truncated_tail"]) and report.records > 200


TRACE = ("\n".join(run_scenario("offload_restore").trace) + "\n").encode()


@given(st.integers(0, len(TRACE)))
def test_a_trace_cut_anywhere_checks_clean_but_for_its_tail(cut):
    """Whatever byte the writer died at, the whole records before it check clean."""
    prefix = TRACE[:cut]
    whole = prefix.count(b"\n")
    report = check_lines(file_lines(io.BytesIO(prefix)))
    kinds = [v.kind for v in report.violations]
    if cut == 0:
        assert kinds == ["empty_trace"]
    elif prefix.endswith(b"\n") or TRACE[cut : cut + 1] == b"\n":  # cut between records
        assert kinds == [] and report.records == whole + (not prefix.endswith(b"\n"))
    else:
        assert kinds == ["truncated_tail"] and report.violations[0].line == whole + 1
        assert report.records == whole

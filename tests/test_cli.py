"""The command line as a user runs it: subprocesses, exit codes, JSON shape."""

import json
import subprocess
import sys

from kvclaims.model.lifecycle import mermaid
from kvclaims.spec import load


def kvclaims(*args, **kw):
    return subprocess.run([sys.executable, "-m", "kvclaims.cli", *args], capture_output=True, text=True, **kw)


def test_prove_json_reports_every_obligation():
    out = kvclaims("prove", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "kvclaims.prove/1" and doc["proved"] is True
    assert [o["id"] for o in doc["obligations"]] == list(load().obligations)
    assert all(r["result"] == "proved" for r in doc["results"])
    assert {"obligation", "name", "method", "result", "seconds", "queries", "detail", "trace"} <= set(doc["results"][0])


def test_prove_table():
    out = kvclaims("prove")
    assert out.returncode == 0 and "RKC-INV-1" in out.stdout and "induction" in out.stdout


def test_prove_fails_on_a_broken_spec(tmp_path):
    """A broken contract makes `prove` exit 1 and print the counterexample."""
    text = load_text().replace("guard_h = [\"cs != 'materialized'\"]", "guard_h = []", 1)
    broken = tmp_path / "broken.toml"
    broken.write_text(text)
    out = kvclaims("prove", "--spec", str(broken))
    assert out.returncode == 1
    assert "NOT PROVED" in out.stdout and "counterexample to" in out.stdout


def test_bad_spec_path_is_one_line_error(tmp_path):
    out = kvclaims("prove", "--spec", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "missing.toml" in out.stderr


def test_diagram():
    out = kvclaims("diagram")
    assert out.returncode == 0 and out.stdout.strip() == mermaid()


def load_text():
    from kvclaims.spec import CONTRACT_PATH

    return CONTRACT_PATH.read_text()


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`kvclaims check --stream BIG | head -1`: no error line when the pipe closes (141, as SIGPIPE)."""
    from kvclaims.bench.checker import generate

    trace = tmp_path / "t.jsonl"
    generate(trace, 50_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvclaims.cli", "check", "--stream", str(trace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""

"""Rule 1, one source of truth: outside the modules that generate from the spec, no source
file writes a claim state, claim event, request status or claim policy as a string
literal; code names them through `kvclaims.model.names` (``EVENT.demote``), so renaming
one in contract.toml breaks every use at once instead of silently leaving a stale copy.

A few words the spec uses are also words of another vocabulary (a verdict's ``failed``,
the request argument ``kvclaims_release``); those uses are listed below with their sense.
Tests may write expected values literally: an expected value is meant to be a second copy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kvclaims.model.names import EVENT, POLICY, STATE, STATUS
from kvclaims.spec import load

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("kvclaims", "spec", "model", "proofs", "conformance", "refimpl", "integrations", "bench")
GENERATORS = {"spec/__init__.py", "model/names.py"}  # they read the names from contract.toml
# (file, word): the other sense in which that file uses the word
OTHER_SENSES = {
    ("integrations/vllm/xargs.py", "release"): "the request argument kvclaims_release",
    ("integrations/vllm/scheduler.py", "refused"): "a key of the client's kv_transfer_params note",
    ("integrations/vllm/engine.py", "refused"): "a key of the client's kv_transfer_params note",
    ("integrations/vllm/adapter.py", "refused"): "a key of the client's kv_transfer_params note",
    ("integrations/vllm/probe.py", "refused"): "a key of the client's kv_transfer_params note",
    ("integrations/vllm/outcomes.py", "refused"): "a key of the client's kv_transfer_params note",
    ("integrations/vllm/streams.py", "refused"): "a key of the client's kv_transfer_params note",
    ("integrations/vllm/outcomes.py", "refuse"): "the prefix of a refusal outcome in a stop_reason",
    ("conformance/conform.py", "failed"): "a verdict",
    ("conformance/litmus.py", "failed"): "a verdict",
    ("conformance/rejections.py", "failed"): "a verdict",
    ("kvclaims/cli/conform.py", "failed"): "a verdict",
    ("kvclaims/cli/litmus.py", "failed"): "a verdict",
    ("proofs/result.py", "failed"): "a verdict",
    ("proofs/run.py", "failed"): "a verdict",
}


def spec_words() -> set[str]:
    spec = load()
    return set(spec.lifecycle.states) | set(spec.lifecycle.events) | set(spec.request_statuses) | set(spec.policies)


def literals(path: Path, words: set[str]) -> list[tuple[int, str]]:
    """(line, word) of each string constant equal to one of `words`, docstrings aside."""
    tree = ast.parse(path.read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in words and id(node) not in docs
    )


def test_no_spec_name_is_written_as_a_literal():
    words, found = spec_words(), []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in GENERATORS:
                continue
            found += [
                f"{rel}:{line}: {word!r}" for line, word in literals(path, words) if (rel, word) not in OTHER_SENSES
            ]
    assert not found, "spec names written as literals (use kvclaims.model.names):\n" + "\n".join(found)


def test_every_other_sense_is_still_used():
    """An exemption nobody needs any more is removed, so the list cannot hide new literals."""
    words = spec_words()
    stale = [key for key in OTHER_SENSES if key[1] not in {w for _, w in literals(ROOT / key[0], words)}]
    assert not stale, stale


@pytest.mark.parametrize(
    "names, kind",
    [(STATE, "claim state"), (EVENT, "claim event"), (STATUS, "request status"), (POLICY, "claim policy")],
)
def test_a_name_the_spec_lacks_is_an_error(names, kind):
    with pytest.raises(AttributeError, match=f"the spec has no {kind} 'nonesuch'"):
        names.nonesuch  # noqa: B018

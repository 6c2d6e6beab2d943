"""Small contracts of the package itself: `load_adapter` names a bad constructor argument,
`kvclaims --help` shows whole sentences, the `dev` extra declares what the tests import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from kvclaims.conformance.adapter import load_adapter
from kvclaims.errors import BadArgument

ROOT = Path(__file__).resolve().parent.parent


class NeedsToken:
    """A runtime class with a required argument the suites never pass."""

    def __init__(self, U: int, B: int, R: int = 0, host_blocks: int = 0, *, token: str) -> None: ...


class Crashes:
    """A runtime class whose constructor fails with a TypeError of its own."""

    def __init__(self, U: int, B: int, R: int = 0, host_blocks: int = 0) -> None:
        len(U)


@pytest.mark.parametrize(
    "runtime, kwargs, arg",
    [
        ("refimpl", dict(U=8), "B"),  # missing
        ("refimpl", dict(B=4), "U"),
        ("refimpl", dict(U=8, B=4, colour="red"), "colour"),  # unexpected, past a **kwargs
        ("test_small_fixes:NeedsToken", dict(U=8, B=4), "token"),  # keyword-only
        ("json:JSONDecoder", dict(U=8, B=4), "U"),  # not an adapter at all
    ],
)
def test_a_bad_constructor_argument_is_named(runtime, kwargs, arg):
    with pytest.raises(BadArgument) as err:
        load_adapter(runtime, **kwargs)
    assert err.value.field == arg
    assert f"'{arg}'" in str(err.value) and f"cannot build {runtime!r}" in str(err.value)


def test_a_runtime_own_type_error_stays_one():
    with pytest.raises(TypeError, match="has no len") as err:
        load_adapter("test_small_fixes:Crashes", U=8, B=4)
    assert not isinstance(err.value, BadArgument)


def test_help_shows_whole_sentences():
    out = subprocess.run([sys.executable, "-m", "kvclaims.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    description = out.stdout.split("\n\n")[1]
    assert not description.startswith(("usage:", "positional arguments:")), out.stdout
    text = " ".join(description.split())
    assert re.fullmatch(r"[^.]+(\.\s[^.]+)*\.", text), text  # sentences, the last one ended
    from kvclaims import cli

    assert text == cli.summary() and cli.summary() in " ".join(cli.__doc__.split()).replace("`", "")


def _distribution(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement)[0].lower().replace("_", "-")


def test_the_dev_extra_declares_what_the_tests_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_distribution(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    # torch's Tensor.numpy(), which tests use to compare KV bytes, needs numpy (torch does not require it)
    assert {"pytest", "numpy"} <= declared
    dists = packages_distributions()
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"kvclaims"}
    for path in sorted((ROOT / "tests").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, (ast.Expr, ast.Assign)) and "importorskip" in ast.unparse(n) for n in tree.body):
            continue  # optional: the module skips without it
        for node in tree.body:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - local:
                assert {_distribution(d) for d in dists.get(top, [top])} & declared, (
                    f"{path.name} imports {top}, which pyproject.toml does not declare"
                )

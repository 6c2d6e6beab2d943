"""GPU check for the reference runtime: the litmus suite and the probe on CUDA tensors.

Run on a machine with a CUDA device (exit 2 without one):
    python scripts/device_check.py [OUT_DIR]
then `pytest tests/test_refimpl_*.py tests/test_litmus.py`, whose cuda cases run there.
Writes device_check.json to OUT_DIR (default $OUT, else the current directory).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.conformance.checker import check_lines
from kvclaims.conformance.litmus import run_all, tokens
from kvclaims.refimpl.runtime import Runtime


def probe() -> dict:
    rt = Runtime(80, 4, 4, host_blocks=60)
    P = tokens(60, 1)
    rt.submit_claim("c", P, tiers=("device", "host"))
    rt.submit_request("warm", P)
    rt.finish("warm")
    d = rt.submit_request("big", tokens(70, 2))
    rt.submit_request("again", P)
    return {
        "device": str(rt.pool.kv.device),
        "host_pinned": rt.host.kv.is_pinned(),
        "refused_by": list(d.blocking_claims),
        "hits": rt.requests["again"].hit_blocks,
        "verified": rt.verify_request("again"),
        "trace_ok": check_lines(rt.trace.lines()).ok,
    }


def main() -> int:
    if not torch.cuda.is_available():
        print("device_check: no CUDA device", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run_all(partial(RefimplAdapter, device="cuda"))
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "probe": probe(),
        "litmus": [r.to_json() for r in results],
        "seconds": round(time.perf_counter() - start, 2),
    }
    p = report["probe"]
    ok = (
        all(r.passed for r in results)
        and p["device"].startswith("cuda")
        and p["host_pinned"]
        and p["refused_by"] == ["c"]
        and p["hits"] == 60
        and p["verified"]
        and p["trace_ok"]
    )
    report["ok"] = ok
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("gpu", "probe", "ok", "seconds")}, indent=2))
    for r in results:
        print(("PASS " if r.passed else "FAIL ") + r.name, *r.failures, sep="\n    ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

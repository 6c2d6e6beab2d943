"""Engine checks that must run in a process of their own: each starts (or fails to start)
a vLLM engine whose teardown destroys vLLM's process-wide parallel state, which would
break the in-process engines the rest of the suite shares ("pipeline model parallel
group is not initialized"). `run(name, tmp)` runs one in a fresh interpreter; run as a
script, it runs the named check and exits 0 when it holds."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).parent
SHAPE = dict(max_model_len=1024)  # the sliding model's window must fit the 80-block pool


def run(name: str, tmp: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), name, str(tmp)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def frames(exc: BaseException) -> list[str]:
    return [f"{f.filename}:{f.name}" for f in traceback.extract_tb(exc.__traceback__)]


def refused(fn, *args, **kw):
    from kvclaims.errors import BadArgument

    try:
        fn(*args, **kw)
    except BadArgument as exc:
        return exc
    raise AssertionError(f"{fn.__name__} was not refused")


def sliding_refused_at_scheduler_start(tmp: Path) -> None:
    """The engine arguments a user passes to `LLM`: nothing of ours runs before the
    scheduler, which reads the group kind off the KV cache vLLM built."""
    from vllm import EngineArgs, LLMEngine

    from kvclaims.vllm.engine import ENV, engine_kwargs
    from kvclaims.vllm.model_dir import tiny_sliding_model_dir

    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    trace = tmp / "claims.jsonl"
    kw = engine_kwargs(model=str(tiny_sliding_model_dir()), trace=str(trace), **SHAPE)
    err = refused(LLMEngine.from_engine_args, EngineArgs(**kw))
    assert err.field == "model" and "SlidingWindowSpec" in str(err), err
    assert any(f.endswith("scheduler.py:__init__") for f in frames(err)), frames(err)
    assert not trace.exists()  # refused before the trace file is made


def sliding_runs_without_the_integration(tmp: Path) -> None:
    """Stock vLLM runs it; the group vLLM made for it is what the scheduler's last check
    (for a model whose config passed) refuses, by its kind."""
    from kvclaims.vllm.engine import VllmEngine
    from kvclaims.vllm.model_dir import tiny_sliding_model_dir
    from kvclaims.vllm.pool import PoolView

    engine = VllmEngine(integration=False, model=str(tiny_sliding_model_dir()), **SHAPE)
    assert engine.run("r", list(range(3, 3 + 5 * engine.B))).finish_reason == "length"
    err = refused(PoolView.check_groups, engine.scheduler.kv_cache_manager)
    assert err.field == "model" and "groups are ['SlidingWindowSpec']" in str(err), err


def second_engine_refuses_a_trace_file(tmp: Path) -> None:
    """A second engine on a trace file the first writes is refused; the first's trace is
    untouched and checks clean."""
    from kvclaims.conformance.checker import check_file
    from kvclaims.vllm.engine import VllmEngine

    first = VllmEngine(trace=str(tmp / "claims-{dp_rank}.jsonl"))
    path = tmp / "claims-0.jsonl"
    written = path.read_text()
    err = refused(VllmEngine, trace=str(path))
    assert err.field == "kvclaims.trace" and "held by another trace writer" in str(err), err
    assert path.read_text() == written
    first.run("r", list(range(3, 3 + 2 * first.B)))
    report = check_file(path)
    assert report.ok and report.requests["r"]["status"] == "finished", report.violations


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    globals()[sys.argv[1]](Path(sys.argv[2]))

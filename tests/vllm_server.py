"""vLLM's OpenAI-compatible server with the integration switched on by engine arguments and
its front end (`kvclaims.vllm.frontend`), on loopback, for the server test modules.

A start costs 30-60 s here, so each module starts one (a module-scoped fixture that
`yield from serve(...)`) and its tests share it in order. Requests go over plain HTTP
(`Server.post`), so tests see status codes and error bodies exactly as clients do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from kvclaims.vllm.model_dir import tiny_model_dir

READY_S = 300
SCHEDULER = "kvclaims.vllm.scheduler.ClaimsScheduler"
MIDDLEWARE = "kvclaims.vllm.frontend.ClaimsMiddleware"


@dataclass
class Server:
    base: str
    model: str
    trace: Path

    def post(
        self,
        body: dict[str, Any],
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/v1/completions",
        timeout: float = 120,
    ) -> tuple[int, dict[str, Any]]:
        """POST `body` (the model filled in); the status and the JSON answer, errors included."""
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps({"model": self.model, **body}).encode(),
            method="POST",
            headers={
                "content-type": "application/json",
                **({"authorization": f"Bearer {key}"} if key else {}),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def call(
        self, method: str, path: str, *, key: str | None = None, timeout: float = 60
    ) -> tuple[int, dict[str, Any]]:
        """`method` on `path` with no body (the claim endpoints); the status and the JSON answer."""
        req = urllib.request.Request(
            self.base + path, method=method, headers={"authorization": f"Bearer {key}"} if key else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def complete(
        self, prompt: list[int], *, key: str | None = None, headers: dict[str, str] | None = None, **xargs: Any
    ) -> tuple[int, dict[str, Any]]:
        """One greedy token for `prompt`, with these ``vllm_xargs``."""
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, **({"vllm_xargs": xargs} if xargs else {})}
        return self.post(body, key=key, headers=headers)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.trace.read_text().splitlines()]

    def metrics(self, name: str) -> dict[str, float]:
        """One series of /metrics (multiprocess: the engine core's claim metrics joined in),
        by its label value."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
            key = next(v for k, v in labels.items() if k != "dp_rank")
            out[key] = out.get(key, 0.0) + float(m[2])  # (summed over the ranks)
        return out


def serve(
    tmp_path_factory,
    *args: str,
    env: dict[str, str] | None = None,
    trace: str = "trace.jsonl",
    model: Path | None = None,
    **kvclaims: Any,
) -> Iterator[Server]:
    """Start a server (the probe's pool: 80 blocks of 32 tokens) with these
    ``additional_config["kvclaims"]`` settings, extra CLI `args` and `env`, its trace at
    `trace` in a fresh directory (``{dp_rank}`` in it: one per data-parallel rank); stop it
    after. `model`: a model directory with a tokenizer (`demo_model_dir`; default: the
    tiny model, served without one)."""
    tmp = tmp_path_factory.mktemp("vllm-server")
    (tmp / "prom").mkdir()
    tokenizer = model is not None
    model, port = str(model or tiny_model_dir()), _port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        model,
        *([] if tokenizer else ["--skip-tokenizer-init"]),
        "--enable-prefix-caching",
        "--block-size",
        "32",
        "--num-gpu-blocks-override",
        "81",
        "--max-model-len",
        "2560",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.3",
        "--enable-prompt-tokens-details",
        "--no-async-scheduling",
        "--scheduler-cls",
        SCHEDULER,
        "--middleware",
        MIDDLEWARE,
        "--additional-config",
        json.dumps({"kvclaims": {"trace": str(tmp / trace), **kvclaims}}),
        *args,
    ]
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base, log_path)
        yield Server(base, model, tmp / trace)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {READY_S}s:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

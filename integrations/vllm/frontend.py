"""The integration's HTTP front end: an ASGI middleware for vLLM's OpenAI-compatible server,
switched on with ``--middleware kvclaims.vllm.frontend.ClaimsMiddleware``.

The API server and the engine core (where the scheduler keeps the claim book) are
separate processes, and all that reaches the scheduler of an HTTP request is its body.
So the front end does what needs the HTTP request itself, on ``/v1/completions`` and
``/v1/chat/completions``:

- **Tenants** (``additional_config["kvclaims"]["tenants"]`` on). The tenant comes from
  the request's credentials: the configured ``tenant_header`` (set by an authenticating
  gateway in front), else the bearer API key (as ``key-`` and 16 hex digits of its
  SHA-256, so no key is ever written down), else ``anonymous``. It is written into
  the claim arguments with its seal (`xargs.seal`), overwriting whatever the client
  put there; the engine takes no tenant without a seal, so no client can act as
  another tenant, here or through another route (vLLM's ``/invocations`` takes the
  same bodies, unauthenticated).
- **Bad payloads answer 400.** Claim arguments are parsed here with the engine's own
  parser, and a bad one is answered at once, the field named, before the engine sees
  it. What only the claim book can judge (a duplicate id, an unknown or ended claim,
  another tenant's claim) the engine judges: it finishes the request with nothing
  applied and its error under ``kv_transfer_params``, and the front end answers 400
  (403 for another tenant's claim) instead of the completion. An exception in the
  engine core is no way to say it: vLLM answers those with a bare 500 and stops the
  engine. Token ids outside the vocabulary are refused too, in every request: vLLM
  checks them only when it has a tokenizer, and without one a bad id stops the engine.

Claim operations need a response body to report on (their claims' states, refusals,
rejections), so they are refused on a streamed request: vLLM drops a streamed
request's last chunk when it carries no token, which a refusal never does.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvclaims.errors import BadArgument, KVClaimsError
from kvclaims.vllm.xargs import ANONYMOUS, PREFIX, RequestOps, parse, rejection, seal, server_key

PATHS = ("/v1/completions", "/v1/chat/completions")


def key_tenant(api_key: str) -> str:
    """The tenant of a bearer API key (quotas name tenants this way)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


def tenant_of(headers: Headers, header: str | None) -> str:
    """The tenant of a request: its `header` value when one is configured, else its
    bearer key's, else anonymous."""
    if header:
        return headers.get(header) or ANONYMOUS
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key_tenant(key.strip()) if scheme.lower() == "bearer" and key.strip() else ANONYMOUS


class ClaimsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"].removeprefix(scope.get("root_path", "")) not in PATHS
        ):
            return await self.app(scope, receive, send)
        body = await _body(receive)
        payload = _json(body)
        if not isinstance(payload, dict):  # not ours to judge: vLLM answers it
            return await self.app(scope, _replay(body, receive), send)
        config = scope["app"].state.vllm_config
        try:
            _in_vocabulary(payload.get("prompt"), config.model_config.get_vocab_size())
            claims = _claim_args(payload, (config.additional_config or {}).get("kvclaims") or {}, Headers(scope=scope))
        except KVClaimsError as exc:
            return await _error(send, rejection(exc))
        if not claims:
            return await self.app(scope, _replay(body, receive), send)
        body = json.dumps(payload).encode()
        await self.app(_with_length(scope, len(body)), _replay(body, receive), _Answer(send))


def _claim_args(payload: dict, cfg: dict, headers: Headers) -> bool:
    """Stamp the tenant into the body's claim arguments and check them (False: it has none)."""
    xargs = payload.get("vllm_xargs")
    if not isinstance(xargs, dict) or not any(k.startswith(PREFIX) for k in xargs):
        return False
    key = server_key(bool(cfg.get("tenants")))
    if key:
        tenant = tenant_of(headers, cfg.get("tenant_header"))
        xargs.update({PREFIX + "tenant": tenant, PREFIX + "seal": seal(key, tenant)})
    _one_completion(payload, parse(xargs, tenant_key=key))
    return True


def _in_vocabulary(prompt: Any, vocab: int) -> None:
    """Token ids of a prompt lie in the model's vocabulary. vLLM checks that only when it has
    a tokenizer; without one (``--skip-tokenizer-init``) a single bad id stops the engine,
    and every tenant's claims with it. (Non-numbers are left to vLLM's own 400.)"""
    batch = isinstance(prompt, list) and prompt and isinstance(prompt[0], list)
    for seq in prompt if batch else [prompt]:
        ids = (
            [t for t in seq if isinstance(t, (int, float)) and not isinstance(t, bool)] if isinstance(seq, list) else []
        )
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise BadArgument("prompt", f"token id {bad[0]} is out of the vocabulary [0, {vocab})")


class _Answer:
    """Passes a response on, unless it is the engine's rejection of the request: that
    answers with the rejection's status and error instead."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            return await self.send(message)
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(self.chunks)
        note = _rejected(self.start["status"], body)
        if note:
            return await _error(self.send, note)
        await self.send(self.start)
        await self.send({"type": "http.response.body", "body": body})


def _one_completion(payload: dict, ops: RequestOps) -> None:
    """Claim operations apply to one prompt and one completion, reported in the response
    body: a batch or ``n > 1`` would run them once per sequence (and the body reports only
    the first), and a stream has no body to report in."""
    if not (ops.claim or ops.release):
        return
    if payload.get("stream"):
        raise BadArgument("stream", "claim operations report in the response body: send them unstreamed")
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and isinstance(prompt[0], (str, list)):
        raise BadArgument("prompt", "claim operations apply to one prompt, not a batch")
    if payload.get("n") not in (None, 1):
        raise BadArgument("n", "claim operations apply to one completion (n=1)")


def _rejected(status: int, body: bytes) -> dict | None:
    doc = _json(body) if status == 200 else None
    params = doc.get("kv_transfer_params") if isinstance(doc, dict) else None
    note = params.get("kvclaims") if isinstance(params, dict) else None
    return note if isinstance(note, dict) and "status" in note else None


async def _error(send: Send, note: dict) -> None:
    """vLLM's own error body (``ErrorResponse``), with the kvclaims error type and field."""
    body = json.dumps(
        {"error": {"message": note["error"], "type": note["type"], "param": note["field"], "code": note["status"]}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": note["status"],
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not ours to judge: vLLM answers it
        return None


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, once; then the client's own messages (vLLM listens for a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}

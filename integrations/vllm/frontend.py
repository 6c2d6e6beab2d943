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
  applied, and the front end answers 400 (403 for another tenant's claim) instead of
  the completion (`kvclaims.vllm.streams`). Token ids outside the vocabulary are
  refused too, in every request: vLLM checks them only when it has a tokenizer, and
  without one a bad id stops the engine.
- **What the engine decided reaches the client**, streamed or not, per choice
  (`kvclaims.vllm.streams`, from `kvclaims.vllm.outcomes`); with
  ``kvclaims.refusal_status`` a refused request answers that status.
- **Client ids.** Each request gets the id its client sees (``cmpl-…``/``chatcmpl-…``,
  from ``X-Request-Id`` when the client sends one) as ``kvclaims_client``, which the
  trace records beside vLLM's internal id.
- **Data parallel**: claim-affine routing (`kvclaims.vllm.routing`).

It also serves the claim endpoints (`kvclaims.vllm.httpclaims`) under
``/v1/kvclaims/``. The front end's own answers (the endpoints, an early 400) need the
API key vLLM's ``--api-key`` asks for, checked by vLLM's own middleware code, since
``--middleware`` runs outside vLLM's authentication.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from urllib.parse import quote
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvclaims.errors import BadArgument, KVClaimsError
from kvclaims.model.names import EVENT, STATE
from kvclaims.vllm.control import Control
from kvclaims.vllm.outcomes import Outcomes
from kvclaims.vllm.routing import Routes
from kvclaims.vllm.streams import Answer, error_response
from kvclaims.vllm.xargs import ANONYMOUS, CLIENT_ID, PREFIX, RequestOps, parse, rejection, seal, server_key

PATHS = {"/v1/completions": "cmpl", "/v1/chat/completions": "chatcmpl"}
CLAIMS = "/v1/kvclaims/"
LIVE = (STATE.accepted, STATE.materialized)  # the states a request's new claim can be in when it is answered
RANK_HEADER = "x-data-parallel-rank"  # vLLM's (`OpenAIServing._get_data_parallel_rank`)


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


@dataclass
class Front:
    """The front end's state in one API server process, built on its first request."""

    cfg: dict[str, Any]
    key: bytes | None
    vocab: int
    outcomes: Outcomes
    control: Control
    routes: Routes
    engine: Any
    api_keys: list[str]
    served_model: str

    @classmethod
    def of(cls, app: Any) -> Front:
        front = getattr(app.state, "kvclaims_front", None)
        if front is None:
            config, engine = app.state.vllm_config, app.state.engine_client
            cfg = (config.additional_config or {}).get("kvclaims") or {}
            key = server_key(bool(cfg.get("tenants")))
            size = config.parallel_config.data_parallel_size
            outcomes = Outcomes()
            outcomes.install(engine)
            args = getattr(app.state, "args", None)
            from vllm import envs

            api_keys = [k for k in ((getattr(args, "api_key", None) or []) or [envs.VLLM_API_KEY]) if k]
            front = cls(
                cfg,
                key,
                config.model_config.get_vocab_size(),
                outcomes,
                Control(engine, size, key),
                Routes(size, config.cache_config.block_size),
                engine,
                api_keys,
                _served(config.model_config),
            )
            app.state.kvclaims_front = front
        return front

    def authorized(self, scope: Scope) -> bool:
        """Does the request carry an API key vLLM's ``--api-key`` accepts (or none is asked)?"""
        if not self.api_keys:
            return True
        from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

        return AuthenticationMiddleware(None, self.api_keys).verify_token(Headers(scope=scope))  # type: ignore[arg-type]

    def tenant(self, headers: Headers) -> str:
        return tenant_of(headers, self.cfg.get("tenant_header")) if self.key else ANONYMOUS


class ClaimsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path.startswith(CLAIMS):
            from kvclaims.vllm.httpclaims import serve_claims

            front = Front.of(scope["app"])
            if not front.authorized(scope):
                return await self.app(scope, receive, send)  # vLLM answers 401
            return await serve_claims(front, scope, receive, send, path.removeprefix(CLAIMS))
        if scope["method"] != "POST" or path not in PATHS:
            return await self.app(scope, receive, send)
        front = Front.of(scope["app"])
        body = await _body(receive)
        payload = _json(body)
        if not isinstance(payload, dict) or not front.authorized(scope):  # not ours to judge: vLLM answers it
            return await self.app(scope, _replay(body, receive), send)
        headers = Headers(scope=scope)
        try:
            _in_vocabulary(payload.get("prompt"), front.vocab)
            ops = _claim_args(payload, front, headers)
        except KVClaimsError as exc:
            return await _error(send, rejection(exc))
        kind, base = PATHS[path], headers.get("x-request-id") or uuid.uuid4().hex
        _stamp_client(payload, f"{kind}-{base}")
        try:
            rank = await _route(front, payload, ops, headers)
        except KVClaimsError as exc:
            return await _error(send, rejection(exc))
        body = json.dumps(payload).encode()
        scope = _with_headers(scope, len(body), base, rank)
        if ops and ops.claim and ops.claim.ttl_s is not None:
            front.control.tick_at(rank, time.time() + ops.claim.ttl_s)
        answer = _answer(send, front, payload, kind, base, lambda outcomes: _learn(front, ops, rank, outcomes))
        try:
            await self.app(scope, _replay(body, receive), answer)
        except Exception:
            if not await answer.recover():
                raise


def _stamp_client(payload: dict, client_id: str) -> None:
    """The id the client sees goes to the engine with the request (`kvclaims_client`)."""
    xargs = payload.setdefault("vllm_xargs", {})
    if isinstance(xargs, dict):
        xargs[PREFIX + "client"] = printable(client_id)


def _answer(send: Send, front: Front, payload: dict, kind: str, base: str, finished: Any) -> Answer:
    """The response's rewriter: the engine ids of its choices are vLLM's (``cmpl-<id>-<prompt>``
    per prompt of a completion, ``chatcmpl-<id>`` for a chat)."""
    ids = [f"{kind}-{base}-{i}" for i in range(_prompts(payload))] if kind == "cmpl" else [f"{kind}-{base}"]
    return Answer(
        send,
        front.outcomes,
        ids,
        n=_choices(payload),
        chat=kind == "chatcmpl",
        refusal_status=front.cfg.get("refusal_status", 200),
        finished=finished,
        model=str(payload.get("model") or front.served_model),
        client_id=f"{kind}-{base}",
    )


def printable(client_id: str) -> str:
    """The client's id as the trace can hold it (`xargs.CLIENT_ID`): as it is when it is
    printable ASCII without spaces, else its bytes percent-encoded (an ``X-Request-Id`` is
    any header value), cut at 256 characters."""
    if CLIENT_ID.fullmatch(client_id):
        return client_id
    return quote(client_id.encode("latin-1", "replace"), safe="")[:256]


def _claim_args(payload: dict, front: Front, headers: Headers) -> RequestOps | None:
    """Stamp the tenant into the body's claim arguments and check them (None: it has none)."""
    xargs = payload.get("vllm_xargs")
    if not isinstance(xargs, dict) or not any(k.startswith(PREFIX) for k in xargs):
        return None
    if front.key:
        tenant = front.tenant(headers)
        xargs.update({PREFIX + "tenant": tenant, PREFIX + "seal": seal(front.key, tenant)})
    ops = parse(xargs, tenant_key=front.key)
    if ops.query is not None:
        raise BadArgument(PREFIX + "query", f"claims are read over HTTP at {CLAIMS}claims")
    _one_completion(payload, ops)
    return ops


async def _route(front: Front, payload: dict, ops: RequestOps | None, headers: Headers) -> int | None:
    """The data-parallel rank the request goes to (None: vLLM chooses; `kvclaims.vllm.routing`)."""
    routes, given = front.routes, headers.get(RANK_HEADER)
    if routes.size <= 1:
        return None
    ids = [ops.claim.claim_id] if ops and ops.claim else []
    ids += list(ops.release) if ops else []
    tenant = ops.tenant if ops else ANONYMOUS
    ranks = {await rank_of(front, cid, tenant) for cid in ids}
    known = {r for r in ranks if r is not None}
    if len(known) > 1:
        raise BadArgument(
            PREFIX + EVENT.release, "these claims live on different data-parallel ranks: one request each"
        )
    rank: int | None
    if known:
        rank = known.pop()
    else:
        claimed = routes.claimed(_tokens(front, payload))
        rank = (
            routes.rank_of[claimed]
            if claimed
            else int(given)
            if given and given.isdigit()
            else routes.emptiest()
            if ops and ops.claim
            else None
        )
    if ops and ops.claim and rank is not None:
        routes.learn(ops.claim.claim_id, rank, _tokens(front, payload), ops.claim.blocks)
    return rank


async def rank_of(front: Front, claim: str, tenant: str) -> int | None:
    """The rank holding `claim`: known here, or found by asking every rank (a claim made
    through another API server process); None: no rank has it, or there is no data
    parallelism."""
    if front.routes.size <= 1:
        return None
    if claim in front.routes.rank_of:
        return front.routes.rank_of[claim]
    for rank in range(front.routes.size):
        note = await front.control.ask(rank, claim, tenant)
        if "answer" in note or note.get("type") == "NotOwner":
            front.routes.learn(claim, rank)
            return rank
    return None


def _tokens(front: Front, payload: dict) -> list[int] | None:
    """The first prompt's token ids, for prefix routing: as given, or a text prompt through
    the served tokenizer (None: not known here)."""
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return prompt
    if isinstance(prompt, str):
        try:
            tokenizer = front.engine.get_tokenizer()
            return list(tokenizer.encode(prompt, add_special_tokens=payload.get("add_special_tokens", True)))
        except Exception:  # no tokenizer (--skip-tokenizer-init): routed by claim operations only
            return None
    return None


def _learn(front: Front, ops: RequestOps | None, rank: int | None, outcomes: dict[int, dict[str, Any]]) -> None:
    """After the answer: a claim that was not made, or was released, routes nothing more."""
    if not ops or front.routes.size <= 1:
        return
    note = next((o["kvclaims"] for o in outcomes.values() if o.get("kvclaims")), None) or {}
    states = note.get("claims") or {}
    if ops.claim and note.get("type") != "DuplicateId" and states.get(ops.claim.claim_id) not in LIVE:
        front.routes.forget(ops.claim.claim_id)  # (a duplicate id names someone's live claim)
    for cid in ops.release:
        if states.get(cid) == STATE.released:
            front.routes.forget(cid)


def _served(model_config: Any) -> str:
    """The name the server answers as (``--served-model-name``, else the model path)."""
    name = model_config.served_model_name or model_config.model
    return str(name[0] if isinstance(name, list) else name)


def _choices(payload: dict) -> int:
    """``n``, the completions per prompt (vLLM answers a bad one with its own 400)."""
    n = payload.get("n")
    return n if type(n) is int and n > 0 else 1


def _prompts(payload: dict) -> int:
    prompt = payload.get("prompt")
    return len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)) else 1


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


def _one_completion(payload: dict, ops: RequestOps) -> None:
    """Claim operations apply to one prompt and one completion: a batch or ``n > 1`` would
    run them once per sequence."""
    if not (ops.claim or ops.release):
        return
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and isinstance(prompt[0], (str, list)):
        raise BadArgument("prompt", "claim operations apply to one prompt, not a batch")
    if payload.get("n") not in (None, 1):
        raise BadArgument("n", "claim operations apply to one completion (n=1)")


async def _error(send: Send, note: dict) -> None:
    """A rejection (`xargs.rejection`) in vLLM's own error body."""
    await error_response(send, note["status"], {"message": note["error"], "type": note["type"], "param": note["field"]})


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


def _with_headers(scope: Scope, length: int, request_id: str, rank: int | None) -> Scope:
    """The scope with the rewritten body's length, the request id vLLM is to use, and the
    data-parallel rank when routed."""
    drop = {b"content-length", b"x-request-id"} | ({RANK_HEADER.encode()} if rank is not None else set())
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
    headers += [(b"content-length", str(length).encode()), (b"x-request-id", request_id.encode("latin-1"))]
    if rank is not None:
        headers.append((RANK_HEADER.encode(), str(rank).encode()))
    return {**scope, "headers": headers}

"""Claims over HTTP: the front end's endpoints under ``/v1/kvclaims/``, owner-only.

| method and path | answer |
|---|---|
| ``GET /v1/kvclaims/claims`` | the caller's live claims, every rank's: ``{"object": "list", "data": [claim, ...]}`` |
| ``GET /v1/kvclaims/claims/ID`` | one claim, live or ended (`kvclaims.vllm.queries.claim_info`) |
| ``DELETE /v1/kvclaims/claims/ID`` | release it (at once: no request is admitted for it) |
| ``GET /v1/kvclaims/events`` | server-sent events: the caller's claims' lifecycle events as they happen |

The caller is the tenant of its credentials (`kvclaims.vllm.frontend.tenant_of`;
everyone is ``anonymous`` without tenants). Another tenant's claim answers 403
(``NotOwner``), an unknown one 404, an illegal move (releasing an ended claim) 400,
each in vLLM's error body. The claim answers come from the engines through control
requests (`kvclaims.vllm.control`); the events from the engines' traces
(`kvclaims.vllm.events`), so they need ``kvclaims.trace`` (404 without).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from kvclaims.model.names import EVENT, STATE
from kvclaims.vllm.streams import error_response
from kvclaims.vllm.xargs import ALL, NAME

if TYPE_CHECKING:
    from kvclaims.vllm.frontend import Front

STATUS = {"UnknownId": 404, "NotOwner": 403}
LIVENESS_S = 1.0  # how often an open event stream looks whether the engines are still up
METHODS = {"claims": "GET", "events": "GET", "claims/": "GET, DELETE"}


async def serve_claims(front: Front, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
    tenant = front.tenant(Headers(scope=scope))
    method = scope["method"]
    if rest == "events" and method == "GET":
        return await _events(front, scope, receive, send, tenant)
    if rest == "claims" and method == "GET":
        data = []
        for rank in front.control.ranks():
            note = await front.control.ask(rank, ALL, tenant)
            data += note.get("answer", {}).get("claims", [])
        return await _json(send, 200, {"object": "list", "data": data})
    if rest.startswith("claims/") and method in ("GET", "DELETE"):
        return await _one(front, send, unquote(rest.removeprefix("claims/")), tenant, release=method == "DELETE")
    allowed = METHODS.get(rest) or (METHODS["claims/"] if rest.startswith("claims/") else None)
    if allowed:
        error = {"message": f"{method} is not allowed on /v1/kvclaims/{rest}: {allowed}", "type": "MethodNotAllowed"}
        return await error_response(send, 405, {**error, "param": None}, [(b"allow", allowed.encode())])
    await error_response(
        send, 404, {"message": f"no such endpoint: /v1/kvclaims/{rest}", "type": "NotFound", "param": None}
    )


async def _one(front: Front, send: Send, claim: str, tenant: str, release: bool) -> None:
    from kvclaims.vllm.frontend import rank_of

    if not NAME.fullmatch(claim):
        return await error_response(send, 400, _bad_id(claim))
    rank = await rank_of(front, claim, tenant)
    note = await front.control.ask(rank, claim, tenant, **({EVENT.release: claim} if release else {}))
    if "answer" not in note:
        status = STATUS.get(note.get("type", ""), note.get("status", 400))
        return await error_response(
            send, status, {"message": note.get("error", "no answer"), "type": note.get("type"), "param": "claim"}
        )
    (info,) = note["answer"]["claims"]
    if release and info["state"] == STATE.released:
        front.routes.forget(claim)
    await _json(send, 200, info)


async def _events(front: Front, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
    from kvclaims.vllm.events import ClaimEvents, trace_paths

    trace = front.cfg.get("trace")
    if not trace:
        return await error_response(
            send,
            404,
            {
                "message": "claim events are read from the trace: start with kvclaims.trace",
                "type": "NotFound",
                "param": None,
            },
        )
    query = parse_qs(scope.get("query_string", b"").decode())
    claims = set(query["claim"]) if "claim" in query else None
    bad = sorted(c for c in claims or () if not NAME.fullmatch(c))
    if bad:
        return await error_response(send, 400, _bad_id(bad[0]))
    replay = query.get("replay", ["0"])[0] in ("1", "true")
    paths = trace_paths(trace, front.control.size)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    stream = ClaimEvents(paths).stream(tenant, replay=replay, claims=claims)
    gone = asyncio.ensure_future(_disconnect(receive))
    nxt: asyncio.Future | None = None
    try:
        while not front.engine.errored:  # (the server is shutting down: the stream ends)
            nxt = nxt or asyncio.ensure_future(anext(stream))
            await asyncio.wait({nxt, gone}, timeout=LIVENESS_S, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                return
            if nxt.done():
                await send({"type": "http.response.body", "body": nxt.result(), "more_body": True})
                nxt = None
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()
        if nxt is not None:
            nxt.cancel()
            await asyncio.gather(nxt, return_exceptions=True)  # (it has stopped before the stream closes)
        await stream.aclose()


def _bad_id(claim: str) -> dict[str, Any]:
    return {
        "message": f"claim ids are 1 to 256 ASCII letters, digits or ._@/+=~-, got {claim!r}",
        "type": "BadArgument",
        "param": "claim",
    }


async def _disconnect(receive: Receive) -> None:
    """Returns once the client has gone (an SSE client ends its stream by disconnecting)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(send: Send, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

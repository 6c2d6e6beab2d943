"""The front end's answer to a completion or chat request: vLLM's response, with what
the integration decided put where clients see it (`kvclaims.vllm.outcomes` keeps it).

- **Streams.** A refused (or rejected) choice produces no token, so vLLM sends no chunk
  for it; the client saw ``data: [DONE]`` alone. The answer adds, before the usage
  chunk or ``[DONE]``, a last chunk for each choice that got none, carrying
  ``finish_reason``, ``stop_reason`` (naming the blocking claims) and ``kvclaims``.
- **Per choice.** Every choice the integration decided on carries ``kvclaims`` (batched
  prompts and ``n`` > 1 alike; vLLM's response-level ``kv_transfer_params`` holds the
  first prompt's only).
- **Errors.** A rejected request (claim operations the book refuses: a duplicate id,
  another tenant's claim) answers 400 or 403 with vLLM's error body, streamed or not.
  With ``kvclaims.refusal_status`` set (e.g. 409), a request every choice of which was
  refused answers that status instead of 200, the blocking claims in the error body.

The head of a stream (chunks without a token, such as a chat stream's role chunk) is
held back until a token or a finish arrives, so a request that ends before its first
token can still be answered with an error status; it costs no time to first token.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

from starlette.types import Message, Send

from kvclaims.vllm.outcomes import Outcomes

Finished = Callable[[dict[int, dict[str, Any]]], None]


class Answer:
    """Wraps ASGI `send` for one request. `ids`: the engine's request id of each prompt
    (choice ``i`` of prompt ``p`` is index ``p * n + i``); `chat`: a chat completion;
    `refusal_status`: the status of an all-refused request (200: vLLM's own answer);
    `finished` gets every choice's outcome once the response is complete."""

    def __init__(
        self,
        send: Send,
        outcomes: Outcomes,
        ids: list[str],
        *,
        n: int,
        chat: bool,
        refusal_status: int,
        finished: Finished,
        model: str = "",
        client_id: str = "",
    ) -> None:
        self.client_id = client_id
        self.send, self.outcomes, self.ids, self.n, self.chat = send, outcomes, ids, n, chat
        self.sent = False  # has any of the answer gone out?
        self.refusal_status, self.finished = refusal_status, finished
        self.start: Message | None = None
        self.stream = False
        self.held: list[bytes] | None = []  # the stream's head, until it is sent (then None)
        self.pending = ""  # an SSE event not yet complete
        self.body: list[bytes] = []
        self.ended: set[Any] = set()  # choices whose finish went out
        self.shape: dict[str, Any] = {"model": model}  # id, created, model of the stream's chunks

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            ctype = dict(message.get("headers", [])).get(b"content-type", b"")
            self.stream = message["status"] == 200 and ctype.startswith(b"text/event-stream")
            return
        if message["type"] != "http.response.body" or self.start is None:
            return await self.send(message)
        if self.stream:
            return await self._stream(message)
        self.body.append(message.get("body", b""))
        if not message.get("more_body"):
            await self._whole(b"".join(self.body))

    # ------------------------------------------------------------------ whole responses
    async def recover(self) -> bool:
        """vLLM's serving code raised before answering. When the integration ended every
        choice unrun, that is a failure on a request that did not run (echo with logprobs
        indexes the prompt logprobs a refused prompt never got): answer its outcome instead
        (True). False: not that, or part of an answer went out already; the caller re-raises."""
        if self.sent or not self._decided(self._outcomes(keep=True)):
            return False
        self.start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
        await self._whole(b"", unrun=True)
        return True

    async def _whole(self, body: bytes, unrun: bool = False) -> None:
        assert self.start is not None
        outcomes = self._outcomes()
        self.finished(outcomes)
        doc = self._unrun(outcomes) if unrun else _json(body) if self.start["status"] == 200 else None
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
            return await self._pass(body)
        error = self._error(outcomes, any(_text(c) for c in doc["choices"]))
        if error:
            self.sent = True
            return await error_response(self.send, *error)
        for choice in doc["choices"]:
            if isinstance(choice, dict) and choice.get("index") in outcomes:
                choice["kvclaims"] = outcomes[choice["index"]]["kvclaims"]
        await self._pass(json.dumps(doc).encode())

    def _decided(self, outcomes: dict[int, dict[str, Any]]) -> bool:
        """Did the integration end every choice unrun (refused or rejected)?"""
        notes = [(outcomes.get(i) or {}).get("kvclaims") or {} for i in self._expected()]
        return all("refused" in n or "status" in n for n in notes)

    def _unrun(self, outcomes: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The response body of a request whose every choice ended unrun."""
        choices = []
        for i in sorted(outcomes):
            choice: dict[str, Any] = {"index": i, "logprobs": None, **outcomes[i]}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": ""}
            else:
                choice["text"] = ""
            choices.append(choice)
        return {
            "id": self.client_id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": self.shape["model"],
            "choices": choices,
            "usage": None,
        }

    async def _pass(self, body: bytes) -> None:
        assert self.start is not None
        self.sent = True
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        await self.send({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ streams
    async def _stream(self, message: Message) -> None:
        self.pending += message.get("body", b"").decode()
        *events, self.pending = self.pending.split("\n\n")
        for event in events:
            await self._event(event)
        if not message.get("more_body"):
            if self.pending.strip():
                await self._event(self.pending)
            await self._out(b"", more=False)

    async def _event(self, event: str) -> None:
        data = event.removeprefix("data: ").strip() if event.startswith("data: ") else None
        if self.held is None and data and _passes(data):
            return await self._out((event + "\n\n").encode())
        chunk = _json(data.encode()) if data and data != "[DONE]" else None
        if isinstance(chunk, dict) and "error" in chunk and self._decided(self._outcomes(keep=True)):
            return  # (vLLM's serving code failed on a choice the integration ended unrun: `recover`)
        if data == "[DONE]" or (isinstance(chunk, dict) and chunk.get("choices") == [] and chunk.get("usage")):
            if not await self._close():
                return
        elif isinstance(chunk, dict) and isinstance(chunk.get("choices"), list):
            self.shape |= {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
            for choice in chunk["choices"]:
                if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                    self.ended.add(choice.get("index"))
                    note = self._outcome(choice.get("index"))
                    if note:
                        choice["kvclaims"] = note["kvclaims"]
            event = "data: " + json.dumps(chunk)
            if self.held is not None and (any(_text(c) for c in chunk["choices"]) or self.ended):
                await self._flush()
        await self._out((event + "\n\n").encode())

    async def _close(self) -> bool:
        """Before the usage chunk or ``[DONE]``: answer with an error status if the request
        is one (False: the stream is over), else add the choices' missing last chunks."""
        if self.held is not None:
            error = self._error(self._outcomes(keep=True), False)
            if error:
                self.sent = True
                await error_response(self.send, *error)
                self.held, self.start = None, None
                self.finished(self._outcomes())
                return False
            await self._flush()
        for index in sorted(self._expected() - self.ended):
            note = self._outcome(index)
            if note:
                self.ended.add(index)
                await self._out(("data: " + json.dumps(self._last_chunk(index, note)) + "\n\n").encode())
        return True

    def _last_chunk(self, index: int, note: dict[str, Any]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "logprobs": None, **note}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        return {
            "id": self.shape.get("id", self.client_id),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.shape.get("created", int(time.time())),
            "model": self.shape.get("model", ""),
            "choices": [choice],
        }

    async def _flush(self) -> None:
        assert self.start is not None and self.held is not None
        self.sent = True
        held, self.held = self.held, None
        await self.send(self.start)
        for body in held:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def _out(self, body: bytes, more: bool = True) -> None:
        if self.start is None:  # answered with an error already
            return
        if self.held is not None and more:
            self.held.append(body)
            return
        if self.held is not None:
            await self._flush()
        await self.send({"type": "http.response.body", "body": body, "more_body": more})
        if not more:
            self.finished(self._outcomes())

    # ------------------------------------------------------------------ outcomes
    def _expected(self) -> set[int]:
        return set(range(len(self.ids) * self.n))

    def _outcome(self, index: Any) -> dict[str, Any] | None:
        if not isinstance(index, int) or not 0 <= index < len(self.ids) * self.n:
            return None
        return self.outcomes.kept.get(self.ids[index // self.n], {}).get(index % self.n)

    def _outcomes(self, keep: bool = False) -> dict[int, dict[str, Any]]:
        """Every choice's kept outcome, by choice index (forgotten there unless `keep`)."""
        out: dict[int, dict[str, Any]] = {}
        for p, rid in enumerate(self.ids):
            kept = self.outcomes.kept.get(rid, {}) if keep else self.outcomes.take(rid)
            out |= {p * self.n + i: o for i, o in kept.items()}
        return out

    def _error(self, outcomes: dict[int, dict[str, Any]], tokens: bool) -> tuple[int, dict[str, Any]] | None:
        """(status, error) when the request answers with an error: a rejected one, or one
        every choice of which was refused with `refusal_status` set (and no token sent)."""
        notes = [o["kvclaims"] or {} for o in outcomes.values()]
        rejected = next((n for n in notes if "status" in n), None)
        if rejected:
            return rejected["status"], {
                "message": rejected["error"],
                "type": rejected["type"],
                "param": rejected["field"],
            }
        refused = [n for n in notes if n.get("refused")]
        if self.refusal_status == 200 or tokens or len(refused) != len(self._expected()) or not refused:
            return None
        first = refused[0]
        claims = sorted({c for n in refused for c in n.get("blocking_claims", [])})
        return self.refusal_status, {
            "message": f"refused ({first['refused']})" + (f": blocked by claims {claims}" if claims else ""),
            "type": first["refused"],
            "param": None,
            "kvclaims": first if len(refused) == 1 else {"refused": first["refused"], "blocking_claims": claims},
        }


async def error_response(
    send: Send, status: int, error: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """vLLM's own error body (``ErrorResponse``: message, type, param, code). A claim's
    refusal or rejection is the same on a retry, so it says ``x-should-retry: false``
    (the `openai` client retries 409 and 5xx on its own otherwise)."""
    body = json.dumps({"error": {**error, "code": status}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-should-retry", b"false"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _passes(data: str) -> bool:
    """Can a chunk go out as it is, unparsed (once the head is out)? One that finishes no
    choice and is not the usage chunk or ``[DONE]``: every token's, so tokens stream at
    the cost of two substring searches. (vLLM writes its chunks as compact JSON.)"""
    return data != "[DONE]" and '"finish_reason":"' not in data and '"choices":[]' not in data


def _text(choice: Any) -> bool:
    """Does a choice (or a chunk's choice) carry generated output?"""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice.get("message") or {}
    return bool(choice.get("text") or choice.get("token_ids") or (isinstance(delta, dict) and delta.get("content")))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None

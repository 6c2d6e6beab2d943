"""The claim endpoints' event stream as an ASGI app sees it (no server): it ends when the
engines are gone, so a server shutting down is not held open by its subscribers (the
tester's input: SIGTERM waited forever on a connected `curl -N`), and a client that leaves
ends it cleanly."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette")

from kvclaims.trace import TraceWriter  # noqa: E402
from kvclaims.vllm import httpclaims  # noqa: E402


class Engine:
    def __init__(self) -> None:
        self.errored = False


def front_for(trace: str) -> SimpleNamespace:
    return SimpleNamespace(cfg={"trace": trace}, control=SimpleNamespace(size=1), engine=Engine())


def run(front, receive, timeout: float = 10) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        await asyncio.wait_for(httpclaims._events(front, {"query_string": b""}, receive, send, "anonymous"), timeout)

    asyncio.run(main())
    return sent


def test_the_stream_ends_when_the_engines_are_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(httpclaims, "LIVENESS_S", 0.05)
    path = tmp_path / "t.jsonl"
    TraceWriter(open(path, "w")).emit("runtime")
    front = front_for(str(path))

    async def receive() -> dict:
        await asyncio.sleep(0.3)
        front.engine.errored = True  # the server shuts down: its engine cores are gone
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    sent = run(front, receive)
    assert sent[0]["status"] == 200 and sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_client_that_leaves_ends_the_stream_without_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(httpclaims, "LIVENESS_S", 0.05)
    path = tmp_path / "t.jsonl"
    TraceWriter(open(path, "w")).emit("runtime")

    async def receive() -> dict:
        await asyncio.sleep(0.2)
        return {"type": "http.disconnect"}

    sent = run(front_for(str(path)), receive)
    assert sent[0]["status"] == 200

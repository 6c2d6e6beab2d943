"""`kvclaims.vllm.events.ClaimEvents`: an owner's server-sent event stream of its claims'
lifecycle events, tailed from the engines' trace files while they are written. Pure
Python: the traces are written here with the runtime's own `TraceWriter`."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, AsyncGenerator

import pytest

from kvclaims.model.names import EVENT, STATE
from kvclaims.trace import TraceWriter
from kvclaims.vllm.events import KEEPALIVE, ClaimEvents, trace_paths

POLL = 0.005


class Trace:
    """A trace file written record by record, flushed, as an engine writes it."""

    opened: list[Trace] = []  # closed after each test

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a", encoding="utf-8")
        self.writer = TraceWriter(self.fh, keep=False)
        Trace.opened.append(self)

    def submit(self, claim: str, **fields: Any) -> None:
        """`tenant` in `fields` when given (a missing one is the anonymous tenant)."""
        self.writer.emit("claim_submit", claim=claim, blocks=["h0", "h1"], strength="hard", **fields)

    def event(self, claim: str, event: str, state: str, **fields: Any) -> None:
        self.writer.emit("claim", claim=claim, event=event, state=state, **fields)

    def other(self) -> None:
        self.writer.emit("request_submit", request="r", tokens=3)

    def raw(self, text: str) -> None:
        self.fh.write(text)
        self.fh.flush()
        self.writer.seq += text.count("\n")


@pytest.fixture(autouse=True)
def _close_traces():
    yield
    while Trace.opened:
        Trace.opened.pop().fh.close()


class Reader:
    """Iterates a stream in a task, as the HTTP front end would, collecting its messages."""

    def __init__(self, gen: AsyncGenerator[bytes, None]) -> None:
        self.gen, self.got = gen, list[bytes]()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.gen:
            self.got.append(message)

    async def wait(self, n: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        """The first `n` messages (keepalives aside), parsed; fails after `timeout`."""
        async with asyncio.timeout(timeout):
            while len(self.events()) < n:
                await asyncio.sleep(POLL)
        return self.events()

    def events(self) -> list[dict[str, Any]]:
        return [parse(m) for m in self.got if m != KEEPALIVE]

    async def settle(self) -> list[dict[str, Any]]:
        """The messages after a few more polls: what a reader has when nothing more is coming."""
        await asyncio.sleep(POLL * 8)
        return self.events()

    async def close(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def done(self, n: int) -> list[dict[str, Any]]:
        """Once `n` messages came: every message when nothing more is coming, the reader closed."""
        await self.wait(n)
        got = await self.settle()
        await self.close()
        return got


def parse(message: bytes) -> dict[str, Any]:
    """One SSE message: its `id`, `event` and `data` (parsed)."""
    text = message.decode()
    assert text.endswith("\n\n") and text.count("\n") == 4, text
    fields = dict(line.split(": ", 1) for line in text.splitlines() if line)
    assert fields.keys() == {"id", "event", "data"}, text
    return {"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])}


def run(coro) -> Any:
    return asyncio.run(coro)


def test_events_written_after_the_call_reach_the_owner_in_order_with_ids(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice", policy="demote")  # seq 0: before the stream; ownership learned from it
    t.event("c1", EVENT.accept, STATE.accepted)  # seq 1

    async def main():
        events = ClaimEvents([path], poll_s=POLL, keepalive_s=60)
        gen = events.stream("alice")
        t.other()  # seq 2
        t.event("c1", EVENT.materialize, STATE.materialized)  # seq 3: after the call, before the first read
        r = Reader(gen)
        got = await r.wait(1)
        t.event("c1", EVENT.demote, STATE.demoted, reason="pressure")  # seq 4
        t.event("c1", EVENT.expire, STATE.expired)  # seq 5
        got = await r.wait(3)
        await r.close()
        return got

    got = run(main())
    assert [(m["id"], m["event"]) for m in got] == [
        ("0:3", EVENT.materialize),
        ("0:4", EVENT.demote),
        ("0:5", EVENT.expire),
    ]
    assert got[1]["data"] == {
        "schema_version": 1,
        "seq": 4,
        "time": 0,
        "kind": "claim",
        "claim": "c1",
        "event": EVENT.demote,
        "state": STATE.demoted,
        "reason": "pressure",
        "dp_rank": 0,
    }


def test_another_tenants_claims_never_appear(tmp_path):
    p0, p1 = tmp_path / "t0.jsonl", tmp_path / "t1.jsonl"
    t0, t1 = Trace(p0), Trace(p1)

    async def main():
        alice = Reader(ClaimEvents([p0, p1], poll_s=POLL, keepalive_s=60).stream("alice", replay=True))
        anon = Reader(ClaimEvents([p0, p1], poll_s=POLL, keepalive_s=60).stream("anonymous", replay=True))
        t0.submit("a1", tenant="alice")
        t0.submit("b1", tenant="bob")
        t0.submit("n1")  # no tenant: anonymous
        t0.submit("n2", tenant=None)
        t1.submit("a1", tenant="bob")  # the same id on another rank is another claim
        t0.event("b1", EVENT.accept, STATE.accepted)
        t1.event("a1", EVENT.accept, STATE.accepted)
        t0.event("n1", EVENT.accept, STATE.accepted)
        t0.event("a1", EVENT.accept, STATE.accepted)
        t0.event("a1", EVENT.release, STATE.released)
        t0.submit("a1", tenant="bob")  # the id again, now bob's: alice hears nothing more of it
        t0.event("a1", EVENT.accept, STATE.accepted)
        t0.event("a1", EVENT.harm, STATE.harmed)
        t0.submit("a2", tenant="alice")
        await alice.wait(4)
        await alice.settle()
        anon_got = await anon.wait(3)
        await alice.close()
        await anon.close()
        return alice.events(), anon_got

    alice, anon = run(main())
    assert [(m["id"], m["event"], m["data"]["claim"]) for m in alice] == [
        ("0:0", "submit", "a1"),
        ("0:6", EVENT.accept, "a1"),
        ("0:7", EVENT.release, "a1"),
        ("0:11", "submit", "a2"),
    ]
    assert all(m["data"].get("tenant") in ("alice", None) for m in alice)
    assert [(m["id"], m["event"], m["data"]["claim"]) for m in anon] == [
        ("0:2", "submit", "n1"),
        ("0:3", "submit", "n2"),
        ("0:5", EVENT.accept, "n1"),
    ]


def test_replay_yields_past_events(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice")
    t.event("c1", EVENT.accept, STATE.accepted)
    t.event("c1", EVENT.materialize, STATE.materialized)

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice", replay=True))
        await r.wait(3)
        t.event("c1", EVENT.offload, STATE.offloaded)
        got = await r.wait(4)
        await r.close()
        return got

    assert [(m["id"], m["event"]) for m in run(main())] == [
        ("0:0", "submit"),
        ("0:1", EVENT.accept),
        ("0:2", EVENT.materialize),
        ("0:3", EVENT.offload),
    ]


def test_a_partial_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice")
    line = json.dumps({"schema_version": 1, "seq": 1, "time": 3, "kind": "claim", "claim": "c1", "event": EVENT.accept})

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice"))
        t.raw(line[:20])  # the writer mid-line
        assert await r.settle() == []
        t.raw(line[20:-3])
        assert await r.settle() == []
        t.raw(line[-3:] + "\n")
        got = await r.wait(1)
        await r.close()
        return got

    got = run(main())
    assert [(m["id"], m["event"], m["data"]["time"]) for m in got] == [("0:1", EVENT.accept, 3)]


def test_a_file_that_appears_later_is_read(tmp_path):
    path = tmp_path / "t0.jsonl"

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice"))
        assert await r.settle() == []
        t = Trace(path)  # the engine starts: every record of the new file is new
        t.submit("c1", tenant="alice")
        t.event("c1", EVENT.accept, STATE.accepted)
        got = await r.wait(2)
        await r.close()
        return got

    assert [(m["id"], m["event"]) for m in run(main())] == [("0:0", "submit"), ("0:1", EVENT.accept)]


def test_two_ranks_are_merged_with_dp_rank(tmp_path):
    template = tmp_path / "t{dp_rank}.jsonl"
    paths = trace_paths(template, 2)
    assert paths == [tmp_path / "t0.jsonl", tmp_path / "t1.jsonl"]
    t0, t1 = Trace(paths[0]), Trace(paths[1])
    t1.other()

    async def main():
        r = Reader(ClaimEvents(paths, poll_s=POLL, keepalive_s=60).stream("alice"))
        t0.submit("x", tenant="alice")
        t1.submit("y", tenant="alice")
        await r.wait(2)
        t1.event("y", EVENT.accept, STATE.accepted)
        t0.event("x", EVENT.refuse, STATE.refused, reason="reserve")
        got = await r.wait(4)
        await r.close()
        return got

    got = run(main())
    assert sorted((m["id"], m["event"], m["data"]["claim"], m["data"]["dp_rank"]) for m in got) == [
        ("0:0", "submit", "x", 0),
        ("0:1", EVENT.refuse, "x", 0),
        ("1:1", "submit", "y", 1),
        ("1:2", EVENT.accept, "y", 1),
    ]
    for rank in (0, 1):  # each rank's events in its trace order
        ids = [m["id"] for m in got if m["data"]["dp_rank"] == rank]
        assert ids == sorted(ids, key=lambda i: int(i.split(":")[1]))


def test_a_keepalive_comment_is_sent_when_idle(tmp_path):
    path = tmp_path / "t0.jsonl"
    Trace(path).submit("c1", tenant="alice")

    async def main():
        gen = ClaimEvents([path], poll_s=POLL, keepalive_s=0.03).stream("alice")
        first = await asyncio.wait_for(anext(gen), 1)
        second = await asyncio.wait_for(anext(gen), 1)
        await gen.aclose()
        return first, second

    assert run(main()) == (KEEPALIVE, KEEPALIVE)
    assert KEEPALIVE == b": keepalive\n\n"


def test_the_claims_filter_keeps_only_the_named_claims(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice")
    t.submit("c2", tenant="alice")
    t.submit("c3", tenant="bob")

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice", claims={"c2", "c3"}))
        for c in ("c1", "c2", "c3"):
            t.event(c, EVENT.accept, STATE.accepted)
        return await r.done(1)

    assert [(m["id"], m["data"]["claim"]) for m in run(main())] == [("0:4", "c2")]  # c3 is bob's


def test_malformed_lines_are_skipped(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice")

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice"))
        base = {"schema_version": 1, "time": 0, "kind": "claim", "claim": "c1"}
        t.raw("not json at all {claim\n")
        t.raw("\n")
        t.raw('["claim"]\n')
        with open(path, "ab") as fh:
            fh.write(b"\xff claim\n")  # not UTF-8
        t.writer.seq += 1
        t.raw(json.dumps({**base, "seq": "x", "event": EVENT.accept}) + "\n")  # seq not an int
        t.raw(json.dumps({**base, "seq": 7, "schema_version": 2, "event": EVENT.accept}) + "\n")
        t.raw(json.dumps({**base, "seq": 8, "event": "accept\nevent: harm"}) + "\n")  # no injected SSE fields
        t.raw(json.dumps({**base, "seq": 9, "event": "nonesuch"}) + "\n")
        t.raw(json.dumps({**base, "seq": 9, "event": EVENT.accept, "state": ["x"]}) + "\n")
        t.raw(json.dumps({**base, "seq": 10, "event": EVENT.hit, "ttl_s": float("nan")}) + "\n")
        seq = t.writer.seq
        t.event("c1", EVENT.accept, STATE.accepted)
        got = await r.done(1)
        return got, seq

    got, seq = run(main())
    assert [(m["id"], m["event"]) for m in got] == [(f"0:{seq}", EVENT.accept)]


def test_a_claim_submit_that_names_another_tenant_takes_the_claim_away(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice")

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice"))
        t.raw(json.dumps({"seq": 1, "kind": "claim_submit", "claim": "c1", "tenant": "bob"}) + "\n")  # malformed
        t.event("c1", EVENT.accept, STATE.accepted)
        t.submit("c2", tenant="alice")
        return await r.done(1)

    assert [(m["id"], m["data"]["claim"]) for m in run(main())] == [("0:3", "c2")]


def test_a_new_trace_at_the_path_is_read_from_its_start(tmp_path):
    path = tmp_path / "t0.jsonl"
    t = Trace(path)
    t.submit("c1", tenant="alice")

    async def main():
        r = Reader(ClaimEvents([path], poll_s=POLL, keepalive_s=60).stream("alice"))
        t.event("c1", EVENT.accept, STATE.accepted)
        await r.wait(1)
        t.fh.close()
        path.rename(tmp_path / "old.jsonl")  # the server restarts with a new trace
        t2 = Trace(path)
        t2.event("c1", EVENT.expire, STATE.expired)  # an unknown claim in the new trace: not alice's
        t2.submit("c9", tenant="alice")
        return await r.done(2)

    assert [(m["id"], m["event"], m["data"]["claim"]) for m in run(main())] == [
        ("0:1", EVENT.accept, "c1"),
        ("0:1", "submit", "c9"),
    ]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_cancelling_or_closing_a_stream_closes_its_files(tmp_path):
    paths = [tmp_path / "t0.jsonl", tmp_path / "t1.jsonl"]
    for p in paths:
        Trace(p).submit("c1", tenant="alice")

    async def main():
        before = open_fds()
        events = ClaimEvents(paths, poll_s=POLL, keepalive_s=60)
        r = Reader(events.stream("alice", replay=True))  # the client disconnects: the task is cancelled
        await r.wait(2)
        assert open_fds() == before + 2
        await r.close()
        assert open_fds() == before
        gen = events.stream("alice", replay=True)  # or the front end closes the generator
        await anext(gen)
        await gen.aclose()
        assert open_fds() == before

    run(main())


def test_bad_intervals_are_refused():
    with pytest.raises(ValueError, match="positive"):
        ClaimEvents([], poll_s=0)
    with pytest.raises(TypeError, match="collection"):
        ClaimEvents([]).stream("alice", claims="c1")
    assert trace_paths("/x/t.jsonl", 1) == [Path("/x/t.jsonl")]

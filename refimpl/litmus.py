"""The litmus suite: small named scenarios, each with the outcome the contract requires.

A scenario drives a fresh runtime and records every expectation that does not
hold; its trace must then pass the checker. The nine paper outcomes keep the
paper's names.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from kvclaims.refimpl.checker import Report, check_lines
from kvclaims.refimpl.runtime import Runtime

B = 4  # tokens per block in every scenario: small, so the 80-block probe stays fast


@dataclass
class Run:
    device: Any
    failures: list[str] = field(default_factory=list)
    rt: Runtime | None = None

    def runtime(self, U: int, R: int = 0, host_blocks: int = 0) -> Runtime:
        self.rt = Runtime(U, B, R, host_blocks=host_blocks, device=self.device)
        return self.rt

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            self.failures.append(what)

    def seq_of(self, **match) -> list[int]:
        """Sequence numbers of trace records whose fields include `match`."""
        return [r["seq"] for r in self.rt.trace.records if all(r.get(k) == v for k, v in match.items())]


@dataclass
class Result:
    name: str
    expected: str
    passed: bool
    failures: list[str]
    report: Report
    trace: list[str] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "expected": self.expected, "passed": self.passed,
                "failures": self.failures, "records": self.report.records,
                "violations": len(self.report.violations)}


SCENARIOS: dict[str, tuple[str, Callable[[Run], None]]] = {}


def scenario(name: str, expected: str):
    def register(fn: Callable[[Run], None]):
        SCENARIOS[name] = (expected, fn)
        return fn
    return register


def tokens(blocks: int, seed: int) -> list[int]:
    """`blocks` whole blocks of token ids; different seeds never share a prefix."""
    return [seed * 100_000 + i for i in range(blocks * B)]


def run_scenario(name: str, device=None) -> Result:
    expected, fn = SCENARIOS[name]
    run = Run(device)
    try:
        fn(run)
    except Exception:  # a scenario that crashes fails, the suite goes on
        run.failures.append("raised: " + traceback.format_exc(limit=3))
    lines = run.rt.trace.lines() if run.rt else []
    report = check_lines(lines)
    failures = run.failures + [f"checker: seq {v.seq}: {v.kind}: {v.message}" for v in report.violations]
    return Result(name, expected, not failures, failures, report, lines)


def run_all(device=None) -> list[Result]:
    return [run_scenario(n, device) for n in SCENARIOS]


def _warm(rt: Runtime, rid: str, toks: list[int], admit: bool = True) -> None:
    """A request that computes `toks` and ends, leaving them cached (or not, under no-admit)."""
    rt.submit_request(rid, toks)
    rt.finish(rid, admit=admit)


@scenario("ordinary_eviction", "an unclaimed cached prefix is evicted LRU; a materialized claim beside it is untouched")
def _ordinary_eviction(t: Run) -> None:
    rt = t.runtime(U=8)
    P = tokens(2, 1)
    rt.submit_claim("c", P)
    _warm(rt, "warm", P)
    _warm(rt, "x", tokens(3, 2))
    t.expect(rt.submit_request("y", tokens(5, 3)).outcome == "admit", "y admitted")
    t.expect(len(t.seq_of(kind="block_evict", reason="lru")) == 1, "one LRU eviction of x's blocks")
    t.expect(rt.claim_state("c") == "materialized", "claim untouched")
    t.expect(rt.verify_request("y"), "y's KV verifies")


@scenario("soft_priority", "pressure demotes the lower-priority soft claim first, its event before its blocks go")
def _soft_priority(t: Run) -> None:
    rt = t.runtime(U=8)
    rt.submit_claim("lo", tokens(2, 1), strength="soft", priority=0)
    rt.submit_claim("hi", tokens(2, 2), strength="soft", priority=5)
    _warm(rt, "a", tokens(2, 1))
    _warm(rt, "b", tokens(2, 2))
    t.expect(rt.submit_request("z", tokens(6, 3)).outcome == "admit", "z admitted")
    t.expect(rt.claim_state("lo") == "demoted" and rt.claim_state("hi") == "materialized",
             "lo demoted, hi kept")
    demote = t.seq_of(kind="claim", claim="lo", event="demote")
    t.expect(bool(demote) and demote[0] < t.seq_of(kind="block_evict")[0], "demote precedes eviction")


@scenario("write_no_admit", "no claim: a 70-block no-admit prefill still evicts 50 of a 60-block resident; the checker sees ordinary eviction")
def _write_no_admit(t: Run) -> None:
    rt = t.runtime(U=80)
    P = tokens(60, 1)
    _warm(rt, "warm", P)
    t.expect(rt.submit_request("big", tokens(70, 2)).outcome == "admit", "prefill admitted")
    rt.finish("big", admit=False)
    lru = [r for r in rt.trace.records if r["kind"] == "block_evict" and r["reason"] == "lru"]
    t.expect(sum(len(r["blocks"]) for r in lru) == 50, "50 resident blocks evicted")
    t.expect(len(rt.pool.free) == 70, "no-admit blocks freed, not cached")
    rt.submit_request("replay", P)
    t.expect(rt.requests["replay"].hit_blocks == 10, "replay hits only 10 blocks")


@scenario("accepted_hard_claim", "the 80/60/70 probe: the prefill is refused, attributed to the claim; the resident is reused intact")
def _accepted_hard_claim(t: Run) -> None:
    rt = t.runtime(U=80, R=4)
    P = tokens(60, 1)
    t.expect(rt.submit_claim("resident", P) == "accepted", "claim accepted")
    _warm(rt, "warm", P)
    t.expect(rt.claim_state("resident") == "materialized", "claim materialized")
    d = rt.submit_request("big", tokens(70, 2))
    t.expect(d.outcome == "refuse_blocked" and d.blocking_claims == ("resident",),
             f"refused, blocked by the claim (got {d})")
    rt.submit_request("replay", P + tokens(1, 3))
    t.expect(rt.requests["replay"].hit_blocks == 60, "replay hits all 60 blocks")
    t.expect(rt.verify_request("replay"), "reused KV verifies")
    t.expect(bool(t.seq_of(kind="claim", event="hit", request="replay")), "hit event")


@scenario("materialization_failure", "a corrupt host copy fails the restore: the claim fails closed and the request recomputes")
def _materialization_failure(t: Run) -> None:
    rt = t.runtime(U=8, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    _warm(rt, "warm", P)
    rt.offload_claim("c")
    rt.inject_host_fault(rt.claims["c"].chain[0])
    t.expect(rt.submit_request("r", P).outcome == "admit", "request admitted")
    t.expect(rt.claim_state("c") == "failed", "claim failed closed")
    t.expect(rt.verify_request("r"), "the request recomputed correct KV")
    t.expect(not t.seq_of(kind="claim", event="restore"), "no restore event")


@scenario("demotion", "a hard claim with policy demote is demoted before its blocks serve a request")
def _demotion(t: Run) -> None:
    rt = t.runtime(U=8)
    rt.submit_claim("c", tokens(3, 1), policy="demote")
    _warm(rt, "warm", tokens(3, 1))
    t.expect(rt.submit_request("z", tokens(7, 2)).outcome == "admit", "z admitted")
    t.expect(rt.claim_state("c") == "demoted", "claim demoted")
    t.expect(t.seq_of(kind="claim", event="demote")[0] < t.seq_of(kind="block_evict")[0],
             "demote precedes eviction")


@scenario("expiry", "while live the claim blocks the request; after its TTL it expires and its blocks are ordinary cache")
def _expiry(t: Run) -> None:
    rt = t.runtime(U=8)
    rt.submit_claim("c", tokens(2, 1), ttl=2)
    _warm(rt, "warm", tokens(2, 1))
    t.expect(rt.submit_request("early", tokens(8, 2)).outcome == "refuse_blocked", "blocked while live")
    rt.step()
    t.expect(rt.claim_state("c") == "materialized", "still live after one tick")
    rt.step()
    t.expect(rt.claim_state("c") == "expired", "expired after two ticks")
    t.expect(rt.submit_request("late", tokens(8, 2) + [7]).outcome == "refuse_too_large", "9 blocks > U")
    t.expect(rt.submit_request("fits", tokens(8, 3)).outcome == "admit", "admitted after expiry")


@scenario("active_refusal_minimal_attribution", "several claims block a request: the refusal names a minimal deterministic set; releasing it lets the request in")
def _active_refusal(t: Run) -> None:
    rt = t.runtime(U=20)
    for cid, n, seed in (("c1", 6, 1), ("c2", 4, 2), ("c3", 3, 3)):
        rt.submit_claim(cid, tokens(n, seed))
        _warm(rt, "warm-" + cid, tokens(n, seed))
    t.expect(rt.submit_request("small", tokens(5, 4)).outcome == "admit", "small request admitted")
    rt.finish("small")
    d = rt.submit_request("big", tokens(14, 5))
    t.expect(d.blocking_claims == ("c1", "c2"), f"attributed to c1, c2 (got {d})")
    for cid in d.blocking_claims:
        rt.release_claim(cid)
    t.expect(rt.submit_request("again", tokens(14, 5)).outcome == "admit", "fits after release")
    t.expect(rt.claim_state("c3") == "materialized", "c3 untouched")


@scenario("trace_outcome_reconstruction", "the checker rebuilds every claim's final state and every request's outcome from the trace alone")
def _reconstruction(t: Run) -> None:
    rt = t.runtime(U=10, R=2, host_blocks=2)
    rt.submit_claim("kept", tokens(2, 1))
    rt.submit_claim("gone", tokens(2, 2), ttl=1)
    rt.submit_claim("too_big", tokens(7, 3))
    rt.submit_claim("parked", tokens(1, 4), tiers=("device", "host"), policy="offload")
    _warm(rt, "a", tokens(2, 1))
    _warm(rt, "p", tokens(1, 4))
    rt.submit_request("b", tokens(2, 2))
    rt.finish("b", admit=False)
    rt.offload_claim("parked")
    rt.submit_request("w", tokens(6, 5))
    rt.submit_request("blocked", tokens(9, 6))
    rt.submit_request("huge", tokens(11, 7))
    rt.step()
    t.expect(rt.decode("w", [1, 2, 3, 4, 5]).outcome == "admit", "w grows into the expired claim's blocks")
    t.expect(rt.submit_request("cut", tokens(1, 8)).outcome == "wait", "cut waits")
    rt.abort("cut")
    report = check_lines(rt.trace.lines())
    t.expect(report.claims == {c: rt.claim_state(c) for c in rt.claims}, f"claim states {report.claims}")
    for rid, r in rt.requests.items():
        got = report.requests.get(rid, {})
        t.expect(got.get("status") == r.status and got.get("reason") == r.reason
                 and tuple(got.get("blocking_claims", ())) == r.blocking_claims,
                 f"request {rid}: trace says {got}, runtime {r.status} {r.reason} {r.blocking_claims}")


@scenario("reserve_refusal", "a hard claim past U - R is refused at submission; shared and soft claims are not counted twice")
def _reserve_refusal(t: Run) -> None:
    rt = t.runtime(U=10, R=2)
    t.expect(rt.submit_claim("c1", tokens(6, 1)) == "accepted", "c1 accepted")
    t.expect(rt.submit_claim("c2", tokens(4, 2)) == "refused", "c2 refused: 10 > 8")
    t.expect(rt.submit_claim("c3", tokens(6, 1) + tokens(2, 3)) == "accepted", "c3 shares 6 blocks: 8 <= 8")
    t.expect(rt.submit_claim("s", tokens(4, 4), strength="soft") == "accepted", "soft claim outside the reserve")
    t.expect(t.seq_of(kind="claim", claim="c2", event="refuse", reason="reserve") != [], "refusal says why")
    _warm(rt, "w", tokens(6, 1))
    t.expect(rt.claim_state("c1") == "materialized" and rt.claim_state("c3") == "accepted",
             "c1 materializes; c3 waits for its own last blocks")


@scenario("offload_restore", "an offloaded claim frees device blocks and is restored, verified, when its prefix is requested; pressure offloads it again")
def _offload_restore(t: Run) -> None:
    rt = t.runtime(U=8, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    _warm(rt, "warm", P)
    rt.offload_claim("c")
    t.expect(rt.claim_state("c") == "offloaded" and len(rt.pool.free) == 8, "offloaded, device blocks freed")
    rt.submit_request("r", P + tokens(1, 2))
    t.expect(rt.claim_state("c") == "materialized", "restored")
    t.expect(rt.verify_request("r"), "restored KV verifies")
    rt.finish("r")
    t.expect(rt.submit_request("z", tokens(8, 3)).outcome == "admit", "pressure admits z")
    t.expect(rt.claim_state("c") == "offloaded", "pressure offloaded the claim first")


@scenario("prefix_cache_reset_with_claims", "a cache reset harms every claim with resident state before any block goes; running requests keep their blocks")
def _reset(t: Run) -> None:
    rt = t.runtime(U=10, host_blocks=2)
    rt.submit_claim("hard", tokens(2, 1))
    rt.submit_claim("soft", tokens(1, 2), strength="soft")
    rt.submit_claim("parked", tokens(1, 3), tiers=("device", "host"), policy="offload")
    rt.submit_claim("future", tokens(1, 4))
    _warm(rt, "a", tokens(2, 1))
    _warm(rt, "b", tokens(1, 2))
    _warm(rt, "c", tokens(1, 3))
    rt.offload_claim("parked")
    rt.submit_request("live", tokens(2, 1) + tokens(1, 5))
    rt.reset_prefix_cache()
    t.expect([rt.claim_state(c) for c in ("hard", "soft", "parked", "future")]
             == ["harmed", "harmed", "harmed", "accepted"], "claims with resident state harmed")
    harms = t.seq_of(kind="claim", event="harm")
    t.expect(max(harms) < min(t.seq_of(kind="block_evict", reason="reset_prefix_cache")), "harm first")
    t.expect(rt.verify_request("live") and not rt.pool.index, "live request intact, index empty")


@scenario("shared_prefix_claims", "two hard claims share a prefix: reserved once, attribution is the claim whose release frees blocks, releasing one keeps the other")
def _shared(t: Run) -> None:
    rt = t.runtime(U=12)
    P, Q = tokens(4, 1), tokens(2, 2)
    rt.submit_claim("c1", P)
    rt.submit_claim("c2", P + Q)
    t.expect(len(rt._reserved()) == 6, "shared blocks reserved once")
    _warm(rt, "warm", P + Q)
    d = rt.submit_request("big", tokens(7, 3))
    t.expect(d.blocking_claims == ("c2",), f"attributed to c2 (got {d})")
    rt.release_claim("c2")
    t.expect(rt.submit_request("again", tokens(7, 3)).outcome == "admit", "admitted after c2 released")
    t.expect(rt.claim_state("c1") == "materialized", "c1 still protects the shared prefix")


@scenario("device_fault_fail_closed", "an injected device fault fails the claim before the block leaves the cache; a replay recomputes")
def _device_fault(t: Run) -> None:
    rt = t.runtime(U=8)
    P = tokens(2, 1)
    rt.submit_claim("c", P)
    _warm(rt, "warm", P)
    rt.inject_device_fault(rt.claims["c"].chain[1])
    t.expect(rt.claim_state("c") == "failed", "claim failed")
    t.expect(t.seq_of(kind="claim", event="fail")[0] < t.seq_of(kind="block_evict")[0], "fail first")
    rt.submit_request("replay", P)
    t.expect(rt.requests["replay"].hit_blocks == 1 and rt.verify_request("replay"), "recomputed, verified")


@scenario("waiting_request_claim_blocked", "a waiting request that becomes claim-blocked is refused on its next retry, not left waiting")
def _waiting_blocked(t: Run) -> None:
    rt = t.runtime(U=8)
    P, Q = tokens(2, 1), tokens(4, 2)
    rt.submit_claim("c", P)
    rt.submit_request("a", P + Q)
    t.expect(rt.submit_request("w", tokens(6, 3)).outcome == "wait", "w waits for a")
    rt.submit_claim("c3", P + Q)   # resident (a computed it): materializes, protecting 6 blocks
    rt.finish("a")
    rt.step()
    r = rt.requests["w"]
    t.expect(r.status == "refused" and r.blocking_claims == ("c3",), f"w refused by c3 (got {r.status} {r.blocking_claims})")

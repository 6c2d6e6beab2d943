"""The litmus suite: small named scenarios, each with the outcome the contract requires.

Scenarios drive a runtime only through the adapter protocol (kvclaims.conformance.adapter),
so any runtime can be checked, not just the reference one. A scenario declares
the optional capabilities it needs; a runtime without one gets "not applicable"
with the reason, never a pass. Expectations that only an optional query can
check (KV content) are listed as unchecked when the runtime lacks it. Every
scenario's trace must then pass the checker. The nine paper outcomes keep the
paper's names.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from kvclaims.conformance.adapter import profile_of, reference_runtime
from kvclaims.conformance.checker import Report, check_lines
from kvclaims.trace import read_lines
from kvclaims.model.names import EVENT, POLICY, STATE, STATUS

B = 4  # tokens per block asked of every runtime: small, so the 80-block probe stays fast

Factory = Callable[..., Any]  # factory(U=, B=, R=, host_blocks=) -> a RuntimeAdapter


@dataclass
class Run:
    rt: Any  # the RuntimeAdapter under test
    failures: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            self.failures.append(what)

    def check(self, capability: str, what: str, probe: Callable[[], bool]) -> None:
        """An expectation only an optional query can observe: listed as unchecked without it."""
        if capability in self.rt.capabilities:
            self.expect(probe(), what)
        else:
            self.unchecked.append(f"{what} (needs {capability})")

    def verifies(self, toks: list[int], what: str) -> None:
        self.check("verify_content", what, lambda: self.rt.verify_prefix(toks))

    def tokens(self, blocks: int, seed: int) -> list[int]:
        """`tokens` in the runtime's own block size (a runtime may not take B as asked)."""
        return tokens(blocks, seed, self.rt.B)

    def records(self) -> list[dict[str, Any]]:
        return [r for _, r in read_lines(self.rt.trace_lines()) if isinstance(r, dict)]

    def seq_of(self, **match) -> list[int]:
        """Sequence numbers of trace records whose fields include `match`."""
        return [r["seq"] for r in self.records() if all(r.get(k) == v for k, v in match.items())]


@dataclass
class Result:
    name: str
    expected: str
    status: str  # passed | failed | not_applicable
    failures: list[str]
    report: Report
    trace: list[str] = field(repr=False)
    reason: str | None = None  # why not applicable
    unchecked: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "expected": self.expected,
            "status": self.status,
            "passed": self.passed,
            "failures": self.failures,
            "unchecked": self.unchecked,
            "records": self.report.records,
            "violations": len(self.report.violations),
        }
        return out | ({"reason": self.reason} if self.reason else {})


@dataclass(frozen=True)
class Scenario:
    expected: str
    fn: Callable[[Run, Any], None]
    shape: dict[str, int]  # U, R, host_blocks
    needs: frozenset[str]  # capabilities from kvclaims.conformance.adapter.CAPABILITIES
    checks: tuple[str, ...]  # obligation ids it is evidence for


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    checks: tuple[str, ...],
    expected: str,
    *,
    U: int,
    R: int = 0,
    host_blocks: int = 0,
    needs: tuple[str, ...] = (),
):
    """Register a scenario; `checks` are the obligation ids whose evidence it is."""

    def register(fn: Callable[[Run, Any], None]):
        SCENARIOS[name] = Scenario(expected, fn, {"U": U, "R": R, "host_blocks": host_blocks}, frozenset(needs), checks)
        return fn

    return register


def tokens(blocks: int, seed: int, block: int = B) -> list[int]:
    """`blocks` whole blocks of `block` token ids; different seeds never share a prefix."""
    return [seed * 100_000 + i for i in range(blocks * block)]


def run_scenario(name: str, factory: Factory = reference_runtime) -> Result:
    """Run one scenario on a fresh runtime from `factory`; its trace must pass the checker.

    A runtime that cannot be built raises (the suite cannot go on); one that
    lacks a needed capability is not applicable; a scenario that crashes fails.
    """
    s = SCENARIOS[name]
    t = Run(factory(B=B, **s.shape))
    missing = sorted(s.needs - t.rt.capabilities)
    reason = "the runtime lacks " + ", ".join(missing) if missing else None
    if not missing:
        try:
            s.fn(t, t.rt)
        except Exception:
            t.failures.append("raised: " + traceback.format_exc(limit=3))
    lines = t.rt.trace_lines()
    report = check_lines(lines)
    failures = t.failures + [f"checker: seq {v.seq}: {v.kind}: {v.message}" for v in report.violations]
    status = "failed" if failures else "not_applicable" if reason else "passed"
    return Result(name, s.expected, status, failures, report, lines, reason, t.unchecked)


def run_all(factory: Factory = reference_runtime) -> list[Result]:
    return [run_scenario(n, factory) for n in SCENARIOS]


def _warm(rt, rid: str, toks: list[int], admit: bool = True) -> None:
    """A request that computes `toks` and ends, leaving them cached (or not, under no-admit)."""
    rt.submit_request(rid, toks)
    rt.finish(rid, admit=admit)


@scenario(
    "ordinary_eviction",
    ("RKC-INV-1", "RKC-TR-6"),
    "an unclaimed cached prefix is evicted LRU; a materialized claim beside it is untouched",
    U=8,
)
def _ordinary_eviction(t: Run, rt) -> None:
    P = t.tokens(2, 1)
    rt.submit_claim("c", P)
    _warm(rt, "warm", P)
    _warm(rt, "x", t.tokens(3, 2))
    t.expect(rt.submit_request("y", t.tokens(5, 3)).outcome == "admit", "y admitted")
    t.expect(len(t.seq_of(kind="block_evict", reason="lru")) == 1, "one LRU eviction of x's blocks")
    t.expect(rt.claim_state("c") == STATE.materialized, "claim untouched")
    t.verifies(t.tokens(5, 3), "y's KV verifies")


@scenario(
    "soft_priority",
    ("RKC-RT-1", "RKC-INV-2"),
    "pressure demotes the lower-priority soft claim first, its event before its blocks go",
    U=8,
)
def _soft_priority(t: Run, rt) -> None:
    rt.submit_claim("lo", t.tokens(2, 1), strength="soft", priority=0)
    rt.submit_claim("hi", t.tokens(2, 2), strength="soft", priority=5)
    _warm(rt, "a", t.tokens(2, 1))
    _warm(rt, "b", t.tokens(2, 2))
    t.expect(rt.submit_request("z", t.tokens(6, 3)).outcome == "admit", "z admitted")
    t.expect(
        rt.claim_state("lo") == STATE.demoted and rt.claim_state("hi") == STATE.materialized, "lo demoted, hi kept"
    )
    demote = t.seq_of(kind="claim", claim="lo", event=EVENT.demote)
    t.expect(bool(demote) and demote[0] < t.seq_of(kind="block_evict")[0], "demote precedes eviction")


@scenario(
    "write_no_admit",
    ("RKC-RT-7", "RKC-TR-6"),
    "no claim: a 70-block no-admit prefill still evicts 50 of a 60-block resident; the checker sees ordinary eviction",
    U=80,
)
def _write_no_admit(t: Run, rt) -> None:
    P = t.tokens(60, 1)
    _warm(rt, "warm", P)
    t.expect(rt.submit_request("big", t.tokens(70, 2)).outcome == "admit", "prefill admitted")
    rt.finish("big", admit=False)
    lru = [r for r in t.records() if r["kind"] == "block_evict" and r["reason"] == "lru"]
    evicted = sum(len(r["blocks"]) for r in lru)
    if profile_of(rt).evicts_whole_nodes:  # whole tree nodes: at least the 50 it needs, at most all
        t.expect(50 <= evicted <= 60, f"50 to 60 resident blocks evicted (got {evicted})")
    else:
        t.expect(evicted == 50, "50 resident blocks evicted")
    t.expect(rt.counts().free == 80 - (60 - evicted), "no-admit blocks freed, not cached")
    rt.submit_request("replay", P)
    t.expect(rt.hit_blocks("replay") == 60 - evicted, f"replay hits only the {60 - evicted} blocks left")


@scenario(
    "accepted_hard_claim",
    ("RKC-PROBE-1", "RKC-FEAS-4", "RKC-FEAS-5", "RKC-INV-1", "RKC-RT-6"),
    "the 80/60/70 probe: the prefill is refused, attributed to the claim; the resident is reused intact",
    U=80,
    R=4,
)
def _accepted_hard_claim(t: Run, rt) -> None:
    t.expect(rt.counts().U == 80, "80 usable blocks")
    P = t.tokens(60, 1)
    t.expect(rt.submit_claim("resident", P) == STATE.accepted, "claim accepted")
    _warm(rt, "warm", P)
    t.expect(rt.claim_state("resident") == STATE.materialized, "claim materialized")
    d = rt.submit_request("big", t.tokens(70, 2))
    t.expect(
        d.outcome == "refuse_blocked" and d.blocking_claims == ("resident",), f"refused, blocked by the claim (got {d})"
    )
    replay = P + t.tokens(1, 3)
    rt.submit_request("replay", replay)
    t.expect(rt.hit_blocks("replay") == 60, "replay hits all 60 blocks")
    t.verifies(replay, "reused KV verifies")
    t.expect(bool(t.seq_of(kind="claim", event=EVENT.hit, request="replay")), "hit event")


@scenario(
    "materialization_failure",
    ("RKC-RT-2", "RKC-INV-5", "RKC-ID-5"),
    "a corrupt host copy of any block of a chain fails its restore: the claim fails closed and the request recomputes",
    U=8,
    host_blocks=4,
    needs=("host_tier", "owner_ops", "host_fault"),
)
def _materialization_failure(t: Run, rt) -> None:
    """One claim per block position of a 2-block chain, that block's host copy corrupt: a
    runtime that verifies all but one position fails (a fault hits anything it could)."""
    for i in range(2):
        cid, P = f"c{i}", t.tokens(2, 1 + i)
        rt.submit_claim(cid, P, tiers=("device", "host"), policy=POLICY.offload)
        _warm(rt, f"warm{i}", P)
        rt.offload_claim(cid)
        rt.inject_host_fault(rt.block_hashes(P)[i])
        t.expect(rt.submit_request(f"r{i}", P).outcome == "admit", f"request r{i} admitted")
        t.expect(rt.claim_state(cid) == STATE.failed, f"claim {cid} (block {i} corrupt) failed closed")
        t.verifies(P, f"r{i} recomputed correct KV")
        rt.finish(f"r{i}")
    t.expect(not t.seq_of(kind="claim", event=EVENT.restore), "no restore event")


@scenario(
    "demotion",
    ("RKC-RT-1", "RKC-LC-4"),
    "a hard claim with policy demote is demoted before its blocks serve a request",
    U=8,
)
def _demotion(t: Run, rt) -> None:
    rt.submit_claim("c", t.tokens(3, 1), policy=POLICY.demote)
    _warm(rt, "warm", t.tokens(3, 1))
    t.expect(rt.submit_request("z", t.tokens(7, 2)).outcome == "admit", "z admitted")
    t.expect(rt.claim_state("c") == STATE.demoted, "claim demoted")
    t.expect(
        t.seq_of(kind="claim", event=EVENT.demote)[0] < t.seq_of(kind="block_evict")[0], "demote precedes eviction"
    )


@scenario(
    "expiry",
    ("RKC-RT-1", "RKC-LC-3"),
    "while live the claim blocks the request; after its TTL it expires and its blocks are ordinary cache",
    U=8,
)
def _expiry(t: Run, rt) -> None:
    rt.submit_claim("c", t.tokens(2, 1), ttl=2)
    _warm(rt, "warm", t.tokens(2, 1))
    t.expect(rt.submit_request("early", t.tokens(8, 2)).outcome == "refuse_blocked", "blocked while live")
    rt.step()
    t.expect(rt.claim_state("c") == STATE.materialized, "still live after one tick")
    rt.step()
    t.expect(rt.claim_state("c") == STATE.expired, "expired after two ticks")
    t.expect(rt.submit_request("late", t.tokens(8, 2) + [7]).outcome == "refuse_too_large", "9 blocks > U")
    t.expect(rt.submit_request("fits", t.tokens(8, 3)).outcome == "admit", "admitted after expiry")


@scenario(
    "active_refusal_minimal_attribution",
    ("RKC-FEAS-5", "RKC-FEAS-6", "RKC-TR-4"),
    "several claims block a request: the refusal names a minimal deterministic set; releasing it lets the request in",
    U=20,
)
def _active_refusal(t: Run, rt) -> None:
    for cid, n, seed in (("c1", 6, 1), ("c2", 4, 2), ("c3", 3, 3)):
        rt.submit_claim(cid, t.tokens(n, seed))
        _warm(rt, "warm-" + cid, t.tokens(n, seed))
    t.expect(rt.submit_request("small", t.tokens(5, 4)).outcome == "admit", "small request admitted")
    rt.finish("small")
    d = rt.submit_request("big", t.tokens(14, 5))
    t.expect(d.blocking_claims == ("c1", "c2"), f"attributed to c1, c2 (got {d})")
    for cid in d.blocking_claims:
        rt.release_claim(cid)
    t.expect(rt.submit_request("again", t.tokens(14, 5)).outcome == "admit", "fits after release")
    t.expect(rt.claim_state("c3") == STATE.materialized, "c3 untouched")


@scenario(
    "trace_outcome_reconstruction",
    ("RKC-TR-5", "RKC-TR-8"),
    "the checker rebuilds every claim's final state and every request's outcome from the trace alone",
    U=10,
    R=2,
    host_blocks=2,
    needs=("host_tier", "owner_ops", "decode"),
)
def _reconstruction(t: Run, rt) -> None:
    rt.submit_claim("kept", t.tokens(2, 1))
    rt.submit_claim("gone", t.tokens(2, 2), ttl=1)
    rt.submit_claim("too_big", t.tokens(7, 3))
    rt.submit_claim("parked", t.tokens(1, 4), tiers=("device", "host"), policy=POLICY.offload)
    _warm(rt, "a", t.tokens(2, 1))
    _warm(rt, "p", t.tokens(1, 4))
    rt.submit_request("b", t.tokens(2, 2))
    rt.finish("b", admit=False)
    rt.offload_claim("parked")
    # Submission decisions: what the runtime says a refused request's reason and attribution are.
    said = {
        rid: rt.submit_request(rid, toks)
        for rid, toks in (("w", t.tokens(6, 5)), ("blocked", t.tokens(9, 6)), ("huge", t.tokens(11, 7)))
    }
    rt.step()
    t.expect(
        rt.decode("w", list(range(1, rt.B + 2))).outcome == "admit", "w grows by two blocks into the expired claim's"
    )
    said["cut"] = rt.submit_request("cut", t.tokens(1, 8))
    t.expect(said["cut"].outcome == "wait", "cut waits")
    rt.abort("cut")
    report = check_lines(rt.trace_lines())
    t.expect(
        report.claims == {c: rt.claim_state(c) for c in ("kept", "gone", "too_big", "parked")},
        f"claim states {report.claims}",
    )
    for rid in ("a", "p", "b", *said):
        status = rt.request_status(rid)
        reason, blocking = (said[rid].outcome, said[rid].blocking_claims) if status == STATUS.refused else (None, ())
        got = report.requests.get(rid, {})
        t.expect(
            got.get("status") == status
            and got.get("reason") == reason
            and tuple(got.get("blocking_claims", ())) == blocking,
            f"request {rid}: trace says {got}, runtime {status} {reason} {blocking}",
        )


@scenario(
    "reserve_refusal",
    ("RKC-ACC-1", "RKC-INV-4"),
    "a hard claim past U - R is refused at submission; shared and soft claims are not counted twice",
    U=10,
    R=2,
)
def _reserve_refusal(t: Run, rt) -> None:
    t.expect(rt.submit_claim("c1", t.tokens(6, 1)) == STATE.accepted, "c1 accepted")
    t.expect(rt.submit_claim("c2", t.tokens(4, 2)) == STATE.refused, "c2 refused: 10 > 8")
    t.expect(rt.submit_claim("c3", t.tokens(6, 1) + t.tokens(2, 3)) == STATE.accepted, "c3 shares 6 blocks: 8 <= 8")
    t.expect(rt.submit_claim("s", t.tokens(4, 4), strength="soft") == STATE.accepted, "soft claim outside the reserve")
    t.expect(t.seq_of(kind="claim", claim="c2", event=EVENT.refuse, reason="reserve") != [], "refusal says why")
    _warm(rt, "w", t.tokens(6, 1))
    t.expect(
        rt.claim_state("c1") == STATE.materialized and rt.claim_state("c3") == STATE.accepted,
        "c1 materializes; c3 waits for its own last blocks",
    )


@scenario(
    "offload_restore",
    ("RKC-INV-5", "RKC-RT-2"),
    "an offloaded claim frees device blocks and is restored, verified, when its prefix is requested; "
    "pressure offloads it again",
    U=8,
    host_blocks=4,
    needs=("host_tier", "owner_ops"),
)
def _offload_restore(t: Run, rt) -> None:
    P = t.tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy=POLICY.offload)
    _warm(rt, "warm", P)
    rt.offload_claim("c")
    t.expect(rt.claim_state("c") == STATE.offloaded and rt.counts().free == 8, "offloaded, device blocks freed")
    rt.submit_request("r", P + t.tokens(1, 2))
    t.expect(rt.claim_state("c") == STATE.materialized, "restored")
    t.verifies(P + t.tokens(1, 2), "restored KV verifies")
    rt.finish("r")
    t.expect(rt.submit_request("z", t.tokens(8, 3)).outcome == "admit", "pressure admits z")
    t.expect(rt.claim_state("c") == STATE.offloaded, "pressure offloaded the claim first")


@scenario(
    "prefix_cache_reset_with_claims",
    ("RKC-RT-5",),
    "a cache reset harms every claim with resident state before any block goes; running requests keep their blocks",
    U=10,
    host_blocks=2,
    needs=("reset_cache", "host_tier", "owner_ops"),
)
def _reset(t: Run, rt) -> None:
    rt.submit_claim("hard", t.tokens(2, 1))
    rt.submit_claim("soft", t.tokens(1, 2), strength="soft")
    rt.submit_claim("parked", t.tokens(1, 3), tiers=("device", "host"), policy=POLICY.offload)
    rt.submit_claim("future", t.tokens(1, 4))
    _warm(rt, "a", t.tokens(2, 1))
    _warm(rt, "b", t.tokens(1, 2))
    _warm(rt, "c", t.tokens(1, 3))
    rt.offload_claim("parked")
    rt.submit_request("live", t.tokens(2, 1) + t.tokens(1, 5))
    rt.reset_prefix_cache()
    t.expect(
        [rt.claim_state(c) for c in ("hard", "soft", "parked", "future")]
        == [STATE.harmed, STATE.harmed, STATE.harmed, STATE.accepted],
        "claims with resident state harmed",
    )
    harms = t.seq_of(kind="claim", event=EVENT.harm)
    t.expect(max(harms) < min(t.seq_of(kind="block_evict", reason="reset_prefix_cache")), "harm first")
    t.expect(rt.counts().active == 3 and not rt.resident(), "live request keeps its 3 blocks, index empty")
    t.check("verify_request", "live request's KV intact", lambda: rt.verify_request("live"))


@scenario(
    "stale_kv_after_reset",
    ("RKC-INV-6",),
    "a request decoding across a cache reset indexes nothing it computes after it; a later prompt "
    "reuses only blocks computed after the reset",
    U=6,
    needs=("reset_cache", "decode"),
)
def _stale(t: Run, rt) -> None:
    P, tail = t.tokens(1, 1), t.tokens(1, 2)
    rt.submit_request("live", P + tail[:1])
    rt.reset_prefix_cache()
    rt.decode("live", tail[1:])  # fills its second block over pre-reset KV
    rt.finish("live")
    t.expect(not rt.resident(), "nothing the live request computed after the reset is indexed")
    _warm(rt, "fresh", P + tail + t.tokens(1, 3)[:1])
    rt.submit_request("again", P + tail + t.tokens(1, 4)[:1])
    t.expect(rt.hit_blocks("again") == 2, "again reuses the two blocks fresh computed")
    t.check("verify_request", "again's KV is its tokens' under the new weights", lambda: rt.verify_request("again"))


@scenario(
    "shared_prefix_claims",
    ("RKC-INV-4", "RKC-FEAS-6"),
    "two hard claims share a prefix: reserved once, attribution is the claim whose release frees "
    "blocks, releasing one keeps the other",
    U=12,
)
def _shared(t: Run, rt) -> None:
    P, Q = t.tokens(4, 1), t.tokens(2, 2)
    rt.submit_claim("c1", P)
    rt.submit_claim("c2", P + Q)
    # Reserved exactly 6 of 12: a 7-block hard claim does not fit beside them, a 6-block one does.
    t.expect(
        rt.submit_claim("probe7", t.tokens(7, 8)) == STATE.refused
        and rt.submit_claim("probe6", t.tokens(6, 9)) == STATE.accepted,
        "shared blocks reserved once",
    )
    rt.release_claim("probe6")
    _warm(rt, "warm", P + Q)
    d = rt.submit_request("big", t.tokens(7, 3))
    t.expect(d.blocking_claims == ("c2",), f"attributed to c2 (got {d})")
    rt.release_claim("c2")
    t.expect(rt.submit_request("again", t.tokens(7, 3)).outcome == "admit", "admitted after c2 released")
    t.expect(rt.claim_state("c1") == STATE.materialized, "c1 still protects the shared prefix")


@scenario(
    "device_fault_fail_closed",
    ("RKC-RT-5", "RKC-RT-2"),
    "an injected device fault fails the claim before the block leaves the cache; a replay recomputes",
    U=8,
    needs=("device_fault",),
)
def _device_fault(t: Run, rt) -> None:
    P = t.tokens(2, 1)
    rt.submit_claim("c", P)
    _warm(rt, "warm", P)
    rt.inject_device_fault(rt.block_hashes(P)[1])
    t.expect(rt.claim_state("c") == STATE.failed, "claim failed")
    t.expect(t.seq_of(kind="claim", event=EVENT.fail)[0] < t.seq_of(kind="block_evict")[0], "fail first")
    rt.submit_request("replay", P)
    t.expect(rt.hit_blocks("replay") == 1, "replay reuses the intact block, recomputes the faulty one")
    t.verifies(P, "recomputed KV verifies")


@scenario(
    "waiting_request_claim_blocked",
    ("RKC-RT-3", "RKC-FEAS-3"),
    "a waiting request that becomes claim-blocked is refused on its next retry, not left waiting",
    U=8,
)
def _waiting_blocked(t: Run, rt) -> None:
    P, Q = t.tokens(2, 1), t.tokens(4, 2)
    rt.submit_claim("c", P)
    rt.submit_request("a", P + Q)
    t.expect(rt.submit_request("w", t.tokens(6, 3)).outcome == "wait", "w waits for a")
    rt.submit_claim("c3", P + Q)  # resident (a computed it): materializes, protecting 6 blocks
    rt.finish("a")
    rt.step()
    blocking = [r["blocking_claims"] for r in t.records() if r["kind"] == "request_refuse" and r["request"] == "w"]
    t.expect(
        rt.request_status("w") == STATUS.refused and blocking == [["c3"]],
        f"w refused by c3 (got {rt.request_status('w')} {blocking})",
    )

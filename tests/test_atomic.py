"""RKC-RT-4 as a property: a rejected operation raises a typed error and leaves the whole
runtime as it was — the block table down to LRU and free-list order, the KV bytes, claims,
requests, the host tier, the claim book's entries, holds and incremental indexes and the trace.

Random programs mix valid operations (so claims materialize, offload, wait and fail) with
many invalid ones: unknown and junk ids, malformed claim terms and prompts, illegal
lifecycle events, double releases, restores with no room, bad ticks and block hashes.
"""

import copy

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from kvclaims.errors import KVClaimsError
from kvclaims.conformance.checker import check_lines
from kvclaims.refimpl.runtime import Runtime
from kvclaims.conformance.strategies import claim_kwargs

VOCAB = 50
JUNK = [None, "", 3, 1.5, True, [], [["x"]], {"a": 1}]  # wrong types, as JSON would bring them


def state(rt) -> dict:
    """Everything a rejected operation must leave as it was (tensors as bytes, so `==` compares)."""
    p, h = rt.pool, rt.host
    return copy.deepcopy(
        {
            "pool": {k: v for k, v in vars(p).items() if k not in ("kv", "device")},
            "pool_kv": p.kv.cpu().numpy().tobytes(),
            "claims": {
                cid: ({k: v for k, v in vars(c).items() if k != "fsm"}, c.state) for cid, c in rt.claims.items()
            },
            "requests": {rid: vars(r) for rid, r in rt.requests.items()},
            "waiting": rt.waiting,
            "host": {k: v for k, v in vars(h).items() if k != "kv"},
            "host_kv": h.kv.numpy().tobytes(),
            "book": (
                rt.book.entries,
                rt.book.holders,
                rt.book._by_state,
                rt.book._by_tail,
                rt.book.ledger.names,
                {t: ledger.names for t, ledger in rt.book._tenant_ledgers.items()},
            ),
            "trace": (rt.trace.seq, rt.trace.time, len(rt.trace.records)),
        }
    )


def prompt(family: int, blocks: int, B: int) -> list[int]:
    """Whole blocks of a token family in [0, VOCAB); families never share a first block."""
    return [(family * 7 + i) % VOCAB for i in range(blocks * B)]


# name -> (tokens, runtime) -> what is passed instead of the tokens
FLAWS = {
    "none": lambda t, rt: t,
    "empty": lambda t, rt: [],
    "partial_block": lambda t, rt: t + [1],
    "out_of_vocab": lambda t, rt: t[:-1] + [VOCAB],
    "negative": lambda t, rt: [-1] + t[1:],
    "bool": lambda t, rt: [True] + t[1:],
    "string_token": lambda t, rt: ["1"] + t[1:],
    "float_token": lambda t, rt: [1.0] + t[1:],
    "nested": lambda t, rt: [t],
    "dict": lambda t, rt: dict.fromkeys(t),
    "string": lambda t, rt: "1 2 3 4",
    "null": lambda t, rt: None,
    "oversize": lambda t, rt: prompt(9, rt.U + 1, rt.B),
}
flaws = st.sampled_from(["none"] * 6 + list(FLAWS))
# One bad claim field (or none): (keyword, value), or ("prefix", a flaw of FLAWS).
CLAIM_FLAWS = [
    *(("claim_id", v) for v in JUNK),
    ("strength", "medium"),
    ("strength", None),
    ("policy", "evict"),
    ("policy", ""),
    ("policy", "refuse"),
    ("tiers", ("host",)),
    ("tiers", ()),
    ("tiers", ("device", "device")),
    ("tiers", "device"),
    ("tiers", None),
    ("tiers", [["device"]]),
    ("tiers", ("device", "disk")),
    ("priority", -1),
    ("priority", 2**31),
    ("priority", "1"),
    ("priority", 1.5),
    ("priority", True),
    ("priority", None),
    ("ttl", 0),
    ("ttl", -1),
    ("ttl", "2"),
    ("ttl", 2.0),
    ("ttl", True),
    *(("prefix", f) for f in FLAWS if f != "none"),
]
claim_flaws = st.none() | st.none() | st.sampled_from(CLAIM_FLAWS)
# An existing id (by index; unknown while there are none), often; or junk.
picks = st.integers(0, 50) | st.integers(0, 50) | st.sampled_from(JUNK)


class Atomic(RuleBasedStateMachine):
    @initialize(
        U=st.integers(4, 12),
        B=st.sampled_from([1, 2, 4]),
        R=st.integers(0, 3),
        host=st.sampled_from([0, 1, 2, 6]),
        vocab=st.sampled_from([None, VOCAB]),
    )
    def start(self, U, B, R, host, vocab) -> None:
        """A runtime that already has work: a materialized blocking claim and an offloadable one."""
        self.rt = Runtime(U, B, min(R, U - 1), host_blocks=host, vocab=vocab, device="cpu")
        self.prefixes: dict[str, list[int]] = {}
        self.serial = 0
        for cid, family, terms in (
            ("h", 0, {}),
            ("o", 1, {"strength": "soft", "policy": "offload", "tiers": ("device", "host")}),
        ):
            self.prefixes[cid] = prompt(family, 1, B)
            self.rt.submit_claim(cid, self.prefixes[cid], **terms)
            self._submit(self.prefixes[cid], finish=True)

    def attempt(self, call) -> object:
        """Run `call`; a typed rejection must leave the runtime exactly as it was."""
        before = state(self.rt)
        try:
            return call()
        except KVClaimsError as exc:
            event(f"rejected: {type(exc).__name__}")
            assert state(self.rt) == before, f"rejected with {exc!r}, yet the runtime changed"

    def pick(self, pool, value):
        """`value` itself if junk; else an id of `pool` by index, or an unknown one if it is empty."""
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        return sorted(pool)[value % len(pool)] if pool else f"unknown{value}"

    def pick_request(self, value, live: bool):
        """A request by index, among those still waiting or running if `live`."""
        pool = [rid for rid, r in self.rt.requests.items() if not live or r.status in ("waiting", "running")]
        return self.pick(pool, value)

    def tokens(self, family, blocks, flaw) -> object:
        return FLAWS[flaw](prompt(family, blocks, self.rt.B), self.rt)

    @rule(
        cid=st.sampled_from("abcdef"),
        family=st.integers(0, 2),
        blocks=st.integers(1, 3),
        terms=claim_kwargs(host_tier=True),
        flaw=claim_flaws,
    )
    def submit_claim(self, cid, family, blocks, terms, flaw) -> None:
        """A valid claim (ids repeat: duplicates), or one with a single bad field."""
        args = {"claim_id": cid, "prefix": prompt(family, blocks, self.rt.B), **terms}
        if flaw:
            field, value = flaw
            args[field] = FLAWS[value](args["prefix"], self.rt) if field == "prefix" else value
            if (field, value) == ("policy", "refuse"):
                args["strength"] = "soft"
        if self.attempt(lambda: self.rt.submit_claim(**args)):
            self.prefixes[cid] = args["prefix"]

    @rule(op=st.sampled_from(["release", "demote", "offload", "restore"]), cid=picks, legal=st.booleans())
    def claim_op(self, op, cid, legal) -> None:
        """An owner's operation on any claim, or (`legal`) on one whose state allows it, so
        that guards and room decide: no host tier, a full host, no device room, the reserve."""
        pool = [c.id for c in self.rt.claims.values() if not legal or op in c.fsm.allowed()]
        cid = self.pick(pool, cid)
        self.attempt(lambda: getattr(self.rt, f"{op}_claim")(cid))

    @rule(cid=st.integers(0, 50))
    def warm(self, cid) -> None:
        """Compute a claim's prefix in a request that ends, so the claim can materialize."""
        if self.prefixes:
            self._submit(self.prefixes[self.pick(self.prefixes, cid)], finish=True)

    @rule(family=st.integers(0, 3), blocks=st.integers(1, 6), flaw=flaws, finish=st.booleans())
    def submit_request(self, family, blocks, flaw, finish) -> None:
        self._submit(self.tokens(family, blocks, flaw), finish)

    @rule(cid=st.integers(0, 50), family=st.integers(4, 6))
    def restore_without_room(self, cid, family) -> None:
        """Offload a claim, let a running request take every free and cached block, restore."""
        pool = [c.id for c in self.rt.claims.values() if "offload" in c.fsm.allowed() and c.host_allowed]
        if not pool:
            return
        cid = self.pick(pool, cid)
        self.attempt(lambda: self.rt.offload_claim(cid))
        if room := len(self.rt.pool.free) + len(self.rt.pool.lru):
            self._submit(prompt(family, room, self.rt.B), finish=False)
        self.attempt(lambda: self.rt.restore_claim(cid))

    def _submit(self, tokens, finish: bool) -> None:
        self.serial += 1
        rid = f"r{self.serial}"
        self.attempt(lambda: self.rt.submit_request(rid, tokens))
        if finish and rid in self.rt.requests and self.rt.requests[rid].status == "running":
            self.rt.finish(rid)

    @rule(rid=picks, live=st.booleans(), blocks=st.integers(1, 3), flaw=flaws)
    def decode(self, rid, live, blocks, flaw) -> None:
        rid, tokens = self.pick_request(rid, live), self.tokens(3, blocks, flaw)
        self.attempt(lambda: self.rt.decode(rid, tokens))

    @rule(
        rid=picks,
        live=st.booleans(),
        op=st.sampled_from(["abort", "verify_request", "finish"]),
        admit=st.sampled_from([True, False, "false", 0, None]),
    )
    def end_request(self, rid, live, op, admit) -> None:
        rid = self.pick_request(rid, live)
        args = {"admit": admit} if op == "finish" else {}
        self.attempt(lambda: getattr(self.rt, op)(rid, **args))

    @rule(rid=st.sampled_from(["r1", "r2", *JUNK]), family=st.integers(0, 2))
    def reused_request_id(self, rid, family) -> None:
        self.attempt(lambda: self.rt.submit_request(rid, prompt(family, 1, self.rt.B)))

    @rule(ticks=st.sampled_from([1, 1, 2, 0, -1, True, 1.0, "1", None]))
    def step(self, ticks) -> None:
        self.attempt(lambda: self.rt.step(ticks))

    @rule(
        op=st.sampled_from(["inject_device_fault", "inject_host_fault", "evict_blocks"]),
        which=picks,
        listed=st.booleans(),
    )
    def operator(self, op, which, listed) -> None:
        """On a known block (of either tier, so sometimes the wrong one), an unknown one, or junk."""
        known = sorted({*self.rt.pool.index, *self.rt.host.index})
        h = self.pick(known, which)
        arg = ([h] if listed else h) if op == "evict_blocks" else h
        self.attempt(lambda: getattr(self.rt, op)(arg))

    @rule(family=st.integers(0, 3), blocks=st.integers(1, 14), flaw=flaws)
    def feasibility(self, family, blocks, flaw) -> None:
        """A dry run changes nothing, whatever it decides."""
        tokens = self.tokens(family, blocks, flaw)
        before = state(self.rt)
        try:
            self.rt.feasibility(tokens)
        except KVClaimsError:
            pass
        assert state(self.rt) == before

    def teardown(self) -> None:
        if hasattr(self, "rt"):
            report = check_lines(self.rt.trace.lines())
            assert report.ok, report.violations


Atomic.TestCase.settings = settings(stateful_step_count=50)
TestAtomic = Atomic.TestCase

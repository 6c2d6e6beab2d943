"""The claim book on its own, with no runtime: quota settings and the quota boundary
(RKC-SEC-2), ownership (RKC-SEC-1), its reserve argument, hits, expiry on a long clock and
`close()`. The reference runtime is single-tenant with no quota, so these are the only
tests of that code that need no vLLM.

The book is given a stand-in device side whose blocks are the hashes themselves: a chain
is resident when every hash of it is in `present`, and the side records what is held.
"""

from __future__ import annotations

import dataclasses

import pytest

from kvclaims.claimbook import ANONYMOUS, ClaimBook, Quota
from kvclaims.errors import BadArgument, NotOwner
from kvclaims.model.names import EVENT
from kvclaims.spec import load
from kvclaims.trace import TraceWriter

SPEC = load()


class Side:
    """A device side whose block for a hash is the hash: `present` says what is resident,
    `held` what each claim holds now."""

    def __init__(self) -> None:
        self.present: set[str] = set()
        self.held: dict[str, list[str]] = {}

    def resident(self, c, key):
        return list(key) if all(h in self.present for h in key) else None

    def hold(self, c, blocks) -> None:
        assert c.id not in self.held, f"{c.id} held twice"
        self.held[c.id] = list(blocks)

    def unhold(self, c, blocks) -> None:
        assert self.held.pop(c.id) == list(blocks), f"{c.id} let go of blocks it did not hold"

    def block_id(self, block):
        return block


def book(U: int = 16, R: int = 0, **kwargs) -> ClaimBook:
    return ClaimBook(SPEC, TraceWriter(), Side(), U=U, R=R, **kwargs)


def submit(b: ClaimBook, cid: str, chain: list[str], strength: str = "hard", ttl=None, tenant=ANONYMOUS) -> str:
    policy = "refuse" if strength == "hard" else "demote"
    return b.submit(
        cid, chain, chain, strength=strength, priority=0, ttl=ttl, tiers=("device",), policy=policy, tenant=tenant
    )


def events(b: ClaimBook, event: str) -> list[dict]:
    return [r for r in b.trace.records if r["kind"] == "claim" and r["event"] == event]


# ---------------------------------------------------------------------- quota settings
@pytest.mark.parametrize(
    "value, field",
    [
        ([4], "kvclaims.quota"),
        ({"dflt": 4}, "kvclaims.quota"),
        ({"tenants": [1]}, "kvclaims.quota"),
        ({"default": -1}, "kvclaims.quota.default"),
        ({"default": True}, "kvclaims.quota.default"),
        ({"tenants": {"t": None}}, "kvclaims.quota.tenants.t"),
    ],
)
def test_quota_settings_are_checked(value, field):
    with pytest.raises(BadArgument) as err:
        Quota.parse(value)
    assert err.value.field == field


def test_quota_limits():
    q = Quota.parse({"default": 4, "tenants": {"big": 12}})
    assert (q.limit("big"), q.limit("other"), Quota().limit("any")) == (12, 4, None)
    assert Quota.parse({"tenants": {"big": 12}}).limit("other") is None  # no default: the others are uncapped
    assert Quota.parse({}) == Quota()


def test_a_quota_of_zero_is_accepted():
    """A cap of 0 is a block count like any other (`Quota.parse` asks for >= 0): that tenant
    may make no hard claim at all. Only a negative cap is an error."""
    q = Quota.parse({"default": 0, "tenants": {"t": 0}})
    assert (q.limit("t"), q.limit("other")) == (0, 0)
    b = book(quota=q)
    assert submit(b, "h", ["a"]) == "refused" and b.entries["h"].refusal == "quota"
    assert submit(b, "s", ["a"], strength="soft") == "accepted"


# ---------------------------------------------------------------------- quota boundary
@pytest.mark.obligation("RKC-SEC-2")
def test_quota_caps_a_tenants_distinct_hard_claimed_blocks():
    """Quota(default=2): hard claims up to exactly 2 distinct blocks are accepted, one block
    more is refused with reason quota; blocks already reserved count once (a claim on them
    adds 0), soft claims are not capped, and each tenant has its own count."""
    b = book(quota=Quota(default=2))
    assert submit(b, "h1", ["a"]) == "accepted"  # 0 + 1, under the cap
    assert submit(b, "h2", ["a", "b"]) == "accepted"  # 1 reserved + 1 new: exactly the cap
    assert submit(b, "h3", ["c"]) == "refused"  # 2 + 1 > 2
    assert b.entries["h3"].refusal == "quota"
    assert submit(b, "h4", ["a", "b"]) == "accepted"  # all reserved already: adds 0
    assert submit(b, "s", ["d", "e", "f"], strength="soft") == "accepted"  # soft: no quota
    assert submit(b, "o", ["x", "y"], tenant="bob") == "accepted"  # bob's own 2
    assert submit(b, "o2", ["z"], tenant="bob") == "refused"
    assert [(r["claim"], r["reason"]) for r in events(b, EVENT.refuse)] == [("h3", "quota"), ("o2", "quota")]
    b.check_valid()


# ---------------------------------------------------------------------- ownership
@pytest.mark.obligation("RKC-SEC-1")
def test_only_the_owner_may_move_a_claim():
    """Owner 'bob': strangers sorting before ('alice') and after ('carol') him both get
    NotOwner, and nothing changes; bob passing an equal but distinct string (as a server
    builds per request) is the owner. Ownership is equality of tenants, not order or identity."""
    b = book()
    owner = "bob"
    submit(b, "c", ["a"], tenant=owner)
    before = len(b.trace.records)
    for stranger in ("alice", "carol"):
        for event in (EVENT.release, EVENT.demote):
            with pytest.raises(NotOwner, match="belongs to another tenant"):
                b.check_event("c", event, tenant=stranger)
    same = "".join(["b", "ob"])
    assert same == owner and same is not owner
    assert b.check_event("c", EVENT.release, tenant=same) is b.claims["c"]
    assert len(b.trace.records) == before and b.claims["c"].state == "accepted"


# ---------------------------------------------------------------------- construction
def test_quota_is_frozen_so_the_shared_default_stays_uncapped():
    """Books built without a quota share one default `Quota()`: safe only because it is
    frozen, so no book can give every other book a cap."""
    a, b = book(), book()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.quota.default = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Quota(default=2).default = 3  # type: ignore[misc]
    assert b.quota == Quota() and b.quota.limit("anyone") is None


@pytest.mark.obligation("RKC-ACC-1")
def test_default_reserve_is_zero():
    """A book built without R has reserve 0: a hard claim on all U blocks is accepted."""
    b = ClaimBook(SPEC, TraceWriter(), Side(), U=4)
    assert b.R == 0
    assert submit(b, "all", ["a", "b", "c", "d"]) == "accepted"
    assert submit(b, "more", ["e"]) == "refused" and b.entries["more"].refusal == "reserve"


@pytest.mark.parametrize("U, R", [(2, -1), (2, 2), (2, 3)])
def test_a_reserve_outside_0_to_U_is_refused_by_the_book(U, R):
    """The runtimes validate R first; the book still asserts 0 <= R < U."""
    with pytest.raises(AssertionError, match="validates its reserve"):
        book(U=U, R=R)


def test_a_reserve_of_U_minus_1_is_allowed():
    b = book(U=2, R=1)
    assert submit(b, "one", ["a"]) == "accepted" and submit(b, "two", ["b"]) == "refused"


# ---------------------------------------------------------------------- hits, expiry, close
def test_a_hit_prefix_longer_than_the_chain_hits_the_claim():
    """A request whose reused prefix extends past a claim's chain reused the whole claimed
    prefix: the claim gets its hit, as does one whose chain is the whole prefix."""
    b = book()
    b.side.present |= {"a", "b"}  # type: ignore[attr-defined]
    assert submit(b, "short", ["a"]) == submit(b, "whole", ["a", "b"]) == "materialized"
    b.hits(["a", "b"], "r")
    assert [(r["claim"], r["request"]) for r in events(b, EVENT.hit)] == [("short", "r"), ("whole", "r")]
    b.hits(["c"], "r2")
    assert len(events(b, EVENT.hit)) == 2


def test_a_deadline_past_tick_256_expires_on_time():
    """ttl=300: the claim is alive through tick 299 and expires at tick 300. Deadlines are
    compared by value, also past CPython's small-int cache (256); the clock advances one
    tick at a time, as the runtimes' is."""
    b = book()
    assert submit(b, "t", ["a"], ttl=300) == "accepted"
    for now in range(1, 300):
        b.trace.time = now
        b.expire(now)
    assert b.claims["t"].state == "accepted"
    b.trace.time += 1
    b.expire(b.trace.time)
    assert b.claims["t"].state == "expired"
    assert [(r["claim"], r["time"], r["reason"]) for r in events(b, EVENT.expire)] == [("t", 300, "ttl")]


def test_close_lets_go_of_every_hold():
    """`close()` unpins every materialized claim's blocks through the side, with no event."""
    b = book()
    side = b.side
    side.present |= {"a", "b"}  # type: ignore[attr-defined]
    submit(b, "x", ["a"])
    submit(b, "y", ["a", "b"])
    submit(b, "z", ["q"])  # accepted, holds nothing
    assert side.held == {"x": ["a"], "y": ["a", "b"]} and b.holding()  # type: ignore[attr-defined]
    before = len(b.trace.records)
    b.close()
    assert side.held == {} and not b.holding()  # type: ignore[attr-defined]
    assert len(b.trace.records) == before

"""Rejection scenarios: the adapter protocol's bad input, refused the same way by every runtime.

RKC-RT-4 is a property of the protocol, not of one runtime: each scenario builds a
small state through `kvclaims.conformance.adapter.RuntimeAdapter`, makes one bad call, and
requires (a) exactly the `kvclaims.errors` type the reference runtime raises for it
(a subclass is not the same answer: a client dispatches on the type) and (b) that
nothing changed: the trace, the block table, the class counts, every claim state
and request status, and the bad call's own id still unknown. Inputs are built from
the runtime's own `B` and `U` (a runtime may fix its block size and map token ids).
A scenario that needs a capability the runtime lacks is not applicable, with the
reason, as in the litmus suite, whose `Run` and `Result` these share.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable

from kvclaims.errors import (
    DuplicateId,
    GuardRejected,
    IllegalTransition,
    InvalidField,
    InvalidInput,
    KVClaimsError,
    UnknownId,
)
from kvclaims.model.terms import PRIORITIES, TTLS
from kvclaims.conformance.adapter import reference_runtime
from kvclaims.conformance.checker import check_lines
from kvclaims.conformance.litmus import B, Factory, Result, Run
from kvclaims.model.names import POLICY, STATE, STATUS

SHAPE = {"U": 8, "R": 0, "host_blocks": 0}
CLAIMS = ("c", "gone")  # the setup's claims: materialized, released
REQUESTS = ("done", "run", "wait")  # its requests: finished, running, waiting
NEW = "x"  # the id a bad call tries to create: stays unknown
FRESH = 9  # token seed no setup prompt uses
OBLIGATION = "RKC-RT-4"


@dataclass(frozen=True)
class Rejection:
    what: str  # the bad call, in words
    error: type[KVClaimsError]  # exactly what it must raise
    call: Callable[[Run], Any]
    needs: frozenset[str]

    @property
    def expected(self) -> str:
        return f"{self.what}: {self.error.__name__}, nothing changed"


REJECTIONS: dict[str, Rejection] = {}


def _add(table: dict[str, tuple], needs: tuple[str, ...] = ()) -> None:
    for name, (what, error, call) in table.items():
        REJECTIONS[name] = Rejection(what, error, call, frozenset(needs))


def _claim(**terms: Any) -> Callable[[Run], Any]:
    """`submit_claim` of a valid hard claim 'x' on one fresh block, but for `terms`; a term
    given as a function is computed from the run (inputs in the runtime's own B and U)."""

    def call(t: Run) -> Any:
        args = {"claim_id": NEW, "prefix": t.tokens(1, FRESH)}
        args |= {k: v(t) if callable(v) else v for k, v in terms.items()}
        return t.rt.submit_claim(args.pop("claim_id"), args.pop("prefix"), **args)

    return call


def _blocks(n: float) -> Callable[[Run], list[int]]:
    """A fresh prefix of `n` blocks; a fraction is a partial block (for any B >= 2: the
    suites ask every runtime for B=4, and vLLM takes 32)."""
    return lambda t: t.tokens(int(n) + 1, FRESH)[: int(n * t.rt.B)]


def _flawed(i: int, bad: Any) -> Callable[[Run], list[int]]:
    """A fresh one-block prefix whose token `i` is `bad`."""
    return lambda t: [bad if j == i else tok for j, tok in enumerate(t.tokens(1, FRESH))]


def _calls(method: str, *args: Any, **kwargs: Any) -> Callable[[Run], Any]:
    """`rt.method(*args, **kwargs)`; an argument given as a function is computed from the run."""
    return lambda t: getattr(t.rt, method)(*(a(t) if callable(a) else a for a in args), **kwargs)


_add(
    {  # claim terms: what `submit_claim` validates before anything changes
        "claim_prefix_not_whole_blocks": ("a claim on 1.5 blocks", InvalidField, _claim(prefix=_blocks(1.5))),
        "claim_prefix_under_one_block": ("a claim on half a block", InvalidField, _claim(prefix=_blocks(0.5))),
        "claim_prefix_empty": ("a claim on no tokens", InvalidField, _claim(prefix=[])),
        "claim_prefix_not_a_list": ("a claim prefix that is a string", InvalidField, _claim(prefix="1 2 3 4")),
        "claim_prefix_past_the_pool": (
            "a claim on more blocks than the pool",
            InvalidField,
            _claim(prefix=lambda t: t.tokens(t.rt.U + 1, FRESH)),
        ),
        "claim_token_negative": ("a claim token id -1", InvalidField, _claim(prefix=_flawed(0, -1))),
        "claim_token_float": ("a claim token id 1.0", InvalidField, _claim(prefix=_flawed(1, 1.0))),
        "claim_token_bool": ("a claim token id True", InvalidField, _claim(prefix=_flawed(0, True))),
        "claim_token_string": ("a claim token id '3'", InvalidField, _claim(prefix=_flawed(0, "3"))),
        "claim_id_empty": ("a claim id ''", InvalidField, _claim(claim_id="")),
        "claim_id_not_a_string": ("a claim id 5", InvalidField, _claim(claim_id=5)),
        "claim_id_in_use": ("a claim id already in use", DuplicateId, _claim(claim_id="c")),
        "claim_strength_unknown": ("strength 'medium'", InvalidField, _claim(strength="medium")),
        "claim_strength_null": ("strength None", InvalidField, _claim(strength=None)),
        "claim_policy_unknown": ("policy 'evict'", InvalidField, _claim(policy="evict")),
        "claim_soft_refuses": (
            "a soft claim with policy refuse",
            InvalidField,
            _claim(strength="soft", policy=POLICY.refuse),
        ),
        "claim_offload_without_host_tier": (
            "policy offload with tiers ('device',)",
            InvalidField,
            _claim(policy=POLICY.offload),
        ),
        "claim_tiers_without_device": ("tiers ('host',)", InvalidField, _claim(tiers=("host",))),
        "claim_tier_unknown": ("tiers ('device', 'disk')", InvalidField, _claim(tiers=("device", "disk"))),
        "claim_tiers_repeat": ("tiers ('device', 'device')", InvalidField, _claim(tiers=("device", "device"))),
        "claim_tiers_not_a_list": ("tiers 'device'", InvalidField, _claim(tiers="device")),
        "claim_priority_above_range": ("priority 2**31", InvalidField, _claim(priority=PRIORITIES.stop)),
        "claim_priority_below_range": ("priority -2**31 - 1", InvalidField, _claim(priority=PRIORITIES.start - 1)),
        "claim_priority_string": ("priority '1'", InvalidField, _claim(priority="1")),
        "claim_priority_null": ("priority None", InvalidField, _claim(priority=None)),
        "claim_ttl_zero": ("ttl 0", InvalidField, _claim(ttl=0)),
        "claim_ttl_float": ("ttl 2.0", InvalidField, _claim(ttl=2.0)),
        "claim_ttl_string": ("ttl '2'", InvalidField, _claim(ttl="2")),
        "claim_ttl_above_range": ("ttl 2**31", InvalidField, _claim(ttl=TTLS.stop)),
    }
)
_add(
    {  # operations on claims
        "release_unknown_claim": ("release of an unknown claim", UnknownId, _calls("release_claim", "nope")),
        "release_released_claim": ("release of a released claim", IllegalTransition, _calls("release_claim", "gone")),
        "release_id_not_a_string": ("release of claim id None", InvalidField, _calls("release_claim", None)),
        "claim_state_unknown": ("the state of an unknown claim", UnknownId, _calls("claim_state", "nope")),
    }
)
_add(
    {
        "demote_released_claim": ("demote of a released claim", IllegalTransition, _calls("demote_claim", "gone")),
        "restore_materialized_claim": (
            "restore of a materialized claim",
            IllegalTransition,
            _calls("restore_claim", "c"),
        ),
        "offload_device_only_claim": (
            "offload of a claim without the host tier",
            GuardRejected,
            _calls("offload_claim", "c"),
        ),
    },
    needs=("owner_ops",),
)
_add(
    {  # requests
        "request_empty": ("a request of no tokens", InvalidField, _calls("submit_request", NEW, [])),
        "request_tokens_not_a_list": (
            "request tokens that are a string",
            InvalidField,
            _calls("submit_request", NEW, "1 2"),
        ),
        "request_token_negative": (
            "a request token id -1",
            InvalidField,
            _calls("submit_request", NEW, _flawed(0, -1)),
        ),
        "request_token_float": ("a request token id 1.0", InvalidField, _calls("submit_request", NEW, _flawed(1, 1.0))),
        "request_token_null": (
            "a request token id None",
            InvalidField,
            _calls("submit_request", NEW, _flawed(0, None)),
        ),
        "request_id_in_use": (
            "a request id already in use",
            DuplicateId,
            _calls("submit_request", "done", lambda t: t.tokens(1, FRESH)),
        ),
        "request_id_empty": (
            "a request id ''",
            InvalidField,
            _calls("submit_request", "", lambda t: t.tokens(1, FRESH)),
        ),
        "request_id_not_a_string": (
            "a request id 7",
            InvalidField,
            _calls("submit_request", 7, lambda t: t.tokens(1, FRESH)),
        ),
        "request_status_unknown": ("the status of an unknown request", UnknownId, _calls("request_status", "nope")),
        "request_status_id_not_a_string": (
            "the status of request id None",
            InvalidField,
            _calls("request_status", None),
        ),
        "hit_blocks_unknown": ("the hits of an unknown request", UnknownId, _calls("hit_blocks", "nope")),
        "finish_unknown": ("finish of an unknown request", UnknownId, _calls("finish", "nope")),
        "finish_finished": ("finish of a finished request", InvalidInput, _calls("finish", "done")),
        "finish_waiting": ("finish of a waiting request", InvalidInput, _calls("finish", "wait")),
        "finish_admit_not_a_bool": ("finish with admit='false'", InvalidField, _calls("finish", "run", admit="false")),
        "abort_unknown": ("abort of an unknown request", UnknownId, _calls("abort", "nope")),
        "abort_finished": ("abort of a finished request", InvalidInput, _calls("abort", "done")),
        "step_zero_ticks": ("step(0)", InvalidField, _calls("step", 0)),
        "step_ticks_bool": ("step(True)", InvalidField, _calls("step", True)),
        "step_ticks_string": ("step('1')", InvalidField, _calls("step", "1")),
    }
)
_add(
    {
        "decode_finished": ("decode of a finished request", InvalidInput, _calls("decode", "done", [1])),
        "decode_nothing": ("decode of no tokens", InvalidField, _calls("decode", "run", [])),
    },
    needs=("decode",),
)
_add(
    {"verify_unknown_request": ("verify of an unknown request", UnknownId, _calls("verify_request", "nope"))},
    needs=("verify_request",),
)
_add(
    {  # operator calls
        "evict_unknown_block": ("evict of a block not resident", UnknownId, _calls("evict_blocks", ["0" * 16])),
        "evict_no_blocks": ("evict of no blocks", UnknownId, _calls("evict_blocks", [])),
        "evict_hashes_not_a_list": ("evict of hashes that are a string", InvalidField, _calls("evict_blocks", "abc")),
        "evict_hash_not_a_string": ("evict of hash 5", InvalidField, _calls("evict_blocks", [5])),
    },
    needs=("evict_blocks",),
)
_add(
    {
        "device_fault_unknown_block": (
            "a device fault in a block not resident",
            UnknownId,
            _calls("inject_device_fault", "0" * 16),
        )
    },
    needs=("device_fault",),
)
_add(
    {
        "host_fault_unknown_block": (
            "a host fault in a block not in the host tier",
            UnknownId,
            _calls("inject_host_fault", "0" * 16),
        )
    },
    needs=("host_fault",),
)


def setup(t: Run) -> None:
    """U=8: claim 'c' on 2 blocks, materialized by request 'done' (finished); soft claim
    'gone', released; request 'run' running on 1 block; 'wait' (6 blocks) waiting for it."""
    rt = t.rt
    rt.submit_claim("c", t.tokens(2, 1))
    rt.submit_request("done", t.tokens(2, 1))
    rt.finish("done")
    rt.submit_claim("gone", t.tokens(1, 2), strength="soft")
    rt.release_claim("gone")
    rt.submit_request("run", t.tokens(1, 3))
    rt.submit_request("wait", t.tokens(6, 4))
    got = snapshot(rt)
    want = {
        "claim c": STATE.materialized,
        "claim gone": STATE.released,
        "request done": STATUS.finished,
        "request run": STATUS.running,
        "request wait": STATUS.waiting,
    }
    for key, value in want.items():
        t.expect(got[key] == value, f"setup: {key} is {got[key]}, expected {value}")


def snapshot(rt) -> dict[str, Any]:
    """What a rejected call must leave as it was; a query that raises is recorded by its error."""

    def ask(query: Callable[[str], Any], key: str) -> Any:
        try:
            return query(key)
        except KVClaimsError as exc:
            return f"raises {type(exc).__name__}"

    return {
        "trace": rt.trace_lines(),
        "resident": rt.resident(),
        "counts": rt.counts(),
        **{f"claim {c}": ask(rt.claim_state, c) for c in (*CLAIMS, NEW)},
        **{f"request {r}": ask(rt.request_status, r) for r in (*REQUESTS, NEW)},
    }


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in before:
        if before[key] == after[key]:
            continue
        if key == "trace":
            added = after[key][len(before[key]) :] if after[key][: len(before[key])] == before[key] else None
            out.append(f"changed the trace: {'rewrote it' if added is None else f'added {added}'}")
        else:
            out.append(f"changed {key}: {before[key]!r} -> {after[key]!r}")
    return out


def run_rejection(name: str, factory: Factory = reference_runtime) -> Result:
    """Run one scenario on a fresh runtime; its trace must also pass the checker."""
    s = REJECTIONS[name]
    t = Run(factory(B=B, **SHAPE))
    missing = sorted(s.needs - t.rt.capabilities)
    if not missing:
        try:
            setup(t)
            before = snapshot(t.rt)
            _judge(t, s)
            t.failures += _changes(before, snapshot(t.rt))
        except Exception as exc:  # noqa: BLE001 - the setup or a query crashed: a finding
            t.failures.append("raised " + "".join(traceback.format_exception_only(exc)).strip())
    lines = t.rt.trace_lines()
    report = check_lines(lines)
    failures = t.failures + [f"checker: seq {v.seq}: {v.kind}: {v.message}" for v in report.violations]
    reason = "the runtime lacks " + ", ".join(missing) if missing else None
    status = "failed" if failures else "not_applicable" if reason else "passed"
    return Result(name, s.expected, status, failures, report, lines, reason)


def _judge(t: Run, s: Rejection) -> None:
    """The bad call raises exactly `s.error`."""
    want = s.error.__name__
    try:
        s.call(t)
    except Exception as exc:  # noqa: BLE001 - any other type is the finding
        if type(exc) is not s.error:
            t.failures.append(f"raised {type(exc).__name__}: {exc}; expected {want}")
    else:
        t.failures.append(f"accepted; expected {want}")


def run_all(factory: Factory = reference_runtime) -> list[Result]:
    return [run_rejection(n, factory) for n in REJECTIONS]

"""The Resident KV Claims contract, loaded from ``contract.toml``.

Everything else (the lifecycle machine, the Z3 encodings, the diagram, the docs
table) is derived from the :class:`Spec` this module returns, so a state or an
event is never written down twice.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

from kvclaims.errors import KVClaimsError
from kvclaims.spec.expr import ExprError, names, parse

__all__ = [
    "Spec", "Lifecycle", "Transition", "Outcome", "Invariant", "Action", "Mode", "Lowering", "SpecError", "load",
    "CONTRACT_PATH",
]  # fmt: skip

CONTRACT_PATH = Path(str(resources.files(__package__).joinpath("contract.toml")))


class SpecError(KVClaimsError, ValueError):
    """The contract file is inconsistent (unknown state, duplicate transition, bad expression)."""


@dataclass(frozen=True)
class Transition:
    source: str
    event: str
    dest: str
    guard: str  # a lifecycle guard name, or "" for none


@dataclass(frozen=True)
class Lifecycle:
    initial: str
    states: dict[str, str]
    events: dict[str, str]
    guards: dict[str, str]
    terminal: tuple[str, ...]
    protected: tuple[str, ...]
    loss_events: tuple[str, ...]
    transitions: tuple[Transition, ...]

    def targets(self, state: str, event: str) -> list[Transition]:
        return [t for t in self.transitions if t.source == state and t.event == event]

    @property
    def live(self) -> tuple[str, ...]:
        return tuple(s for s in self.states if s not in self.terminal)

    def sources(self, event: str) -> frozenset[str]:
        """States `event` may fire from (e.g. the states awaiting `materialize`)."""
        return frozenset(t.source for t in self.transitions if t.event == event)

    def dests(self, event: str) -> frozenset[str]:
        """States `event` leads to (e.g. the offloaded state, where `offload` leads)."""
        return frozenset(t.dest for t in self.transitions if t.event == event)


@dataclass(frozen=True)
class Outcome:
    name: str
    when: str
    doc: str


@dataclass(frozen=True)
class Invariant:
    id: str
    name: str
    expr: str


@dataclass(frozen=True)
class Action:
    """One normalized action of the abstract pool: guard conjuncts and simultaneous updates."""

    name: str
    doc: str
    params: dict[str, str]
    guard: tuple[str, ...]
    update: dict[str, str]
    event: str | None = None  # the lifecycle event of c this action fires, if fixed
    event_param: str | None = None  # or the param that names it


@dataclass(frozen=True)
class Mode:
    """A protection mode of the lowering relation (arXiv 2606.01387)."""

    name: str
    promise: str
    when: str  # which claims it covers: an expression over CLAIM_TERMS
    bundle: tuple[str, ...]  # its obligations, the identity ones included
    unsound: tuple[str, ...]  # mechanisms that can never carry it on their own
    exercised: tuple[str, ...] = ()  # what one trace must exercise to be evidence for it


CLAIM_TERMS = frozenset({"strength", "policy", "ttl_set"})  # the names a mode's `when` reads


@dataclass(frozen=True)
class Lowering:
    """When a runtime's mode counts as satisfying claims: `[lowering]` of the contract."""

    depths: tuple[str, ...]  # strongest first
    kinds: tuple[str, ...]
    mechanisms: tuple[str, ...]
    identity: tuple[str, ...]
    acting: frozenset[str]  # evidence from an observational adapter does not count for these
    read: frozenset[str]  # only evidence read here (a trace, a conformance run) counts for these
    classes: dict[str, str]  # class -> its condition, strongest first
    modes: dict[str, Mode]


@dataclass(frozen=True, eq=False)  # hashed by identity: caches key on the loaded spec
class Spec:
    schema_version: int
    lifecycle: Lifecycle
    feasibility_inputs: tuple[str, ...]
    feasibility_assume: tuple[str, ...]
    outcomes: tuple[Outcome, ...]
    block_classes: tuple[str, ...]
    counter_of: dict[str, str]
    pool_constants: dict[str, str]
    pool_vars: dict[str, str]
    pool_assume: tuple[str, ...]
    pool_init: tuple[str, ...]
    pool_guards: dict[str, str]
    invariants: tuple[Invariant, ...]
    actions: tuple[Action, ...]
    obligations: dict[str, str] = field(default_factory=dict)
    strengths: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    request_initial: str = ""
    claim_outcomes: tuple[str, ...] = ()  # of a request-carried claim: pending, applied, not applied
    request_statuses: dict[str, str] = field(default_factory=dict)
    # record kind -> (statuses it may come from, status it leads to)
    request_moves: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    invalidations: tuple[str, ...] = ()  # operator actions that start a new epoch
    weight_changes: tuple[str, ...] = ()  # those after which every block's KV differs
    lowering: Lowering | None = None

    @property
    def outcome_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes)

    @cached_property
    def request_ends(self) -> frozenset[str]:
        """Statuses no request move leaves: the request's outcome is final."""
        dests = {dest for _, dest in self.request_moves.values()}
        return frozenset(dests - {s for sources, _ in self.request_moves.values() for s in sources})


def _lifecycle(raw: dict) -> Lifecycle:
    states, events, guards = raw["states"], raw["events"], raw["guards"]
    rows = [Transition(*row) for row in raw["transitions"]["rows"]]
    lc = Lifecycle(
        raw["initial"],
        states,
        events,
        guards,
        tuple(raw["terminal"]["states"]),
        tuple(raw["protected"]),
        tuple(raw["loss_events"]),
        tuple(rows),
    )
    for s in (lc.initial, *lc.terminal, *lc.protected):
        if s not in states:
            raise SpecError(f"lifecycle names unknown state {s!r}")
    for e in lc.loss_events:
        if e not in events:
            raise SpecError(f"loss_events names unknown event {e!r}")
    seen = set()
    for t in rows:
        if t.source not in states or t.dest not in states:
            raise SpecError(f"transition {t} names an unknown state")
        if t.event not in events:
            raise SpecError(f"transition {t} names unknown event {t.event!r}")
        if t.guard and t.guard not in guards:
            raise SpecError(f"transition {t} names unknown guard {t.guard!r}")
        if (t.source, t.event) in seen:
            raise SpecError(f"two transitions for ({t.source}, {t.event})")
        seen.add((t.source, t.event))
    return lc


def _lowering(raw: dict) -> Lowering:
    identity = tuple(raw["identity"])
    modes = {
        name: Mode(
            name,
            m["promise"],
            m["when"],
            tuple(dict.fromkeys((*identity, *m["bundle"]))),
            tuple(m["unsound"]),
            tuple(m.get("exercised", ())),
        )
        for name, m in raw["modes"].items()
    }
    return Lowering(
        tuple(raw["depths"]),
        tuple(raw["kinds"]),
        tuple(raw["mechanisms"]),
        identity,
        frozenset(raw["acting"]),
        frozenset(raw["read"]),
        dict(raw["classes"]),
        modes,
    )


def _check_lowering(spec: Spec) -> None:
    low = spec.lowering
    if low is None:
        return
    cited = {*low.acting, *low.read, *(oid for m in low.modes.values() for oid in m.bundle)}
    if cited - set(spec.obligations):
        raise SpecError(f"lowering cites unknown obligations {sorted(cited - set(spec.obligations))}")
    for m in low.modes.values():
        if set(m.exercised) - set(m.bundle):
            raise SpecError(
                f"mode {m.name!r}: exercises obligations outside its bundle {sorted(set(m.exercised) - set(m.bundle))}"
            )
        if set(m.unsound) - set(low.mechanisms):
            raise SpecError(f"mode {m.name!r}: unknown mechanisms {sorted(set(m.unsound) - set(low.mechanisms))}")
        parse(m.when)
        if names(m.when) - CLAIM_TERMS - {"True", "False"}:
            raise SpecError(f"mode {m.name!r}: `when` reads unknown names {sorted(names(m.when) - CLAIM_TERMS)}")


def _check_exprs(spec: Spec) -> None:
    pool_names = {*spec.pool_constants, *spec.pool_vars}
    checks = [(o.when, set(spec.feasibility_inputs)) for o in spec.outcomes]
    checks += [(e, set(spec.feasibility_inputs)) for e in spec.feasibility_assume]
    checks += [(e, pool_names) for e in (*spec.pool_assume, *spec.pool_init)]
    checks += [(i.expr, pool_names) for i in spec.invariants]
    for a in spec.actions:
        scope = pool_names | set(a.params)
        checks += [(g, scope) for g in a.guard] + [(u, scope) for u in a.update.values()]
    for src, scope in checks:
        parse(src)
        unknown = names(src) - scope - {"True", "False"}
        if unknown:
            raise SpecError(f"expression {src!r} uses unknown names {sorted(unknown)}")
    for oid in {i.id for i in spec.invariants}:
        if oid not in spec.obligations:
            raise SpecError(f"invariant cites unknown obligation {oid!r}")


def load_file(path: Path) -> Spec:
    """Load and validate a contract file (tests load mutated copies through this)."""
    with open(path, "rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return from_dict(raw)


def from_dict(raw: dict) -> Spec:
    from kvclaims.spec.pool_actions import normalize_actions

    try:
        lc = _lifecycle(raw["lifecycle"])
        pool, feas = raw["pool"], raw["feasibility"]
        spec = Spec(
            schema_version=raw["schema_version"],
            lifecycle=lc,
            feasibility_inputs=tuple(feas["inputs"]),
            feasibility_assume=tuple(feas["assume"]),
            outcomes=tuple(Outcome(**o) for o in feas["outcomes"]),
            block_classes=tuple(pool["block_classes"]),
            counter_of=dict(pool["counter_of"]),
            pool_constants=dict(pool["constants"]),
            pool_vars=dict(pool["vars"]),
            pool_assume=tuple(pool["assume"]),
            pool_init=tuple(pool["init"]),
            pool_guards=dict(pool["guards"]),
            invariants=tuple(Invariant(**i) for i in pool["invariants"]),
            actions=(),
            obligations=dict(raw["obligations"]),
            strengths=tuple(raw["claims"]["strengths"]),
            policies=tuple(raw["claims"]["policies"]),
            tiers=tuple(raw["claims"]["tiers"]),
            request_initial=raw["requests"]["initial"],
            claim_outcomes=tuple(raw["requests"]["claim_outcomes"]),
            request_statuses=dict(raw["requests"]["statuses"]),
            request_moves={kind: (tuple(sources), dest) for kind, sources, dest in raw["requests"]["moves"]["rows"]},
            invalidations=tuple(raw["invalidation"]["actions"]),
            weight_changes=tuple(raw["invalidation"]["weights"]),
            lowering=_lowering(raw["lowering"]) if "lowering" in raw else None,
        )
        named = {spec.request_initial, *(s for src, dest in spec.request_moves.values() for s in (*src, dest))}
        if not named <= set(spec.request_statuses):
            raise SpecError(f"requests name unknown statuses {sorted(named - set(spec.request_statuses))}")
        if not set(spec.weight_changes) <= set(spec.invalidations):
            raise SpecError("invalidation.weights must be among invalidation.actions")
        missing = set(lc.guards) - set(spec.pool_guards)
        if missing:
            raise SpecError(f"lifecycle guards without a pool reading: {sorted(missing)}")
        spec = Spec(**{**spec.__dict__, "actions": normalize_actions(spec, pool["actions"])})
    except KeyError as exc:
        raise SpecError(f"contract file lacks key {exc}") from None
    except (TypeError, ExprError) as exc:
        raise SpecError(str(exc)) from None
    _check_exprs(spec)
    _check_lowering(spec)
    return spec


@lru_cache(maxsize=1)
def load() -> Spec:
    """The project's contract (cached)."""
    return load_file(CONTRACT_PATH)

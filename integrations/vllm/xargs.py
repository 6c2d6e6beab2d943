"""Per-request claim operations, carried in ``SamplingParams.extra_args``.

The OpenAI-compatible server passes its ``vllm_xargs`` body field through to
``extra_args``, and ``vllm_xargs`` only carries strings, numbers and lists of
them, so the operations are flat ``kvclaims_*`` keys (strings of digits are
accepted where a number is expected, since some clients send everything as
text). Parsing is all-or-nothing: a bad key raises ``InvalidInput`` naming it,
and the scheduler then refuses the whole request with nothing applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kvclaims.errors import InvalidInput
from kvclaims.model.terms import POLICIES, STRENGTHS

PREFIX = "kvclaims_"
KEYS = ("claim", "blocks", "strength", "priority", "ttl", "policy", "release", "no_admit")
# The integration keeps claims on the device tier only: vLLM's CPU backend has no host
# tier it can verify, so the `offload` policy is not applicable here.
VLLM_POLICIES = tuple(p for p in POLICIES if p != "offload")


@dataclass(frozen=True)
class ClaimOp:
    """Claim the first `blocks` full blocks of this request's prompt (None: all of them)."""

    claim_id: str
    blocks: int | None = None
    strength: str = "hard"
    priority: int = 0
    ttl: int | None = None          # engine steps
    policy: str = "refuse"


@dataclass(frozen=True)
class RequestOps:
    claim: ClaimOp | None = None
    release: tuple[str, ...] = ()
    no_admit: bool = False          # write no-admit: the blocks it computes are not cached


def parse(extra_args: Mapping[str, Any] | None) -> RequestOps:
    """The claim operations in `extra_args`; keys without the prefix are left to others."""
    raw = {k[len(PREFIX):]: v for k, v in (extra_args or {}).items() if k.startswith(PREFIX)}
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise InvalidInput(f"unknown claim argument(s) {[PREFIX + k for k in unknown]}; "
                           f"known: {[PREFIX + k for k in KEYS]}")
    claim = None
    if "claim" in raw:
        strength = _choice(raw, "strength", STRENGTHS, "hard")
        policy = _choice(raw, "policy", VLLM_POLICIES, "refuse" if strength == "hard" else "demote")
        if strength == "soft" and policy == "refuse":
            raise InvalidInput(f"{PREFIX}policy: a soft claim cannot refuse requests (use 'demote')")
        claim = ClaimOp(_name(raw["claim"], "claim"), _int(raw, "blocks", 1), strength,
                        _int(raw, "priority", None) or 0, _int(raw, "ttl", 1), policy)
    else:
        orphans = sorted(set(raw) & {"blocks", "strength", "priority", "ttl", "policy"})
        if orphans:
            raise InvalidInput(f"{[PREFIX + k for k in orphans]} given without {PREFIX}claim")
    release = raw.get("release", [])
    release = tuple(_name(r, "release") for r in (release if isinstance(release, list) else [release]))
    no_admit = _bool(raw.get("no_admit", False))
    if claim and no_admit:
        raise InvalidInput(f"{PREFIX}no_admit: a request cannot claim its prefix and refuse to cache it")
    if claim and claim.claim_id in release:
        raise InvalidInput(f"{PREFIX}release: claim {claim.claim_id!r} is made and released by one request")
    return RequestOps(claim, release, no_admit)


def to_xargs(claim: str | None = None, *, blocks: int | None = None, strength: str | None = None,
             priority: int | None = None, ttl: int | None = None, policy: str | None = None,
             release: str | list[str] | tuple[str, ...] = (), no_admit: bool = False) -> dict[str, Any]:
    """The ``extra_args`` / ``vllm_xargs`` dict for these operations, validated here first."""
    fields = {"claim": claim, "blocks": blocks, "strength": strength, "priority": priority,
              "ttl": ttl, "policy": policy,
              "release": [release] if isinstance(release, str) else list(release) or None,
              "no_admit": no_admit or None}
    xargs = {PREFIX + k: v for k, v in fields.items() if v is not None}
    parse(xargs)
    return xargs


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidInput(f"{PREFIX}{key}: a claim id is a non-empty string of at most 256 characters")
    return value


def _choice(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise InvalidInput(f"{PREFIX}{key}: {value!r} is not one of {allowed}")
    return value


def _int(raw: Mapping[str, Any], key: str, minimum: int | None) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise InvalidInput(f"{PREFIX}{key}: expected an integer{bound}, got {raw[key]!r}")
    return value


def _bool(value: Any) -> bool:
    if value in (True, False, 0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise InvalidInput(f"{PREFIX}no_admit: expected a boolean, got {value!r}")

"""Per-request claim operations, carried in ``SamplingParams.extra_args``.

The OpenAI-compatible server passes its ``vllm_xargs`` body field through to
``extra_args``, and ``vllm_xargs`` only carries strings, numbers and lists of
them, so the operations are flat ``kvclaims_*`` keys (strings of digits are
accepted where a number is expected, since some clients send everything as
text). Parsing is all-or-nothing: a bad key raises ``BadArgument`` naming it,
and the request is rejected with nothing applied; `rejection` is what its
client is told, by the engine and by the HTTP front end alike.

When claims belong to tenants, a request names its tenant (``kvclaims_tenant``)
with a seal (``kvclaims_seal``, an HMAC of the tenant under the server's secret
``$KVCLAIMS_TENANT_KEY``). The HTTP front end sets both from the request's
credentials, and the engine accepts a tenant only with its seal: a client cannot
name another tenant, whichever route its request comes in by.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from kvclaims.claimbook import ANONYMOUS
from kvclaims.errors import BadArgument, InvalidField, KVClaimsError, NotOwner
from kvclaims.model.checks import check_terms
from kvclaims.model.names import POLICY

PREFIX = "kvclaims_"
KEYS = (
    "claim",
    "blocks",
    "strength",
    "priority",
    "ttl",
    "ttl_s",
    "policy",
    "tiers",
    "release",
    "no_admit",
    "tenant",
    "seal",
    "inject_host_fault",
    "query",
    "client",
)
CLAIM_TERMS = ("blocks", "strength", "priority", "ttl", "ttl_s", "policy", "tiers")
# Claim ids and tenants: short, and free of the separators of a refusal's stop_reason.
NAME = re.compile(r"[\w.@/+=~-]{1,256}", re.ASCII)
INTEGER = re.compile(r"-?[0-9]+")
INT32 = 2**31  # block counts are 32-bit, as priorities and TTLs are (`kvclaims.model.terms`)
TTL_S = 2**31  # wall-clock TTLs (seconds) lie in (0, 2**31), as step TTLs do
ALL = "*"  # a query for every claim the tenant owns (no claim id has a "*")
CLIENT_ID = re.compile(r"[\x21-\x7e]{1,256}", re.ASCII)  # printable, no spaces: an id a client's logs can join on
KEY_ENV = "KVCLAIMS_TENANT_KEY"


@dataclass(frozen=True)
class ClaimOp:
    """Claim the first `blocks` full blocks of this request's prompt (None: all of them)."""

    claim_id: str
    blocks: int | None = None
    strength: str = "hard"
    priority: int = 0
    ttl: int | None = None  # engine steps
    policy: str = POLICY.refuse
    tiers: tuple[str, ...] = ("device",)  # ("device", "host") with policy offload
    ttl_s: float | None = None  # wall-clock seconds (`kvclaims.vllm.wallclock`)


@dataclass(frozen=True)
class RequestOps:
    claim: ClaimOp | None = None
    release: tuple[str, ...] = ()
    no_admit: bool = False  # write no-admit: the blocks it computes are not cached
    tenant: str = ANONYMOUS  # who owns the claims it makes and may release
    inject_host_fault: str | None = None  # an operator's fault (testing): corrupt this block's host copy
    query: str | None = None  # control request: read this claim (ALL: list), release at once, run nothing
    client: str | None = None  # the request id its client sees (set by the front end), traced beside vLLM's


def parse(extra_args: Mapping[str, Any] | None, *, tenant_key: bytes | None = None) -> RequestOps:
    """The claim operations in `extra_args`; keys without the prefix are left to others.
    With a `tenant_key` (claims belong to tenants), a request that makes or releases
    claims must name its tenant, sealed under that key; without, none may."""
    if not isinstance(extra_args or {}, Mapping):
        raise BadArgument("extra_args", f"expected a mapping, got {type(extra_args).__name__}")
    raw = {k[len(PREFIX) :]: v for k, v in (extra_args or {}).items() if isinstance(k, str) and k.startswith(PREFIX)}
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise BadArgument(PREFIX + unknown[0], f"unknown claim argument; known: {[PREFIX + k for k in KEYS]}")
    orphans = [k for k in CLAIM_TERMS if k in raw and "claim" not in raw]
    if orphans:
        raise BadArgument(PREFIX + orphans[0], f"given without {PREFIX}claim")
    claim = _claim(raw) if "claim" in raw else None
    release = _release(raw)
    no_admit = _bool(raw.get("no_admit", False), "no_admit")
    if claim and no_admit:
        raise BadArgument(PREFIX + "no_admit", "a request cannot claim its prefix and refuse to cache it")
    if claim and claim.claim_id in release:
        raise BadArgument(PREFIX + "release", f"claim {claim.claim_id!r} is made and released by one request")
    fault = raw.get("inject_host_fault")
    if fault is not None and (not isinstance(fault, str) or not fault or claim or release or no_admit):
        raise BadArgument(
            PREFIX + "inject_host_fault", "must be a block hash (hex, as traced), in a request of its own"
        )
    query = _query(raw, claim is not None or no_admit or fault is not None)
    client = raw.get("client")
    if client is not None and (not isinstance(client, str) or not CLIENT_ID.fullmatch(client)):
        raise BadArgument(PREFIX + "client", f"expected 1 to 256 printable characters without spaces, got {client!r}")
    tenant = _tenant(raw, tenant_key, claim is not None or bool(release) or query is not None)
    return RequestOps(claim, release, no_admit, tenant, fault, query, client)


def to_xargs(
    claim: str | None = None,
    *,
    blocks: int | None = None,
    strength: str | None = None,
    priority: int | None = None,
    ttl: int | None = None,
    ttl_s: float | None = None,
    policy: str | None = None,
    tiers: list[str] | tuple[str, ...] | None = None,
    release: str | list[str] | tuple[str, ...] = (),
    no_admit: bool = False,
    query: str | None = None,
    client: str | None = None,
    tenant: str | None = None,
    tenant_key: bytes | None = None,
) -> dict[str, Any]:
    """The ``extra_args`` / ``vllm_xargs`` dict for these operations, validated here first
    (with `tenant_key`, for `tenant` and sealed: what a trusted caller in process sends)."""
    fields = {
        "claim": claim,
        "blocks": blocks,
        "strength": strength,
        "priority": priority,
        "ttl": ttl,
        "ttl_s": ttl_s,
        "policy": policy,
        "tiers": list(tiers) if tiers is not None else None,
        "release": [release] if isinstance(release, str) else list(release) or None,
        "no_admit": no_admit or None,
        "query": query,
        "client": client,
        "tenant": tenant,
        "seal": seal(tenant_key, tenant) if tenant is not None and tenant_key else None,
    }
    xargs = {PREFIX + k: v for k, v in fields.items() if v is not None}
    parse(xargs, tenant_key=tenant_key)
    return xargs


def server_key(tenants: bool) -> bytes | None:
    """The server's sealing secret when claims belong to tenants: ``$KVCLAIMS_TENANT_KEY``,
    which the API server and the engine processes share (None: single-tenant)."""
    if not tenants:
        return None
    key = os.environ.get(KEY_ENV, "")
    if len(key) < 16:
        raise BadArgument(
            KEY_ENV,
            "claims that belong to tenants need a secret of at least 16 "
            "characters in the API server's and the engine's environment",
        )
    return key.encode()


def seal(key: bytes, tenant: str) -> str:
    return hmac.new(key, tenant.encode(), hashlib.sha256).hexdigest()


def rejection(exc: KVClaimsError) -> dict[str, Any]:
    """What the client of a rejected request is told: the error, its type, the field it
    names (when one does) and the HTTP status the front end answers with (403 for another
    tenant's claim, else 400: the payload was wrong)."""
    return {
        "error": str(exc),
        "type": type(exc).__name__,
        "field": getattr(exc, "field", None),
        "status": 403 if isinstance(exc, NotOwner) else 400,
    }


def _claim(raw: Mapping[str, Any]) -> ClaimOp:
    """The claim's terms, checked by the validator every runtime uses
    (`kvclaims.model.checks.check_terms`), its errors renamed to the request's keys."""
    claim_id, blocks = _name(raw["claim"], "claim"), _int(raw, "blocks", range(1, INT32))
    strength, policy = raw.get("strength", "hard"), raw.get("policy")
    priority, ttl = _int(raw, "priority") or 0, _int(raw, "ttl")
    default = ["device", "host"] if policy == POLICY.offload else ["device"]
    tiers = raw.get("tiers", default)  # (a JSON list)
    try:
        tiers, policy = check_terms(f"claim {claim_id!r}", strength, priority, ttl, tiers, policy)
    except InvalidField as exc:
        raise BadArgument(PREFIX + exc.field, exc.problem) from None
    return ClaimOp(claim_id, blocks, strength, priority, ttl, policy, tuple(tiers), _seconds(raw))


def _seconds(raw: Mapping[str, Any]) -> float | None:
    """``kvclaims_ttl_s``: a wall-clock TTL in seconds, a number in (0, 2**31) (digits in a
    string taken, as for the integers)."""
    value = raw.get("ttl_s")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < TTL_S:
        raise BadArgument(PREFIX + "ttl_s", f"expected seconds, a number in (0, {TTL_S}), got {raw['ttl_s']!r}")
    return float(value)


def _query(raw: Mapping[str, Any], other_ops: bool) -> str | None:
    """``kvclaims_query``: a claim id, or ``"*"`` for every claim of the tenant. A control
    request reads (and may release) and runs nothing, so it carries no other operation."""
    if "query" not in raw:
        return None
    if other_ops:
        raise BadArgument(PREFIX + "query", "a query runs nothing: it carries no claim, no_admit or fault")
    return ALL if raw["query"] == ALL else _name(raw["query"], "query")


def _release(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = raw.get("release", [])
    names = [_name(r, "release") for r in (value if isinstance(value, list) else [value])]
    if "release" in raw and not names:
        raise BadArgument(PREFIX + "release", "names no claim")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadArgument(PREFIX + "release", f"claim {twice[0]!r} is released twice")
    return tuple(names)


def _tenant(raw: Mapping[str, Any], key: bytes | None, needed: bool) -> str:
    if key is None:
        given = [k for k in ("tenant", "seal") if k in raw]
        if given:
            raise BadArgument(
                PREFIX + given[0], "this engine has no tenants (additional_config kvclaims.tenants is off)"
            )
        return ANONYMOUS
    if "tenant" not in raw and not needed:
        return ANONYMOUS
    if "tenant" not in raw:
        raise BadArgument(
            PREFIX + "tenant",
            "missing: claims belong to tenants here; over HTTP the "
            "front end sets it from the credentials (--middleware "
            "kvclaims.vllm.frontend.ClaimsMiddleware, on /v1/completions and "
            "/v1/chat/completions)",
        )
    tenant = _name(raw["tenant"], "tenant")
    if not hmac.compare_digest(str(raw.get("seal", "")).encode(), seal(key, tenant).encode()):
        raise BadArgument(
            PREFIX + "seal",
            f"tenant {tenant!r} is not sealed by this server's front end, "
            "which sets the tenant from the request's credentials",
        )
    return tenant


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise BadArgument(PREFIX + key, f"expected 1 to 256 letters, digits or ._@/+=~-, got {value!r}")
    return value


def _int(raw: Mapping[str, Any], key: str, bounds: range | None = None) -> int | None:
    """`raw[key]` as an int (None if absent): digits in a string and whole floats are
    taken, as some clients send them; `bounds` checked here when the term is not a claim
    term `check_terms` bounds."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadArgument(PREFIX + key, f"expected an integer, got {raw[key]!r}")
    if bounds is not None and value not in bounds:
        raise BadArgument(PREFIX + key, f"expected an integer in [{bounds.start}, {bounds.stop - 1}], got {raw[key]!r}")
    return value


def _bool(value: Any, key: str) -> bool:
    if type(value) in (bool, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise BadArgument(PREFIX + key, f"expected a boolean, got {value!r}")

"""The runtime adapter protocol: what a runtime exposes to be tested against the contract.

The litmus suite, the stateful (model-based) test, `kvclaims fuzz` and
`kvclaims conform` drive runtimes only through this protocol. Operations a
runtime cannot express are absent from its `capabilities`, and tests that need
them report "not applicable" instead of passing silently. What a runtime does
where the contract leaves it free, it declares in its `profile`, which the
oracle follows (`kvclaims.model.adoption`).
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Hashable, Mapping, Protocol, Sequence, runtime_checkable

from kvclaims.errors import BadArgument, InvalidInput
from kvclaims.model.feasibility import Decision, PoolCounts
from kvclaims.model.profile import RuntimeProfile

# Optional operations, by name. A runtime lists the ones it supports.
CAPABILITIES = (
    "host_tier",  # claims may offload to / restore from a host tier
    "reset_cache",  # reset_prefix_cache()
    "evict_blocks",  # evict_blocks(hashes): a connector's invalid-KV report
    "device_fault",  # inject_device_fault(hash)
    "host_fault",  # inject_host_fault(hash)
    "verify_content",  # verify_prefix(tokens): KV content can be checked exactly
    "owner_ops",  # demote_claim / offload_claim / restore_claim on an owner's request
    "decode",  # decode(request_id, tokens): a running request grows by generated tokens
    "verify_request",  # verify_request(request_id): the blocks a request holds hold exactly its KV
    "request_claims",  # submit_request(id, tokens, claim={"id": ..., **terms}) and
    # claim_outcome(id): a claim the request carries, applied at admission
    "state_digest",  # state_digest(): all of the runtime's state, so "nothing changed" is checked whole
    "check_valid",  # check_valid(): the runtime walks its own structures, after every step
)


@runtime_checkable
class RuntimeAdapter(Protocol):
    """A runtime under test. Every rejected call raises a kvclaims typed error and changes nothing."""

    U: int  # usable device blocks
    B: int  # tokens per block
    R: int  # the reserve
    host_blocks: int  # host-tier capacity in blocks (0: none)
    capabilities: frozenset[str]
    # Optional: `profile: RuntimeProfile`, what the runtime does where the contract leaves it
    # free (see `profile_of`).

    def block_hashes(self, tokens: Sequence[int]) -> list[str]:
        """Hashes of the full blocks of `tokens`, as the runtime's block table names them."""

    def submit_claim(
        self,
        claim_id: str,
        prefix: Sequence[int],
        *,
        strength: str = "hard",
        priority: int = 0,
        ttl: int | None = None,
        tiers: Sequence[str] = ("device",),
        policy: str | None = None,
    ) -> str:
        """Submit a claim on a whole-block prefix; returns its lifecycle state."""

    def release_claim(self, claim_id: str) -> None: ...

    def claim_state(self, claim_id: str) -> str: ...

    def submit_request(self, request_id: str, tokens: Sequence[int]) -> Decision:
        """Submit a prompt: admitted, waiting, or refused now (with attribution)."""

    def request_status(self, request_id: str) -> str:
        """waiting | running | refused | finished | aborted"""

    def hit_blocks(self, request_id: str) -> int:
        """How many prompt blocks an admitted request reused from the cache."""

    def finish(self, request_id: str, admit: bool = True) -> None:
        """End a running request; admit=False is write no-admit."""

    def abort(self, request_id: str) -> None: ...

    def step(self, ticks: int = 1) -> None:
        """Advance the logical clock (TTL expiry), retrying waiting requests."""

    def resident(self) -> set[str]:
        """The device block table now: hashes resident and reusable."""

    def counts(self) -> PoolCounts:
        """Device blocks by class, as the runtime's own block table has them."""

    def trace_lines(self, start: int = 0) -> list[str]:
        """The JSONL trace from record `start` on."""


def profile_of(runtime: RuntimeAdapter) -> RuntimeProfile:
    """The runtime's declared profile; one that declares none behaves plainly."""
    profile = getattr(runtime, "profile", RuntimeProfile())
    if not isinstance(profile, RuntimeProfile):
        raise InvalidInput(f"runtime {type(runtime).__name__}: profile must be a RuntimeProfile, got {profile!r}")
    return profile


# The operations behind the capabilities, for a caller that narrows a runtime listing one
# (`isinstance(rt, Decodes)`).
@runtime_checkable
class ResetsCache(Protocol):  # reset_cache
    def reset_prefix_cache(self) -> None: ...


@runtime_checkable
class EvictsBlocks(Protocol):  # evict_blocks
    def evict_blocks(self, hashes: Sequence[str]) -> None: ...


@runtime_checkable
class DeviceFaults(Protocol):  # device_fault
    def inject_device_fault(self, h: str) -> None: ...


@runtime_checkable
class HostFaults(Protocol):  # host_fault
    def inject_host_fault(self, h: str) -> None: ...


@runtime_checkable
class VerifiesContent(Protocol):  # verify_content
    def verify_prefix(self, tokens: Sequence[int]) -> bool: ...


@runtime_checkable
class OwnerOps(Protocol):  # owner_ops
    def demote_claim(self, claim_id: str) -> None: ...

    def offload_claim(self, claim_id: str) -> None: ...

    def restore_claim(self, claim_id: str) -> None: ...


@runtime_checkable
class Decodes(Protocol):  # decode
    def decode(self, request_id: str, tokens: Sequence[int]) -> Decision: ...


@runtime_checkable
class VerifiesRequests(Protocol):  # verify_request
    def verify_request(self, request_id: str) -> bool: ...


@runtime_checkable
class CarriesClaims(Protocol):  # request_claims
    def submit_request(
        self, request_id: str, tokens: Sequence[int], *, claim: Mapping[str, Any] | None = None
    ) -> Decision: ...

    def claim_outcome(self, request_id: str) -> str | None: ...


@runtime_checkable
class DigestsState(Protocol):  # state_digest
    def state_digest(self) -> Hashable:
        """Everything a rejected call must leave as it was, block order and KV bytes included:
        equal before and after exactly when nothing changed (RKC-RT-4)."""


@runtime_checkable
class ChecksItself(Protocol):  # check_valid
    def check_valid(self) -> None:
        """Walk every internal structure (indexes, counts, free lists) against what it is
        derived from; raise AssertionError naming what drifted. Called after every step."""


# Runtimes by short name, resolved by import at load time: the toolkit imports no runtime.
SHORTCUTS = {
    "refimpl": "kvclaims.refimpl.adapter:RefimplAdapter",
    "vllm": "kvclaims.vllm.adapter:VllmAdapter",  # a real in-process vLLM engine
    "vllm-async": "kvclaims.vllm.adapter:AsyncVllmAdapter",  # the same, async scheduling on
    "sglang": "kvclaims.sglang.adapter:SglangAdapter",  # SGLang's own radix cache, claims enforced
    "sglang-stock": "kvclaims.sglang.adapter:StockSglangAdapter",  # the same, claims only witnessed
}


def load_adapter(name: str, **kwargs: Any) -> RuntimeAdapter:
    """A name of `SHORTCUTS` (`refimpl`, `vllm`, `vllm-async`), or `MODULE:CLASS` for any class
    implementing the protocol.

    kwargs are the pool's shape (U, B, R, host_blocks) and are passed to the class. A keyword
    the class does not take, or one it needs and was not given, is a `BadArgument` naming it.
    """
    target = SHORTCUTS.get(name, name)
    if ":" in target:
        module, _, attr = target.partition(":")
        try:
            cls: Any = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise InvalidInput(f"cannot load runtime {name!r}: {exc}") from None
    else:
        raise InvalidInput(f"runtime must be one of {sorted(SHORTCUTS)} or MODULE:CLASS, got {name!r}")
    try:
        runtime = cls(**kwargs)
    except TypeError as exc:
        arg = _argument_error(exc, kwargs)
        if arg is None:
            raise
        raise BadArgument(arg, f"cannot build {name!r}: TypeError: {exc}") from None
    if not isinstance(runtime, RuntimeAdapter):
        missing = [
            m
            for m in ("block_hashes", "submit_claim", "submit_request", "resident", "trace_lines", "capabilities")
            if not hasattr(runtime, m)
        ]
        raise InvalidInput(f"runtime {name!r} does not implement the adapter protocol (missing {missing})")
    return runtime


def _argument_error(exc: TypeError, kwargs: dict[str, Any]) -> str | None:
    """The keyword a constructor's TypeError is about, when Python raised it binding the call:
    one of `kwargs` the class (or a base it forwards them to) does not take, or an argument
    the class itself needs (raised by our own call: no constructor frame ran). Any other
    TypeError is the runtime's own failure, and stays one."""
    message, own_call = str(exc), exc.__traceback__ is not None and exc.__traceback__.tb_next is None
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
    if unexpected and unexpected[1] in kwargs:
        return unexpected[1]
    missing = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: '(\w+)'", message)
    if missing and own_call and missing[1] not in kwargs:
        return missing[1]
    if own_call and kwargs and re.search(r"takes no (?:keyword )?arguments", message):
        return next(iter(kwargs))
    return None


def add_runtime_argument(parser: Any, *, only: str | None = None, help: str | None = None) -> None:
    """`--runtime`, the same for every command that drives a runtime; `only` restricts it to
    that one runtime (its default), for a command that can drive no other, with its own `help`."""
    names = ", ".join(["refimpl", *sorted(set(SHORTCUTS) - {"refimpl"})])
    if help is None:
        help = f"{names} or MODULE:CLASS implementing kvclaims.conformance.adapter.RuntimeAdapter (default refimpl)"
    parser.add_argument("--runtime", default=only or "refimpl", **({"choices": [only]} if only else {}), help=help)


def reference_runtime(**shape: Any) -> RuntimeAdapter:
    """The reference runtime with pool `shape`: the suites' default runtime."""
    return load_adapter("refimpl", **shape)

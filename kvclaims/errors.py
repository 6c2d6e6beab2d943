"""Typed errors. Every rejection leaves the runtime exactly as it was."""
from __future__ import annotations


class KVClaimsError(Exception):
    """Base class: something was rejected; nothing changed."""


class IllegalTransition(KVClaimsError):
    """An event that the lifecycle does not allow in the claim's current state."""

    def __init__(self, claim_id: str, state: str, event: str, allowed: list[str]) -> None:
        self.claim_id, self.state, self.event, self.allowed = claim_id, state, event, allowed
        super().__init__(f"claim {claim_id!r}: event {event!r} is illegal in state {state!r} "
                         f"(allowed: {', '.join(allowed) or 'none, the state is terminal'})")


class GuardRejected(KVClaimsError):
    """A legal event whose guard does not hold (e.g. restore with a checksum mismatch)."""

    def __init__(self, claim_id: str, state: str, event: str, guard: str) -> None:
        self.claim_id, self.state, self.event, self.guard = claim_id, state, event, guard
        super().__init__(f"claim {claim_id!r}: event {event!r} from state {state!r} "
                         f"rejected: guard {guard!r} does not hold")


class InvalidInput(KVClaimsError, ValueError):
    """Bad input: a malformed claim, request or argument. The message says which field."""


class UnknownId(KVClaimsError, KeyError):
    """An operation named a claim or request that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateId(KVClaimsError):
    """A claim or request id that is already in use."""

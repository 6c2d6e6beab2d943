"""Typed errors. Every rejection leaves the runtime exactly as it was."""

from __future__ import annotations


class KVClaimsError(Exception):
    """Base class: something was rejected; nothing changed. `field`: the input field it
    names, when one does (set by a caller that knows which field it judged)."""

    field: str | None = None


class IllegalTransition(KVClaimsError):
    """An event that the lifecycle does not allow in the claim's current state."""

    def __init__(self, claim_id: str, state: str, event: str, allowed: list[str]) -> None:
        self.claim_id, self.state, self.event, self.allowed = claim_id, state, event, allowed
        super().__init__(
            f"claim {claim_id!r}: event {event!r} is illegal in state {state!r} "
            f"(allowed: {', '.join(allowed) or 'none, the state is terminal'})"
        )


class GuardRejected(KVClaimsError):
    """A legal event whose guard does not hold (e.g. restore with a checksum mismatch)."""

    def __init__(self, claim_id: str, state: str, event: str, guard: str) -> None:
        self.claim_id, self.state, self.event, self.guard = claim_id, state, event, guard
        super().__init__(
            f"claim {claim_id!r}: event {event!r} from state {state!r} rejected: guard {guard!r} does not hold"
        )


class InvalidInput(KVClaimsError, ValueError):
    """Bad input: a malformed claim, request or argument. The message says which field."""


class UnknownId(KVClaimsError, KeyError):
    """An operation named a claim or request that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateId(KVClaimsError):
    """A claim or request id that is already in use."""


class BadArgument(InvalidInput):
    """Bad input in one named field (a request's claim argument, a setting): `field` says which."""

    field: str

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class NotOwner(KVClaimsError):
    """An operation on a claim that another tenant owns: only a claim's owner may change it."""


class InvalidField(BadArgument):
    """A bad value in one field of a claim, a request or a call: `where` names which one
    (``claim 'c'``), `field` the field, so a caller can point at the exact input."""

    def __init__(self, where: str, field: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(field, problem)

    def __str__(self) -> str:
        return f"{self.where}: {self.field} {self.problem}"


class NoRoom(InvalidInput):
    """A well-formed operation the tier it needs has no room for (an owner's offload to a
    full host tier, a restore to a full device): retry after room is made."""


class InconsistentCounts(InvalidInput):
    """Block classes that are negative or do not sum to U: given as input, bad input; from a
    runtime's own pool, a block lost or counted twice (block conservation, RKC-INV-3)."""

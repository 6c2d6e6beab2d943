"""A runtime written outside the package, for `--runtime fixture_runtime:ExternalRuntime`.

It implements the adapter protocol by delegating to a reference runtime it owns,
but declares fewer capabilities (no host tier, no faults, no owner operations,
no decode), as a real runtime might: the suite must report the scenarios that
need them as not applicable, and pass the rest. Methods are spelled out, not
forwarded by __getattr__: from Python 3.12 a runtime-checkable Protocol looks
attributes up statically, so forwarded ones would not count.
"""

import dataclasses

from kvclaims.refimpl.adapter import RefimplAdapter


class ExternalRuntime:
    capabilities = frozenset({"verify_content"})

    def __init__(self, U: int, B: int, R: int = 0, host_blocks: int = 0, **kwargs) -> None:
        self._rt = RefimplAdapter(U, B, R, host_blocks=0, **kwargs)
        self.U, self.B, self.R, self.host_blocks = U, B, R, 0  # no host tier, whatever was asked

    def block_hashes(self, tokens):
        return self._rt.block_hashes(tokens)

    def submit_claim(self, claim_id, prefix, **terms):
        return self._rt.submit_claim(claim_id, prefix, **terms)

    def release_claim(self, claim_id):
        self._rt.release_claim(claim_id)

    def claim_state(self, claim_id):
        return self._rt.claim_state(claim_id)

    def submit_request(self, request_id, tokens):
        return self._rt.submit_request(request_id, tokens)

    def request_status(self, request_id):
        return self._rt.request_status(request_id)

    def hit_blocks(self, request_id):
        return self._rt.hit_blocks(request_id)

    def finish(self, request_id, admit=True):
        self._rt.finish(request_id, admit)

    def abort(self, request_id):
        self._rt.abort(request_id)

    def step(self, ticks=1):
        self._rt.step(ticks)

    def resident(self):
        return self._rt.resident()

    def counts(self):
        return self._rt.counts()

    def trace_lines(self, start=0):
        return self._rt.trace_lines(start)

    def verify_prefix(self, tokens):
        return self._rt.verify_prefix(tokens)


class Miscounting(RefimplAdapter):
    """Reports one free block too many: class conservation (RKC-INV-3) fails at the first
    check, so a fuzz run fails at once and its program shrinks to the start."""

    def counts(self):
        return dataclasses.replace(super().counts(), free=super().counts().free + 1)  # raises InconsistentCounts

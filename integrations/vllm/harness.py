"""The claims scheduler driven one operation at a time, for the runtime adapter.

The adapter protocol (`kvclaims.conformance.adapter`) is operation by operation: a request
is decided when it is submitted, holds its prompt's blocks until the test
finishes it, and waiting requests are retried, in order, each on the pool as
the previous one left it, when the logical clock ticks. vLLM's scheduler
batches all of that, so this subclass narrows each engine step to one waiting
request (`only`) and keeps running requests out of the schedule, but for the one the
adapter decodes into (`growing`: it computes the tokens the adapter gave it, nothing
else), and the clock ticks only when the adapter says so. Claims,
arbitration, holds and the trace are the integration's own, unchanged.
"""

from __future__ import annotations

from kvclaims.errors import InvalidInput
from kvclaims.trace import TraceWriter
from kvclaims.vllm.scheduler import ClaimsScheduler


class HarnessScheduler(ClaimsScheduler):
    tick_per_step = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.only: str | None = None  # the one waiting request the next step may schedule
        self.growing: str | None = None  # the one running request the next step may schedule

    def schedule(self, *args, **kwargs):
        running = self.running
        self.running = [r for r in running if r.request_id == self.growing]
        running = [r for r in running if r.request_id != self.growing]
        queued = list(self.waiting)
        others = [r for r in queued if r.request_id != self.only]
        self.waiting.remove_requests(others)
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.running = running + self.running
            still = set(map(id, [*self.waiting, *others]))
            self.waiting.remove_requests(list(self.waiting))
            for r in queued:
                if id(r) in still:
                    self.waiting.add_request(r)

    def restart(self, *, U: int, reserve: int, enforce: bool, host_blocks: int = 0) -> None:
        """An empty pool of U blocks (and an empty host tier of `host_blocks`, when the
        engine runs one) with a fresh claim registry and trace. Live requests must have
        been aborted first (through the engine, so its own state goes too)."""
        if self.requests:
            raise InvalidInput(f"cannot restart with live requests {sorted(self.requests)}")
        self.book.close()
        self.pool.unwithhold()
        if not self.kv_cache_manager.reset_prefix_cache():
            raise InvalidInput("the prefix cache could not be reset")
        if not 1 <= U <= self.pool.U:
            raise InvalidInput(f"U must be in 1..{self.pool.U} (the engine's pool), got {U}")
        tier = self.host_connector()
        if tier is not None:
            tier.reset_cache()
            tier.host.resize(host_blocks)
        elif host_blocks:
            raise InvalidInput("this engine has no host tier (start it with host_bytes)")
        self.start_claims(TraceWriter(), reserve=reserve, enforce=enforce, withhold=self.pool.U - U)

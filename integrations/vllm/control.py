"""The front end's channel to the claim book: control requests.

The claim book lives in the scheduler, in vLLM's engine-core process (one per
data-parallel rank); the API server reaches it only through requests. So the front
end's claim endpoints send a one-token request whose only argument is
``kvclaims_query`` (with ``kvclaims_release`` for a release): the scheduler answers
it at once, unrun, untraced and without moving the logical clock
(`ClaimsScheduler._control`), and vLLM routes it to a rank with ``generate``'s own
``data_parallel_rank``. The same query is the wall-clock TTLs' tick: an idle engine
takes no step, so `Ticker` queries each rank at the next deadline it learns of.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from kvclaims.vllm.xargs import ALL, ANONYMOUS, PREFIX, seal

PROMPT = [0]  # a control request's prompt: it never runs, but vLLM wants one token
SLACK_S = 0.05  # a tick goes this long after the deadline it serves


class Control:
    """Control requests to the engines behind one API server. `size`: data-parallel ranks
    (vLLM routes a request to rank r when ``generate`` is told so); `key`: the sealing
    secret when claims belong to tenants."""

    def __init__(self, engine: Any, size: int, key: bytes | None) -> None:
        self.engine, self.size, self.key = engine, size, key
        self.ticks: dict[int, asyncio.TimerHandle] = {}
        self.due: dict[int, float] = {}  # rank -> when its scheduled tick runs

    async def ask(self, rank: int | None, query: str, tenant: str = ANONYMOUS, **more: Any) -> dict[str, Any]:
        """The engine's note on a query (`query` a claim id or ``"*"``) as `tenant`, sent to
        `rank` (None: no data parallelism): ``{"answer": ...}`` or a rejection (``status``,
        ``type``, ``error``). More ``kvclaims_*`` arguments in `more` (``release=``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        xargs = {PREFIX + "query": query, **{PREFIX + k: v for k, v in more.items()}}
        if self.key:
            xargs |= {PREFIX + "tenant": tenant, PREFIX + "seal": seal(self.key, tenant)}
        params = SamplingParams(max_tokens=1, extra_args=xargs)
        final = None
        rid = f"kvclaims-query-{uuid.uuid4().hex}"
        async for out in self.engine.generate(
            TokensPrompt(prompt_token_ids=PROMPT), params, rid, data_parallel_rank=rank
        ):
            final = out
        note = ((final.kv_transfer_params if final else None) or {}).get("kvclaims") or {}
        if "answer" in note:
            self.tick_at(rank, note["answer"].get("next_deadline"))
        return note

    def ranks(self) -> list[int | None]:
        return list(range(self.size)) if self.size > 1 else [None]

    def tick_at(self, rank: int | None, deadline: float | None) -> None:
        """Make sure `rank` is queried once `deadline` (Unix seconds) has passed: an idle
        engine expires a claim no later than that (`kvclaims.vllm.wallclock`)."""
        if deadline is None:
            return
        key = -1 if rank is None else rank
        if key in self.due and self.due[key] <= deadline + SLACK_S:
            return
        if key in self.ticks:
            self.ticks[key].cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.time()) + SLACK_S
        self.due[key] = time.time() + delay
        self.ticks[key] = loop.call_later(delay, lambda: self._tick(rank, key))

    def _tick(self, rank: int | None, key: int) -> None:
        self.ticks.pop(key, None)
        self.due.pop(key, None)
        asyncio.ensure_future(self.ask(rank, ALL))

"""What the engine told each request, kept in the API server for the front end.

The scheduler reports a request's claim outcome (its refusal and the blocking claims,
its claims' states) in its final output: ``stop_reason`` and
``kv_transfer_params["kvclaims"]``. vLLM's serving code then drops part of it: a
streamed choice that ends with no token (every refusal) sends no chunk at all ("don't
return empty chunks"), stream chunks never carry ``kv_transfer_params``, and a
non-streamed response carries only its first prompt's. vLLM has no hook on the outputs
in the API server process, so `Outcomes.install` wraps the engine client's
``generate`` (on the instance, as the scheduler wraps the prefix index) to keep, per
request id and choice index, the finished choice's outcome; the front end takes it
when it answers (`kvclaims.vllm.streams`). Bounded: entries nobody takes (another
route's requests) are dropped oldest first past `LIMIT`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, AsyncIterator

LIMIT = 16384  # requests whose outcome is kept at once
STOCK = "_kvclaims_stock_generate"


class Outcomes:
    def __init__(self) -> None:
        self.kept: OrderedDict[str, dict[int, dict[str, Any]]] = OrderedDict()

    def install(self, engine: Any) -> None:
        """Wrap `engine.generate` (once per engine client) to record outcomes here."""
        if STOCK in vars(engine):
            return
        stock = engine.generate
        setattr(engine, STOCK, stock)

        async def generate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            async for out in stock(*args, **kwargs):
                self.record(out)
                yield out

        engine.generate = generate

    def record(self, out: Any) -> None:
        """Keep the outcome of each finished choice of `out` that the integration decided
        or reported on (a ``kvclaims:`` stop reason or a kvclaims note)."""
        params = getattr(out, "kv_transfer_params", None) or {}
        note = params.get("kvclaims") if isinstance(params, dict) else None
        outputs = [o for o in getattr(out, "outputs", None) or [] if getattr(o, "finish_reason", None)]
        for o in outputs:
            stop = o.stop_reason if isinstance(o.stop_reason, str) else None
            mine = note if len(outputs) == 1 else None  # (an aggregate carries one child's note)
            if mine is None and not (stop or "").startswith("kvclaims:"):
                continue
            self.kept.setdefault(out.request_id, {})[o.index] = {
                "finish_reason": o.finish_reason,
                "stop_reason": stop,
                "kvclaims": mine if mine is not None else attribution(stop),
            }
            self.kept.move_to_end(out.request_id)
        while len(self.kept) > LIMIT:
            self.kept.popitem(last=False)

    def take(self, request_id: str) -> dict[int, dict[str, Any]]:
        """The kept outcomes of `request_id`'s choices, by index, forgotten here."""
        return self.kept.pop(request_id, {})


def attribution(stop_reason: str | None) -> dict[str, Any] | None:
    """A choice's attribution from its stop reason (``kvclaims:<outcome>[:<claims>]``, the
    scheduler's), when no note of its own reached the API server."""
    parts = (stop_reason or "").split(":")
    if len(parts) < 2 or parts[0] != "kvclaims":
        return None
    if parts[1] == "rejected":
        return {"rejected": parts[2] if len(parts) > 2 else None}
    if parts[1].startswith("refuse"):
        return {"refused": parts[1], "blocking_claims": parts[2].split(",") if len(parts) > 2 and parts[2] else []}
    return {parts[1]: True}

"""Claim telemetry as Prometheus metrics, served on vLLM's own ``/metrics``.

The scheduler runs in vLLM's engine-core process, the HTTP server in another.
Prometheus' multiprocess mode joins them: start the server with
``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory, and vLLM's ``/metrics``
(which then reads that directory) includes these series; without it they are
out of reach, and the engine core says so once (`unjoined`). In-process (offline
``LLM``) they land in the default registry. Metric objects are created once
per process, since a registry rejects duplicate names.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from functools import lru_cache

from prometheus_client import Counter, Gauge

from kvclaims.spec import Spec
from kvclaims.model.names import EVENT

log = logging.getLogger(__name__)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
RANK = "dp_rank"  # every series is per data-parallel engine (0 without data parallelism)


@lru_cache(maxsize=1)
def _series() -> tuple[Gauge, Counter, Counter, Counter, Counter]:
    return (
        Gauge("kvclaims_claims", "Resident KV claims by lifecycle state", ["state", RANK], multiprocess_mode="livesum"),
        Counter("kvclaims_claim_events", "Claim lifecycle events", ["event", RANK]),
        Counter("kvclaims_request_refusals", "Requests refused by the feasibility predicate", ["reason", RANK]),
        Counter(
            "kvclaims_claim_harms",
            "Claims whose resident state an operator action or an invalid KV load removed (harm/fail events)",
            ["event", "reason", RANK],
        ),
        Counter("kvclaims_claim_refusals", "Claims refused at submission (refuse events)", ["reason", RANK]),
    )


def unjoined() -> str | None:
    """Why these series cannot reach any ``/metrics``, if they cannot: in a child process
    (vLLM's engine core, under its server or a multiprocess ``LLM``) without Prometheus'
    multiprocess directory they stay in that process's own registry, which nothing reads.
    In-process they are in the default registry, and readable."""
    if os.environ.get(MULTIPROC_DIR) or multiprocessing.parent_process() is None:
        return None
    return (
        f"kvclaims: {MULTIPROC_DIR} is not set, so the claim metrics (kvclaims_*) stay in vLLM's "
        f"engine-core process (pid {os.getpid()}) and never reach the server's /metrics; start the "
        f"server with {MULTIPROC_DIR} set to an empty directory, e.g. {MULTIPROC_DIR}=$(mktemp -d)"
    )


@lru_cache(maxsize=1)
def _warn_if_unjoined() -> None:
    """Once per process: an engine may be rebuilt (a test, a reset), the advice is the same."""
    problem = unjoined()
    if problem:
        log.warning(problem)


class ClaimMetrics:
    def __init__(self, spec: Spec, rank: int = 0) -> None:
        _warn_if_unjoined()
        self.claims, self.events, self.refusals, self.harms, self.claim_refusals = _series()
        self.rank = str(rank)
        self.count = dict.fromkeys(spec.lifecycle.states, 0)  # claims by state, kept as they move
        for s in self.count:
            self.claims.labels(state=s, dp_rank=self.rank).set(0)

    def added(self, state: str) -> None:
        self._move(None, state)

    def event(self, event: str, reason: str | None, before: str, after: str) -> None:
        self.events.labels(event=event, dp_rank=self.rank).inc()
        if event in (EVENT.harm, EVENT.fail):
            self.harms.labels(event=event, reason=reason or "", dp_rank=self.rank).inc()
        elif event == EVENT.refuse:
            self.claim_refusals.labels(reason=reason or "", dp_rank=self.rank).inc()
        self._move(before, after)

    def _move(self, before: str | None, after: str) -> None:
        """Only the two states that changed are written: an event costs O(1), not O(claims)."""
        if before == after:
            return
        for s, d in ((before, -1), (after, 1)):
            if s is not None:
                self.count[s] += d
                self.claims.labels(state=s, dp_rank=self.rank).set(self.count[s])

    def refusal(self, reason: str) -> None:
        self.refusals.labels(reason=reason, dp_rank=self.rank).inc()

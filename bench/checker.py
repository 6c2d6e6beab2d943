"""Trace checker throughput (figure 5): events/s on a generated trace, and its memory.

The trace is generated straight from the spec's lifecycle table: claims walk
random legal paths to a terminal state, and every state that needs its blocks in
a tier gets them there first (a request computing them, an offload, a restore)
and gives them up after (an eviction), so the trace checks clean. Requests
wait, grow, hit, finish, abort and are refused with and without attribution.
The baseline reads and json-parses every line of the same file (`trace.loads`,
json's C scanner): what a checker on the standard library's json spends before it
checks anything, and what ours spends only on a line its typed decoder (msgspec,
`kvclaims.conformance.records`) refuses. Memory is tracemalloc's peak over a whole
check of 10^5 and of 10^6 events, streaming (flat: a block of lines at a time), and
keeping every outcome at 10^5 for contrast.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import IO, Callable

from kvclaims.bench.ratio import Ratio, interleaved
from kvclaims.conformance.checker import Checker, check_file, needed_tiers
from kvclaims.trace import loads
from kvclaims.spec import Spec, load
from kvclaims.model.names import POLICY

TARGET = 1_000_000  # events/s


class _Writer:
    """Stamps the envelope, writes one JSON line per record, and hands out fresh ids and hashes."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh, self.seq, self.time, self.serial = fh, 0, 0, 0

    def __call__(self, kind: str, **fields) -> None:
        self.fh.write(
            json.dumps({"schema_version": 1, "seq": self.seq, "time": self.time, "kind": kind, **fields}) + "\n"
        )
        self.seq += 1
        self.time += self.seq % 16 == 0

    def fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def hashes(self, n: int) -> list[str]:
        self.serial += n
        return [f"{(i * 0x9E3779B97F4A7C15) % (1 << 128):032x}" for i in range(self.serial - n, self.serial)]


class _Plan:
    """What the generator reads off the spec, once: the moves from each state, the tier
    each state needs, and a capacity refusal outcome."""

    def __init__(self, spec: Spec) -> None:
        lc = self.lc = spec.lifecycle
        self.moves = {s: [t for t in lc.transitions if t.source == s] for s in lc.states}
        self.tier_of = needed_tiers(spec)
        self.capacity = next(o for o in Checker(spec).refusals if o != "refuse_blocked")


class _Lane:
    """One claim at a time walking the lifecycle, with the block and request records it implies."""

    def __init__(self, plan: _Plan, out: _Writer, rng: random.Random) -> None:
        self.plan, self.lc, self.out, self.rng = plan, plan.lc, out, rng
        self._new_claim()

    def _new_claim(self) -> None:
        self.cid, self.state, self.steps = self.out.fresh("c"), self.lc.initial, 0
        self.blocks = self.out.hashes(self.rng.randint(2, 6))
        self.held: set[str] = set()
        self.out(
            "claim_submit",
            claim=self.cid,
            blocks=self.blocks,
            strength="hard",
            priority=0,
            ttl=None,
            tiers=["device", "host"],
            policy=POLICY.offload,
        )

    def step(self) -> None:
        """One lifecycle event, with what it implies; a new claim after a terminal state.
        Walks end (a terminal event) with odds 0.15 a step, and after 9 steps for sure."""
        if self.state in self.lc.terminal:
            return self._new_claim()
        ending = self.steps > 8 or self.rng.random() < 0.15
        moves = self.plan.moves[self.state]
        t = self.rng.choice([t for t in moves if (t.dest in self.lc.terminal) == ending] or moves)
        need = self.plan.tier_of.get(t.dest)
        if need and need not in self.held:
            self._bring(need)
        self.out("claim", claim=self.cid, event=t.event, state=t.dest, reason="bench")
        self.state, self.steps = t.dest, self.steps + 1
        for tier in sorted(self.held - {need}):
            self.out("block_evict", blocks=self.blocks, tier=tier, reason=t.event)
            self.held.discard(tier)
        if need == "device":
            self._requests()

    def _bring(self, tier: str) -> None:
        if tier == "host":
            self.out("block_offload", claim=self.cid, blocks=self.blocks, tier="host")
        elif "host" in self.held:
            self.out("block_restore", claim=self.cid, blocks=self.blocks, tier="device")
        else:
            rid = self._request()
            self.out("request_admit", request=rid, hit_blocks=[], new_blocks=len(self.blocks))
            self.out("block_store", request=rid, blocks=self.blocks, tier="device")
            self.out("request_finish", request=rid, admit=True)
        self.held.add(tier)

    def _request(self) -> str:
        rid = self.out.fresh("r")
        self.out("request_submit", request=rid, tokens=16 * len(self.blocks), blocks=self.blocks)
        return rid

    def _requests(self) -> None:
        """While the claim protects its blocks: a refusal naming it, a capacity refusal, or a
        hit (after a wait, or not) that grows and finishes (with or without admit) or aborts."""
        rid = self._request()
        pick = self.rng.randrange(4)
        if pick == 0:
            self.out("request_refuse", request=rid, reason="refuse_blocked", blocking_claims=[self.cid])
        elif pick == 1:
            self.out("request_refuse", request=rid, reason=self.plan.capacity, blocking_claims=[])
        else:
            if pick == 2:
                self.out("request_wait", request=rid, new_blocks=1)
            self.out("request_admit", request=rid, hit_blocks=self.blocks, new_blocks=1)
            self.out("request_grow", request=rid, tokens=1, new_blocks=0)
            if self.rng.random() < 0.1:
                self.out("request_abort", request=rid)
            else:
                self.out("request_finish", request=rid, admit=pick == 3)


def generate(path: Path, events: int, lanes: int = 32, seed: int = 0) -> int:
    """Write a clean trace of at least `events` records to `path`; return the count.

    `lanes` claims are live at a time, so the checker's live state stays flat."""
    rng, plan = random.Random(seed), _Plan(load())
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        out = _Writer(fh)
        out("runtime", runtime="bench", U=4096, B=16, R=0, host_blocks=4096, device="none")
        pool = [_Lane(plan, out, rng) for _ in range(lanes)]
        while out.seq < events:
            pool[rng.randrange(lanes)].step()
    return out.seq


def _stream(path: Path) -> int:
    """The checker as `kvclaims check --stream` runs it; the trace must check clean."""
    report = check_file(path, on_end=lambda what, ident, outcome: None)
    if not report.ok:
        raise AssertionError(f"generated trace does not check clean: {report.violations[:3]}")
    return report.records


def _parse_only(path: Path) -> None:
    """The baseline: read and parse every line, nothing else."""
    with open(path, "rb") as fh:
        for line in fh:
            loads(line)


def _peak_bytes(path: Path, streaming: bool) -> int:
    """Peak Python memory allocated while checking `path` (tracemalloc)."""
    tracemalloc.start()
    try:
        check_file(path, on_end=(lambda *_: None) if streaming else None)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(smoke: bool = False) -> list[Ratio]:
    """The checker against parsing alone, and its events per CPU-second against the target.
    Both in CPU time, so other work on a busy machine does not count; wall rates in `extra`."""
    events = 5_000 if smoke else 1_000_000
    wall: dict[str, list[float]] = {"baseline": [], "ours": []}
    cpu: dict[str, list[float]] = {"baseline": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        small, big = Path(tmp) / "small.jsonl", Path(tmp) / "big.jsonl"
        m = generate(small, events // 10)
        t0 = time.perf_counter()
        n = generate(big, events)
        generated = time.perf_counter() - t0

        def timed(name: str, fn: Callable[[Path], object]) -> Callable[[], None]:
            def call() -> None:
                w, c = time.perf_counter(), time.process_time()
                fn(big)
                wall[name].append(n / (time.perf_counter() - w))
                cpu[name].append(n / (time.process_time() - c))

            return call

        r = interleaved(
            f"trace checker on a generated trace of {n:,} events",
            ("read + json-parse every line", timed("baseline", _parse_only)),
            ("kvclaims checker, streaming (kvclaims check --stream)", timed("ours", _stream)),
            rounds=3,
        )
        memory = {
            f"streaming_{m}": _peak_bytes(small, True),
            f"streaming_{n}": _peak_bytes(big, True),
            f"keeping_outcomes_{m}": _peak_bytes(small, False),
        }
    r.ratios = [b / o for b, o in zip(cpu["baseline"], cpu["ours"])]  # rates, so baseline / ours
    r.unit = "CPU-time ratio (ours / baseline)"
    r.extra = {
        "events": n,
        "events_per_s": round(statistics.median(wall["ours"])),
        "events_per_cpu_s": round(statistics.median(cpu["ours"])),
        "baseline_events_per_s": round(statistics.median(wall["baseline"])),
        "baseline_events_per_cpu_s": round(statistics.median(cpu["baseline"])),
        "generate_s": round(generated, 2),
        "peak_bytes": memory,
    }
    throughput = Ratio(
        f"trace checker throughput, {n:,} events",
        f"the figure's target, {TARGET:,} events/s",
        r.ours,
        [x / TARGET for x in cpu["ours"]],
        unit=f"events per CPU-second / {TARGET:,}",
        target=">= 1",
    )
    return [r, throughput]

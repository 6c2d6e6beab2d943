"""`kvclaims probe --runtime vllm|sglang|refimpl [--usable [LIST] [--resident N] [--prefill N]] [--json]`.

Without --usable, the paper's probe on a real runtime: vLLM four ways (the fourth: a restore
failure through vLLM's offload/load path, the follow-up paper's witness) on two in-process
engines, stock and with the integration, over the tiny local model (built on first use, cached
outside the repository); SGLang's own radix cache on CPU, stock (the prefix in one tree node,
and in six) and with a hard claim (`kvclaims.sglang.probe`).

With --usable, the capacity sweep of arXiv 2606.01387's artifacts
(gustavgauge/kv-residency-vllm-arbiter; the defaults: a 60-block resident prefix, a 70-block
prefill, usable pools of 80, 90, 100, 110, 120, 130 and 150 blocks). At each size the resident
is computed and replayed, an unrelated prefill runs and the resident is replayed again, three
ways: stock (plain prefix caching), write no-admit (the prefill's blocks kept out of the cache)
and a hard claim on the resident. Usable blocks are those the runtime allocates from: vLLM's
pool has one more, its null block (`kvclaims.vllm.probe.Sweep`); SGLang's are its allocator's
pages and the reference runtime's its U blocks (`AdapterSweep`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Protocol

from kvclaims.columns import columns
from kvclaims.errors import BadArgument, InvalidInput
from kvclaims.model.feasibility import Decision

RESIDENT, PREFILL = 60, 70  # the paper's probe: blocks of the resident prefix and of the prefill
USABLE = "80,90,100,110,120,130,150"  # the follow-up paper's sweep of usable pool sizes, in blocks
CLAIM = "resident"  # the hard claim's id
# The sweep's legs: name -> (label, `leg` keywords). Names are the vLLM probe's.
LEGS: dict[str, tuple[str, dict[str, bool]]] = {
    "stock": ("stock", {}),
    "no_admit": ("write no-admit", {"no_admit": True}),
    "hard_claim": ("hard claim", {"claim": True}),
}
Measured = tuple[int, Decision, int, str | None]  # replay hits before, prefill decision, hits after, claim state


class Legs(Protocol):
    """What runs the sweep's legs on one runtime: `kvclaims.vllm.probe.Sweep`, `AdapterSweep`."""

    B: int  # tokens per block

    def leg(self, usable: int, name: str, *, claim: bool = False, no_admit: bool = False) -> Measured: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=["vllm", "sglang", "refimpl"],
        default="vllm",
        help="the runtime to probe: vllm (a real engine on this machine), sglang (its radix cache) "
        "or refimpl (the reference runtime: the sweep only)",
    )
    parser.add_argument(
        "--usable",
        nargs="?",
        const=USABLE,
        metavar="LIST",
        help=f"run the capacity sweep over these usable pool sizes, in blocks, comma-separated "
        f"(bare: the follow-up paper's {USABLE})",
    )
    parser.add_argument(
        "--resident", type=int, help=f"with --usable: blocks of the resident prefix (default {RESIDENT})"
    )
    parser.add_argument("--prefill", type=int, help=f"with --usable: blocks of the prefill (default {PREFILL})")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.set_defaults(usage_error=parser.error)


def run(args: argparse.Namespace) -> int:
    if args.usable is not None:
        return _sweep(args)
    for option in ("resident", "prefill"):
        if getattr(args, option) is not None:
            raise BadArgument(f"--{option}", "sizes the capacity sweep: give --usable too")
    if args.runtime == "refimpl":
        args.usage_error(
            "argument --runtime: invalid choice: 'refimpl' without --usable "
            "(the reference runtime runs the capacity sweep only)"
        )
    if args.runtime == "sglang":
        from kvclaims.sglang.probe import run_probe as sglang_probe, table as sglang_table

        found = sglang_probe()
        print(json.dumps(found, indent=2) if args.json else sglang_table(found))
        return 0
    from kvclaims.vllm.engine import VllmEngine
    from kvclaims.vllm.probe import CLAIMS_ENGINE, run_probe, table

    result = run_probe(VllmEngine(integration=False), VllmEngine(**CLAIMS_ENGINE))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    resident = _blocks("--resident", RESIDENT if args.resident is None else args.resident)
    prefill = _blocks("--prefill", PREFILL if args.prefill is None else args.prefill)
    usable = usable_sizes(args.usable, resident, prefill)
    legs: Legs
    if args.runtime == "vllm":
        from kvclaims.vllm.probe import Sweep

        legs = Sweep(max(usable), resident, prefill)
    else:
        legs = AdapterSweep(args.runtime, resident, prefill)
    result = sweep(args.runtime, legs, usable, resident, prefill)
    print(json.dumps(result, indent=2) if args.json else sweep_table(result))
    return 0


def _blocks(option: str, n: int) -> int:
    if n < 1:
        raise BadArgument(option, f"must be at least 1 block, got {n}")
    return n


MOST_USABLE = 1 << 16  # blocks: a pool this probe's tiny model and CPU runtimes can still allocate


def usable_sizes(text: str, resident: int, prefill: int) -> list[int]:
    """--usable: comma-separated pool sizes in blocks, each given once, each holding the
    replay (the prefix and one token) and the prefill alone: a stock runtime would leave a
    prompt its pool cannot hold waiting for ever."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise BadArgument("--usable", f"expected comma-separated block counts such as {USABLE}, got {text!r}") from None
    least = max(resident + 1, prefill)
    for i, u in enumerate(sizes):
        if not least <= u <= MOST_USABLE:
            raise BadArgument(
                "--usable",
                f"{u} blocks: each size must be from {least} (to hold the {prefill}-block prefill and the "
                f"replay, {resident + 1} blocks: the {resident}-block prefix and one token) to {MOST_USABLE}",
            )
        if u in sizes[:i]:
            raise BadArgument("--usable", f"{u} is given twice")
    return sizes


def sweep(runtime: str, legs: Legs, usable: list[int], resident: int, prefill: int) -> dict[str, Any]:
    """Every leg at every size: per size, each leg's `record`."""
    return {
        "runtime": runtime,
        "B": legs.B,
        "resident_blocks": resident,
        "prefill_blocks": prefill,
        "legs": {name: label for name, (label, _) in LEGS.items()},
        "sizes": [
            {"usable": u, **{name: record(*legs.leg(u, name, **kw)) for name, (_, kw) in LEGS.items()}} for u in usable
        ],
    }


def record(before: int, decision: Decision, after: int, claim_state: str | None) -> dict[str, Any]:
    """One leg at one size, in blocks: the replay's hits before and after the prefill, the
    resident blocks lost between them, the prefill's outcome (the contract's outcome name:
    admit, wait, refuse_blocked, refuse_too_large) with its blocking claims, and the claim's
    state at the end (None without a claim)."""
    return {
        "hits_before": before,
        "prefill": decision.outcome,
        "blocking_claims": list(decision.blocking_claims),
        "hits_after": after,
        "lost": before - after,
        "claim_state": claim_state,
    }


class AdapterSweep:
    """The sweep's legs through the adapter protocol (`kvclaims.conformance.adapter`): a
    fresh runtime of each size for each leg, blocks of the litmus suite's size. The legs
    without a claim leave the contract nothing to hold: they measure the runtime's own
    prefix cache. `runtime` is a name `load_adapter` knows."""

    def __init__(self, runtime: str, resident: int, prefill: int) -> None:
        from kvclaims.conformance.fuzz import runtime_factory
        from kvclaims.conformance.litmus import B, tokens

        self.factory, self.B = runtime_factory(runtime), B
        self.prefix, self.prefill = tokens(resident, 1, B), tokens(prefill, 2, B)

    def leg(self, usable: int, name: str, *, claim: bool = False, no_admit: bool = False) -> Measured:
        rt = self.factory(U=usable, B=self.B)
        replay = [*self.prefix, 0]  # (one token past the prefix: every prefix block can be hit)
        if claim:
            rt.submit_claim(CLAIM, self.prefix)
        self._run(rt, f"{name}-resident", replay)
        before = self._run(rt, f"{name}-replay1", replay)
        decision = rt.submit_request(f"{name}-prefill", self.prefill)
        if decision.outcome == "admit":
            rt.finish(f"{name}-prefill", admit=not no_admit)
        after = self._run(rt, f"{name}-replay2", replay)
        return before, decision, after, rt.claim_state(CLAIM) if claim else None

    @staticmethod
    def _run(rt: Any, request_id: str, tokens: list[int]) -> int:
        """Run a request to its end; the blocks it hit."""
        decision = rt.submit_request(request_id, tokens)
        if decision.outcome != "admit":
            raise InvalidInput(
                f"{request_id}: the runtime did not admit the replay of the prefix in {rt.U} blocks ({decision})"
            )
        hits: int = rt.hit_blocks(request_id)
        rt.finish(request_id)
        return hits


def sweep_table(result: dict[str, Any]) -> str:
    """The sweep as the paper's table: a row per usable size, the resident blocks each leg
    lost (with the prefill's outcome where it was not admitted), the hard claim's decision."""

    def lost(lg: dict[str, Any]) -> str:
        return str(lg["lost"]) + ("" if lg["prefill"] == "admit" else f" (prefill: {decision(lg)})")

    def decision(lg: dict[str, Any]) -> str:
        return lg["prefill"] + (f": {', '.join(lg['blocking_claims'])}" if lg["blocking_claims"] else "")

    labels = result["legs"]
    head = [f"{labels['stock']}: lost", f"{labels['no_admit']}: lost", "hard claim: prefill", "hard claim: lost"]
    rows = [("usable", [*head, "claim state"])]
    for size in result["sizes"]:
        hard = size["hard_claim"]
        cells = [lost(size["stock"]), lost(size["no_admit"]), decision(hard), str(hard["lost"])]
        rows.append((str(size["usable"]), [*cells, hard["claim_state"] or "-"]))
    title = (
        f"The capacity sweep on {result['runtime']}: a {result['resident_blocks']}-block resident prefix, a "
        f"{result['prefill_blocks']}-block prefill, {result['B']}-token blocks; resident blocks lost, by usable blocks"
    )
    return columns(title, rows)

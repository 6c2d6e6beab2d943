"""`kvclaims probe --runtime vllm|sglang [--json]`: the paper's probe on a real runtime.

vllm: four ways (the fourth: a restore failure through vLLM's offload/load path, the
follow-up paper's witness); builds the tiny local model on first use (cached outside
the repository) and two in-process engines, stock vLLM and vLLM with the integration.
sglang: SGLang's own radix cache on CPU, stock (the prefix in one tree node, and in six)
and with a hard claim (`kvclaims.sglang.probe`).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=["vllm", "sglang"],
        default="vllm",
        help="the runtime to probe: vllm (a real engine on this machine) or sglang (its radix cache)",
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def run(args: argparse.Namespace) -> int:
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

"""`kvclaims probe --runtime vllm [--json]`: the paper's probe on a real vLLM engine, four ways
(the fourth: a restore failure through vLLM's offload/load path, the follow-up paper's witness).

Builds the tiny local model on first use (cached outside the repository) and two
in-process engines: stock vLLM, and vLLM with the integration switched on.
"""

from __future__ import annotations

import argparse
import json

from kvclaims.conformance.adapter import add_runtime_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser, only="vllm", help="the runtime to probe (vllm: a real engine on this machine)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    from kvclaims.vllm.engine import VllmEngine
    from kvclaims.vllm.probe import CLAIMS_ENGINE, run_probe, table

    result = run_probe(VllmEngine(integration=False), VllmEngine(**CLAIMS_ENGINE))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0

"""`kvclaims rejections --runtime refimpl|vllm|MODULE:CLASS [--json]`: the protocol's bad-input
scenarios against a runtime, reported as the litmus suite reports its own."""

from __future__ import annotations

import argparse

from kvclaims.cli.litmus import report
from kvclaims.conformance.adapter import add_runtime_argument
from kvclaims.conformance.fuzz import runtime_factory
from kvclaims.conformance.rejections import REJECTIONS, run_rejection


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser)
    parser.add_argument("--only", action="append", choices=sorted(REJECTIONS), help="run only this scenario")
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def run(args: argparse.Namespace) -> int:
    """Exit 0 unless a scenario failed: not applicable is reported, never failed nor passed."""
    factory = runtime_factory(args.runtime)
    return report(args.runtime, [run_rejection(n, factory) for n in (args.only or REJECTIONS)], args.json)

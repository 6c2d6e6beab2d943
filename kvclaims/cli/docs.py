"""`kvclaims docs [--write] [FILES]`: check or refresh the generated sections of the
documentation (what they hold: `kvclaims.docs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kvclaims.docs import DEFAULT_FILES, refresh, sections
from kvclaims.spec import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, help=f"default: {' '.join(DEFAULT_FILES)}")
    parser.add_argument("--write", action="store_true", help="rewrite the generated sections in place")


def run(args: argparse.Namespace) -> int:
    generated = sections(load())
    stale = []
    for path in args.files or [Path(f) for f in DEFAULT_FILES]:
        text = path.read_text()
        new = refresh(text, generated)
        if new != text:
            stale.append(str(path))
            if args.write:
                path.write_text(new)
    if stale and not args.write:
        print(f"generated sections are stale in: {', '.join(stale)} (run `kvclaims docs --write`)")
        return 1
    print(f"{'refreshed' if args.write else 'up to date'}: {', '.join(stale) or 'nothing to change'}")
    return 0

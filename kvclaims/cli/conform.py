"""`kvclaims conform`: the whole battery against one runtime, one verdict per obligation
(the battery itself: `kvclaims.conformance.conform`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from kvclaims.conformance.adapter import add_runtime_argument
from kvclaims.conformance.conform import LIFE, SEEDS, STEPS, conform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser)
    parser.add_argument("--steps", type=int, default=STEPS, help=f"stateful steps in all (default {STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument(
        "--seeds", type=int, default=SEEDS, help=f"seeds from --seed, the steps split among them (default {SEEDS})"
    )
    parser.add_argument(
        "--life", type=int, help=f"of the steps, those of one long-lived example (default a third, at most {LIFE})"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--evidence",
        metavar="DIR",
        help="also write an evidence bundle there (the report, each litmus trace, a manifest of "
        "sha256 hashes) for a lowering descriptor to anchor (`kvclaims lower`)",
    )


def run(args: argparse.Namespace) -> int:
    traces: dict[str, list[str]] = {}
    report = conform(args.runtime, args.steps, args.seed, args.seeds, args.life, traces)
    if args.evidence:
        write_bundle(Path(args.evidence), report, traces)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(f"conformance of runtime {args.runtime!r}:")
        for o in report["obligations"]:
            kinds = sorted({f"{e['kind']}:{e['result']}" for e in o["evidence"]})
            print(f"  {o['id']:<12} {o['verdict']:<15} {', '.join(kinds)}")
        for o in report["obligations"]:
            for e in o["evidence"]:
                if e["result"] == "failed":
                    print(
                        f"\n{o['id']} violated by {e['kind']} {e['name']}: "
                        f"{e.get('violation', '')}\n{e.get('program', '')}"
                    )
        print(f"\nstateful evidence: {_gathered(report)}")
        print(f"\nverdict: {'CONFORMS' if report['conforms'] else 'DOES NOT CONFORM'}")
    return 0 if report["conforms"] else 1


def _gathered(report: dict) -> str:
    """How much the stateful suite ran (its evidence is the same for every id it checks)."""
    item = next(e for o in report["obligations"] for e in o["evidence"] if e["kind"] == "stateful")
    if "steps" not in item:
        return f"stopped at a violation (seed {item.get('seed', '?')})" if item["result"] == "failed" else item["until"]
    return (
        f"{item['steps']} steps in {item['examples']} examples ({item['life_steps']} of them in one long-lived"
        f" example), seeds {', '.join(map(str, item['seeds']))}"
    )


def write_bundle(folder: Path, report: dict, traces: dict[str, list[str]]) -> None:
    """`report.json`, `traces/SCENARIO.jsonl` and `MANIFEST.json` (each file's sha256, the
    runtime and its version) in `folder`: what a descriptor's ``conformance_run`` or
    ``trace`` evidence anchors, file and hash."""
    files = {"report.json": json.dumps(report, indent=2) + "\n"}
    files |= {f"traces/{name}.jsonl": "".join(line + "\n" for line in lines) for name, lines in traces.items()}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    manifest = {
        "runtime": report["runtime_name"],
        "version": report["runtime_version"],
        "sha256": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(files.items())},
    }
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

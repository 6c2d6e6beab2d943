"""`kvclaims`: the resident KV claims contract for LLM KV-cache reuse, proved, tested
against runtimes and checked on their traces.

Each subcommand lives in its own module of this package, with ``add_arguments(parser)``
and ``run(args) -> int``; errors print one line, no traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kvclaims.errors import KVClaimsError

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "prove": ("kvclaims.cli.prove", "prove every obligation of the spec with Z3"),
    "diagram": ("kvclaims.cli.diagram", "print the lifecycle as a mermaid state diagram"),
    "check": ("kvclaims.cli.check", "check a JSONL event trace against the contract"),
    "litmus": ("kvclaims.cli.litmus", "run the litmus suite against a runtime"),
    "rejections": ("kvclaims.cli.rejections", "run the bad-input scenarios: the same typed error, nothing changed"),
    "probe": ("kvclaims.cli.probe", "run the paper's probe on a real runtime, or sweep it over usable pool sizes"),
    "demo-model": ("kvclaims.cli.demo_model", "build the tiny demo model, with a tokenizer, for vLLM's server"),
    "fuzz": ("kvclaims.cli.fuzz", "run the stateful contract test against a runtime for N steps"),
    "conform": ("kvclaims.cli.conform", "run proofs, litmus and the stateful suite; a verdict per obligation"),
    "lower": ("kvclaims.cli.lower", "classify runtime/mode lowerings from anchored evidence, fail-closed"),
    "docs": ("kvclaims.cli.docs", "check or refresh the generated sections of README.md and CONTRACT.md"),
    "bench": ("kvclaims.cli.bench", "measure what the contract costs: ratios against baselines, side by side"),
}


def summary() -> str:
    """What `kvclaims --help` says first: this module's first docstring paragraph, whole
    (argparse re-wraps it; a paragraph cut at a line break would end mid-sentence)."""
    return " ".join((__doc__ or "").split("\n\n")[0].split()).replace("`", "")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """All subcommands; when `argv` names one, only its module is imported with its
    arguments (the others bring torch and z3: seconds of start-up for nothing)."""
    parser = argparse.ArgumentParser(prog="kvclaims", description=summary())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen in (None, name):
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 1 when what was checked fails (not proved, a violation, does not
    conform); 2 on bad input or arguments; 3 on an internal error; 130 when interrupted;
    141, quietly, when the reader of stdout went away.
    Every error is one line on stderr: KVCLAIMS_TRACEBACK=1 re-raises an internal one."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        code: int = importlib.import_module(args._module).run(args)
        return code
    except KVClaimsError as exc:
        return _fail(args, 2, f"error: {exc}")
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python flushes stdout at exit)
        return 141
    except OSError as exc:
        return _fail(args, 2, f"error: {exc.strerror or exc}: {exc.filename or ''}")
    except UnicodeDecodeError as exc:
        return _fail(args, 2, f"error: input is not UTF-8 text: {exc}")
    except KeyboardInterrupt:
        return _fail(args, 130, "interrupted")
    except Exception as exc:
        if os.environ.get("KVCLAIMS_TRACEBACK"):
            raise
        return _fail(args, 3, f"internal error: {type(exc).__name__}: {exc} (KVCLAIMS_TRACEBACK=1 shows where)")


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    """One line on stderr, whatever newlines the message held."""
    print(f"kvclaims {args.command}: {' '.join(message.split())}", file=sys.stderr)
    return code

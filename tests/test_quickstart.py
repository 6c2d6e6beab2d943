"""The vLLM README's server quickstart, run as a user runs it: every line of its shell
blocks as written, in order, in one bash, each line's exit status and output checked
(the checks are the `Quickstart` entries of `TABLE` in `tests/test_docs_commands.py`).

Only the port is chosen here: the README takes `$PORT` when it is set (8000 otherwise),
and a free one is given, so a server already on 8000 cannot fail the test.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
from test_docs_commands import (
    FENCE,
    NO_VLLM,
    ROOT,
    SHELL_FENCES,
    TABLE,
    GpuForm,
    Quickstart,
    commands_of,
    key,
    server_command,
)
from vllm_server import _port

DOC = ROOT / "integrations/vllm/README.md"
SECTION = "## Quickstart (server)"
STEP_S = 240  # the longest line waits for the server: about 20 s here, more on a first start
MARK = "@@kvclaims-quickstart"
CPU_ONLY_ENV = "VLLM_CPU_KVCACHE_SPACE"
SERVER = "vllm.entrypoints.openai.api_server"


def quickstart() -> list[tuple[str, list[str]]]:
    """The section's commands in order: each one's text and words."""
    text = DOC.read_text()
    assert f"\n{SECTION}\n" in text, f"{DOC.name} has no {SECTION!r}"
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    return [c for lang, body in FENCE.findall(section) if lang in SHELL_FENCES for c in commands_of(body)]


def test_every_quickstart_line_is_a_step():
    """Every line of the section is a `Quickstart` step (or the GPU form), every step is
    in the section, and a step with n checks is shown n times: no check goes unused."""
    shown = Counter(key(words) for _, words in quickstart())
    entries = {k: TABLE.get(k) for k in shown}
    assert all(isinstance(e, Quickstart | GpuForm) for e in entries.values()), entries
    steps = {k for k, e in TABLE.items() if isinstance(e, Quickstart | GpuForm)}
    assert steps == set(shown), steps ^ set(shown)
    checks = {k: e.checks for k, e in entries.items() if isinstance(e, Quickstart) and e.checks}
    unused = {k: n for k, n in shown.items() if k in checks and len(checks[k]) != n}
    assert not unused, unused


def test_gpu_form_is_the_cpu_line_and_parses_with_vllm():
    """`vllm serve` with the CPU line's flags, less the CPU-only environment, which
    vLLM's own parser and checks accept."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    servers = {type(TABLE[key(words)]): _server(words) for _, words in quickstart() if "--port" in words}
    (cpu_env, cpu_flags), (gpu_env, gpu_flags) = servers[Quickstart], servers[GpuForm]
    assert gpu_flags == cpu_flags and gpu_env == {k: v for k, v in cpu_env.items() if k != CPU_ONLY_ENV}
    argv = [{"$PORT": "8000"}.get(w, w) for flag, values in gpu_flags.items() for w in (flag, *values)]
    validate_parsed_serve_args(make_arg_parser(FlexibleArgumentParser()).parse_args(argv))


def _server(words: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A server line's environment and flags, its redirection and `&` aside."""
    return server_command(words[: words.index(">")])


def test_quickstart_runs_as_written():
    """A fresh shell runs the lines: the demo model is built, the server starts, a claim
    materializes, its replay is served from cache, a prefill that does not fit beside it
    is refused naming it, the release lets the same prefill run, /metrics has the claim
    series, and the trace checks clean."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "kvclaims").exists():
        pytest.skip(f"no kvclaims command beside {sys.executable} (pip install -e .)")
    if not (shutil.which("bash") and shutil.which("curl")):
        pytest.skip("the quickstart needs bash and curl")
    steps = _steps()
    home = Path(tempfile.mkdtemp(prefix="kvq"))  # $TMPDIR: short, for vLLM's sockets
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PORT": str(_port()),
        "TMPDIR": str(home),
    }
    script = Script([text for text, _, _ in steps], home, env)
    try:
        serving = False  # from the server's line to the one that stops it
        for text, words, check in steps:
            rc, out = script.next(text, serving)
            serving = (serving or SERVER in words) and words[0] != "kill"
            assert rc == 0, script.failure(text, f"exited {rc}", out)
            try:
                check(out)
            except AssertionError as exc:
                raise AssertionError(script.failure(text, str(exc)[:2000], out)) from None
        assert "PROMETHEUS_MULTIPROC_DIR is not set" not in script.server_log()
    finally:
        script.stop()
        shutil.rmtree(home, ignore_errors=True)


def _steps() -> list[tuple[str, list[str], Callable[[str], None]]]:
    """The lines to run, in order, each with its words and the check of its showing."""
    out, seen = [], Counter[str]()
    for text, words in quickstart():
        entry = TABLE[key(words)]
        if isinstance(entry, Quickstart):
            nth, seen[text] = seen[text], seen[text] + 1
            out.append((text, words, entry.checks[nth] if entry.checks else _no_check))
    return out


def _no_check(out: str) -> None:
    pass


class Script:
    """The lines in one bash, each followed by a marker with its exit status, read as
    they run: a line that never ends fails after `STEP_S`, not the whole session."""

    def __init__(self, texts: list[str], home: Path, env: dict[str, str]) -> None:
        self.home = home
        (home / "quickstart.sh").write_text("".join(f"{t}printf '\\n{MARK} %d\\n' $?\n" for t in texts))
        with open(home / "stderr.txt", "w") as err:
            self.proc = subprocess.Popen(
                ["bash", "quickstart.sh"],
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # its own process group: the server's too
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, text: str, serving: bool) -> tuple[int, str]:
        """The exit status and output of the line `text`, the one running now; `serving`:
        the server should be up, and the line fails at once if it has exited."""
        out: list[str] = []
        deadline = time.monotonic() + STEP_S
        while True:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if serving and not _running(self.proc.pid, SERVER):
                    pytest.fail(self.failure(text, "the server has exited", "".join(out)))
                if time.monotonic() > deadline:
                    pytest.fail(self.failure(text, f"still running after {STEP_S}s", "".join(out)))
                continue
            if line is None:
                pytest.fail(self.failure(text, "the shell ended", "".join(out)))
            if line.startswith(MARK + " "):
                return int(line.split()[1]), "".join(out)[:-1]  # the newline the marker puts first
            out.append(line)

    def server_log(self) -> str:
        logs = list(self.home.glob("*/server.log"))
        return logs[0].read_text() if logs else "(no server.log)"

    def failure(self, text: str, what: str, out: str) -> str:
        err = (self.home / "stderr.txt").read_text()
        return (
            f"quickstart line {text.strip()!r}: {what}\noutput:\n{out[-2000:]}\nstderr:\n{err[-2000:]}\n"
            f"server.log:\n{self.server_log()[-4000:]}"
        )

    def stop(self) -> None:
        """Everything the script started ends: TERM to its process group, KILL after 30 s."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _running(self.proc.pid):
                break
            deadline = time.monotonic() + 30
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            while _running(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
        self.proc.wait()


def _running(group: int, command: str = "") -> bool:
    """Is a process of `group` (whose command line has `command`) still running? Zombies,
    left to their reaper, are not."""
    import psutil

    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE and command in " ".join(p.cmdline()):
                return True
    return False

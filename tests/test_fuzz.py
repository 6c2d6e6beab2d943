"""`kvclaims fuzz` (kvclaims.conformance.fuzz): its progress, and its seeded workers, which
share the steps out and print one failure's program once, with the command that runs its
worker alone. That they sum their counts: the README's `--workers` example
(tests/test_docs_commands.py)."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from kvclaims.cli import main
from kvclaims.conformance import fuzz as engine
from kvclaims.conformance.fuzz import fuzz

from test_plugin import kvclaims


def test_shares_cover_the_steps_and_the_life():
    for steps, life, workers in [(10, 3, 4), (7, 7, 3), (5, 0, 5), (100, 40, 8), (9, 2, 1)]:
        shares = engine._shares(steps, life, workers)
        assert len(shares) == workers
        assert sum(s for s, _ in shares) == steps and sum(part for _, part in shares) == life
        assert all(0 <= part <= s for s, part in shares)
        assert max(s for s, _ in shares) - min(s for s, _ in shares) <= 1


def test_no_more_workers_than_examples():
    per = engine.STEPS_PER_EXAMPLE
    assert [engine.worker_count(steps, 100) for steps in (1, per, per + 1, 3 * per)] == [1, 1, 2, 3]
    assert engine.worker_count(10**6, 4) == 4


def test_progress_counts_every_step_of_the_examples_and_the_life():
    seen: list[int] = []
    totals = fuzz("refimpl", 300, 1, life=150, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == totals["steps"] >= 300


def test_a_worker_stops_at_the_end_of_an_example_once_another_failed():
    done, stop = [0], threading.Event()
    stop.set()
    engine._join(done, stop)
    assert engine._work("refimpl", 100_000, 1, True, 0, 0) == (Counter(), None)
    assert 0 < done[0] < 100_000  # one example's steps


def test_a_failing_worker_prints_its_program_once_and_how_to_run_it_alone():
    out = kvclaims(
        "fuzz", "--runtime", "fixture_runtime:Miscounting", "--steps", "400", "--seed", "1", "--workers", "2"
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.count("state.start(") == 1
    violation = out.stderr.strip().splitlines()[-1]
    assert violation.startswith("kvclaims fuzz: VIOLATION: RKC-INV-3"), out.stderr
    alone = re.search(r"`kvclaims (fuzz [^`]*)` runs it alone", out.stdout)
    assert alone, out.stdout
    again = kvclaims(*shlex.split(alone[1]))
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1] == violation


def test_the_bar_shows_only_when_asked_and_never_in_json(capsys):
    assert main(["fuzz", "--steps", "60", "--seed", "2", "--progress"]) == 0
    assert "step/s" in capsys.readouterr().err
    assert main(["fuzz", "--steps", "60", "--seed", "2", "--progress", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["steps"] >= 60 and "step/s" not in out.err


def test_a_failure_in_a_life_is_reported_as_itself():
    """A life keeps its failure and runs on to the end of its stretch: the rules after it,
    whose preconditions read the last check's counts, must not crash first."""
    out = kvclaims("fuzz", "--runtime", "fixture_runtime:Miscounting", "--steps", "100", "--life", "100")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("kvclaims fuzz: VIOLATION: RKC-INV-3"), out.stderr


def test_ctrl_c_ends_a_run_of_workers():
    """A terminal's Ctrl-C reaches the whole process group: the run ends, exit 130, one line,
    and no worker is left behind (they ignore it; the parent stops them)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "kvclaims.cli", "fuzz", "--steps", "1000000", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        restore_signals=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, not a background job
    )
    time.sleep(8)  # the workers have started (spawned processes take a few seconds)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=120)  # (a hang fails here, not on a clock)
    assert run.returncode == 130 and err.strip().splitlines() == ["kvclaims fuzz: interrupted"], err
    for _ in range(120):  # multiprocessing's resource tracker exits on its own, a moment later
        left = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(run.pid)], capture_output=True, text=True).stdout
        if not left.strip():
            break
        time.sleep(0.5)
    assert not left.strip(), f"left behind: {left}"

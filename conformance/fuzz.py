"""`kvclaims fuzz`: the stateful contract test for N steps against any runtime adapter.

Steps run in batches of Hypothesis examples, each batch with its own seed
derived from --seed, so a run is reproducible. A failure raises with the shrunk,
replayable program in its notes (`kvclaims.cli.fuzz` prints it and exits 1);
otherwise the counts of what was exercised. `fuzz_workers` runs such runs side by
side, one per core, each with its own seed.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import multiprocessing
import os
import pkgutil
import signal
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from functools import partial
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from kvclaims.conformance.adapter import load_adapter
from kvclaims.errors import BadArgument, KVClaimsError
from kvclaims.conformance.compare import violated_obligation
from kvclaims.conformance.life import live
from kvclaims.conformance.stateful import ContractMachine, Factory, machine_for

STEPS_PER_EXAMPLE = 50
EXAMPLES_PER_BATCH = 200
# The collector's first threshold while a run lasts (Python's default: 700 allocations).
# Hypothesis, the oracle and the checks allocate short-lived containers by the thousand
# per step: at 700 the collector took 10-15% of a run on the reference runtime.
GC_THRESHOLD = 10_000
SUMMARY = {  # summary line -> trace record kinds (claim events as claim:<event>)
    "conflicts (claim-blocked refusals)": ("request_refuse:refuse_blocked",),
    "refusals": ("request_refuse:refuse_blocked", "request_refuse:refuse_too_large"),
    "waits": ("request_wait",),
    "evictions": ("block_evict",),
    "demotions": ("claim:demote",),
    "offloads": ("claim:offload",),
    "restores": ("claim:restore",),
    "harms": ("claim:harm",),
    "fail-closed": ("claim:fail",),
    "claims": ("claim_submit",),
    "requests": ("request_submit",),
}


def fuzz(
    runtime: str | Factory,
    steps: int,
    seed_value: int,
    *,
    faults: bool = True,
    life: int = 0,
    log: Callable[[str], object] = lambda msg: None,
    progress: Callable[[int], object] = lambda steps: None,
) -> Counter:
    """Run at least `steps` steps against a runtime (a name for `load_adapter`, or a factory
    from `runtime_factory`) in short examples, then, with `life`, one long-lived example of
    at least that many steps (`kvclaims.conformance.life`); raises the failing example's
    error on a violation. `steps` counts both; `life steps` the long-lived one's.
    `progress` is told the steps run so far after each example (each stretch of the life)."""
    load_toolkit()  # a seed runs the same programs whichever command asked
    totals: Counter = Counter()
    factory = runtime_factory(runtime) if isinstance(runtime, str) else runtime
    if not faults:
        factory = _without_faults(factory)

    def teardown(machine: ContractMachine) -> None:
        totals.update(machine.stats)
        totals["steps"] += machine.steps
        totals["examples"] += 1
        progress(totals["steps"])

    Counted = type("Counted", (machine_for(factory),), {"teardown": teardown})

    batch = 0
    short = steps - life
    with _collecting_less():
        while totals["steps"] < short:
            machine = seed(seed_value * 1_000_003 + batch)(Counted)
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=min(EXAMPLES_PER_BATCH, -(-(short - totals["steps"]) // STEPS_PER_EXAMPLE)),
                    stateful_step_count=STEPS_PER_EXAMPLE,
                    deadline=None,
                    database=None,
                    derandomize=False,
                    report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate, Phase.shrink],
                ),
            )
            batch += 1
            log(f"batch {batch}: {totals['steps']} steps")
        if life:
            done = totals["steps"]
            lived = live(factory, life, seed_value, log=log, progress=lambda n: progress(done + n))
            totals.update(lived)
            totals["life steps"] += lived["steps"]
    return totals


@contextlib.contextmanager
def _collecting_less():
    """The cyclic collector at `GC_THRESHOLD` while a run lasts; as it was after."""
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def fuzz_workers(
    runtime: str,
    steps: int,
    seed_value: int,
    workers: int,
    *,
    faults: bool = True,
    life: int = 0,
    progress: Callable[[int], object] = lambda steps: None,
) -> Counter:
    """`fuzz` in `workers` processes at once: worker i runs seed `seed_value + i` with its
    share of `steps` and of `life` (`_shares`); their counts are summed. `progress` is told
    the steps run so far by all of them, about four times a second.

    Independent seeded workers, as Hypothesis itself scales a search out: they share
    nothing, so N of them on N cores run N times the steps. The engine is the standard
    library's `ProcessPoolExecutor` (spawned processes: a forked torch can deadlock); each
    worker runs one intra-op thread (`OMP_NUM_THREADS`, unless set), as N workers of N
    threads on N cores stall one another in torch's small parallel kernels. At the first
    failure the others stop at the end of their current example, so its program is
    printed once: it raises `WorkerFailed`, naming the worker's seed and share, which
    `kvclaims fuzz` with that seed and those steps runs again alone."""
    n = worker_count(steps, workers)
    context = multiprocessing.get_context("spawn")
    done, stop = context.Array("q", n, lock=False), context.Event()
    jobs = [
        (runtime, share, seed_value + i, faults, part, i) for i, (share, part) in enumerate(_shares(steps, life, n))
    ]
    totals: Counter = Counter()
    failure: WorkerFailed | None = None
    with _one_thread_each(), ProcessPoolExecutor(n, context, initializer=_join, initargs=(done, stop)) as pool:
        running = {pool.submit(_work, *job) for job in jobs}
        try:
            while running:
                finished, running = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
                progress(sum(done))
                for future in finished:
                    counts, failed = future.result()
                    totals.update(counts)
                    if failed is not None and failure is None:
                        failure = failed
                        stop.set()
        except KeyboardInterrupt:  # the workers ignore it: they stop at the end of an example
            stop.set()
            raise
    if failure is not None:
        raise failure
    return totals


def worker_count(steps: int, workers: int) -> int:
    """The workers a run of `steps` gets of `workers` asked: a worker runs whole examples,
    so no more than there are examples."""
    return min(workers, -(-steps // STEPS_PER_EXAMPLE))


def _shares(steps: int, life: int, workers: int) -> list[tuple[int, int]]:
    """Each worker's (steps, life steps): as even as can be, the first ones taking what is left over."""
    return [(steps // workers + (i < steps % workers), life // workers + (i < life % workers)) for i in range(workers)]


class WorkerFailed(Exception):
    """A worker's violation or crash, as it reported it (`violation`), its program in the notes."""


class Stopped(BaseException):
    """Raised in a worker at the end of an example once another worker failed: a
    BaseException, so Hypothesis lets it through at once instead of shrinking it."""


@contextlib.contextmanager
def _one_thread_each():
    """`OMP_NUM_THREADS=1` for the worker processes started meanwhile, unless it is set."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


_shared: tuple[Any, Any] = (None, None)  # in a worker: the steps each has run, and the stop flag


def _join(done: Any, stop: Any) -> None:
    """A worker's start: the shared counters, and Ctrl-C left to the parent (a terminal sends
    it to the whole process group; a worker interrupted mid-example may swallow it in
    Hypothesis' own callbacks and run on, and the pool would wait for it for ever)."""
    global _shared
    _shared = (done, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _work(
    runtime: str, steps: int, seed_value: int, faults: bool, life: int, index: int
) -> tuple[Counter, WorkerFailed | None]:
    """One worker's run: its counts and, if it failed, its failure (a picklable one: the
    runtime's own exception types need not be)."""
    done, stop = _shared

    def report(n: int) -> None:
        done[index] = n
        if stop.is_set():
            raise Stopped

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Hypothesis' report of a stopped run
            return fuzz(runtime, steps, seed_value, faults=faults, life=life, progress=report), None
    except Stopped:
        return Counter(), None
    except Exception as exc:
        failed = WorkerFailed(violation(exc))
        for note in getattr(exc, "__notes__", []):
            failed.add_note(note)
        flags = (f" --life {life}" if life else "") + ("" if faults else " --no-faults")
        again = f"kvclaims fuzz --runtime {runtime} --seed {seed_value} --steps {steps}{flags}"
        failed.add_note(f"(worker {index}, seed {seed_value}: `{again}` runs it alone)")
        return Counter(), failed


def runtime_factory(runtime: str, **fixed) -> Factory:
    """`load_adapter` for `runtime` (with `fixed` arguments, e.g. a device), built once on a
    small pool first: a runtime that cannot be built is one error up front (a bad --runtime or
    --device), not a failure inside every scenario or example."""
    factory = partial(load_adapter, runtime, **fixed)
    try:
        factory(U=8, B=4, R=0, host_blocks=0)
    except KVClaimsError:
        raise
    except Exception as exc:  # whatever the named class raises: it cannot serve as a runtime
        given = "".join(f" with {k}={v!r}" for k, v in fixed.items())
        raise BadArgument("--runtime", f"cannot build {runtime!r}{given}: {type(exc).__name__}: {exc}") from None
    return factory


def _without_faults(factory):
    def make(**shape):
        runtime = factory(**shape)
        runtime.capabilities = runtime.capabilities - {"reset_cache", "evict_blocks", "device_fault", "host_fault"}
        return runtime

    return make


def check_steps(steps: int, life: int = 0, workers: int = 1) -> None:
    if steps < 1:
        raise BadArgument("--steps", f"must be at least 1, got {steps}")
    if not 0 <= life <= steps:
        raise BadArgument("--life", f"must be in [0, steps={steps}], got {life}")
    if workers < 1:
        raise BadArgument("--workers", f"must be at least 1, got {workers}")


def violation(exc: BaseException) -> str:
    """The first line of what broke the contract; a crash (an untyped error) is named by its
    type; a worker's failure is as the worker named it."""
    first = (str(exc).splitlines() or [""])[0]
    if isinstance(exc, WorkerFailed):
        return first
    if not isinstance(exc, AssertionError):
        first = f"{type(exc).__name__}: {first}"
    oid = violated_obligation(exc)
    return first if oid is None or first.startswith(oid) else f"{oid}: {first}"


# Hypothesis (6.170) mixes constants harvested from every loaded *local* module (one not in
# site-packages, e.g. an editable install of this package) into what it draws
# (`hypothesis.internal.conjecture.providers._get_local_constants`), so one seed ran other
# programs under `kvclaims conform`, which loads the proofs and litmus first, than under
# `kvclaims fuzz`. Loading the whole toolkit before the first draw makes that pool the same
# for every command; only the runtime under test adds its own, the same for both.
TOOLKIT = ("kvclaims", "kvclaims.spec", "kvclaims.model", "kvclaims.proofs", "kvclaims.conformance", "kvclaims.cli")


def load_toolkit() -> None:
    """Import every module of the toolkit's packages (not the runtimes': they come with
    --runtime, and vLLM's take seconds)."""
    for name in TOOLKIT:
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__, name + "."):
            if info.name not in ("kvclaims.__main__", "kvclaims.cli.__main__"):
                importlib.import_module(info.name)

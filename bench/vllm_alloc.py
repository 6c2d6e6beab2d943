"""Figures 1 and 3: what the claim layer costs vLLM's allocator, and the refimpl pool
against vLLM's, on one recorded operation trace.

The trace (`record`) is requests from prompt families sharing a prefix (Zipf
popularity), admitted one per step and finished a few steps later, on a pool too
small to keep every prefix, so admissions hit, miss and evict. It is recorded
from stock vLLM: a request that does not fit waits for the oldest running one to
finish, so every admission in it succeeds on stock and claims pools alike.

Figure 1 replays it on vLLM's own `KVCacheManager` (`get_computed_blocks`,
`allocate_slots`, `free`: what vLLM's scheduler calls), stock, and with the claim
layer doing per step what `ClaimsScheduler` does around vLLM's schedule: its own
`tick`, `_arbitrate`, `_sync`, `_admitted` and `materialize_ready`, on a real
`ClaimsScheduler` built as vLLM's engine core builds one (no model), whose
manager the replay drives. With live claims, hard claims hold the most popular
prefixes and the stock baseline pins the same blocks with a plain reference, so
both do the same block work. Not timed here: request parsing and the one trace
record per submit and finish (figure 2 times the whole engine).

Figure 3 replays the trace's block operations (lookup, reference, allocate with
LRU eviction, index, release) on vLLM's `BlockPool` and on the refimpl's
`DevicePool`. vLLM's pool holds no KV tensors, so the refimpl's gets the tiniest
shape (1 head of dim 1); whatever tensor work it still does per block operation
is timed. Hashing is outside both: they share the chains vLLM computed.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, TypeVar

import torch
from vllm import EngineArgs, SamplingParams
from vllm.envs import enable_envs_cache
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kvu
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from kvclaims.bench.ratio import Ratio, interleaved
from kvclaims.refimpl.pool import DevicePool
from kvclaims.vllm.engine import ENV, engine_kwargs
from kvclaims.vllm.model_dir import VOCAB
from kvclaims.vllm.pool import GROUP, hexid
from kvclaims.vllm.scheduler import ClaimsScheduler
from kvclaims.vllm.xargs import ClaimOp
from kvclaims.model.names import STATE

B = 32  # the CPU backend's block size (the tiny model's engines use it too)
_params = SamplingParams(max_tokens=1)
SchedulerT = TypeVar("SchedulerT", bound=Scheduler)


@lru_cache(maxsize=None)
def _config(U: int, records: bool = True):
    """The tiny model's engine config with a pool of U usable blocks (`records`: the claim
    layer keeps its trace's records; false: its trace is off), the hash function its
    requests use, and vLLM's engine-core process settings (cached env lookups)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    cfg = EngineArgs(**engine_kwargs(U=U, B=B, records=records)).create_engine_config()
    cfg.cache_config.num_gpu_blocks = U + 1  # set by the engine after profiling memory
    hash_fn = get_hash_fn_by_name(cfg.cache_config.prefix_caching_hash_algo)
    kvu.init_none_hash(hash_fn)
    enable_envs_cache()
    return cfg, kvu.get_request_block_hasher(B, hash_fn)


def scheduler(cls: type[SchedulerT], U: int, records: bool = True) -> SchedulerT:
    """vLLM's scheduler (or ours) as its engine core builds it, over U usable blocks."""
    cfg, _ = _config(U, records)
    spec = FullAttentionSpec(block_size=B, num_kv_heads=1, head_size=64, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=U + 1, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["attn"], spec)])
    return cls(
        vllm_config=cfg, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(cfg), block_size=B
    )


def request(rid: str, tokens: list[int], U: int) -> Request:
    return Request(rid, tokens, _params, None, block_hasher=_config(U)[1])


def admit(kv: KVCacheManager, req: Request) -> int | None:
    """Allocate a fresh request's prompt as vLLM's scheduler does; its hit blocks, or None
    when it does not fit (nothing allocated)."""
    req.status, req.num_computed_tokens = RequestStatus.WAITING, 0
    hit, n, _ = kv.get_computed_blocks(req)
    if kv.allocate_slots(req, req.num_tokens - n, n, hit) is None:
        return None
    req.status, req.num_computed_tokens = RequestStatus.RUNNING, req.num_tokens
    return n // B


@dataclass
class Trace:
    U: int
    pinned: list[list[int]]  # prefixes held by claims (pinned on stock)
    requests: list[Request] = field(default_factory=list)
    ops: list[tuple[bool, int]] = field(default_factory=list)  # (admit?, request index)


def record(n: int, *, U: int = 256, claims: int = 0, families: int = 48, seed: int = 0) -> Trace:
    """`n` requests; the `claims` most popular family prefixes are pinned."""
    rng = random.Random(seed)
    fams = [[rng.randrange(VOCAB) for _ in range(B * rng.randint(8, 32))] for _ in range(families)]
    trace = Trace(U, fams[:claims])
    kv = stock(trace)
    live: list[tuple[int, int]] = []  # (finish step, request index), oldest admission first
    for i in range(n):
        prompt = rng.choices(fams, weights=[1 / (f + 1) for f in range(families)])[0]
        req = request(f"r{i}", prompt + [rng.randrange(VOCAB) for _ in range(rng.randint(B // 2, 4 * B))], U)
        for done in [x for x in live if x[0] <= i]:
            live.remove(done)
            finish(kv, trace, done[1])
        while admit(kv, req) is None:
            finish(kv, trace, live.pop(0)[1])
        trace.requests.append(req)
        trace.ops.append((True, i))
        live.append((i + rng.randint(1, 12), i))
    for _, j in live:
        finish(kv, trace, j)
    return trace


def finish(kv: KVCacheManager, trace: Trace, i: int) -> None:
    kv.free(trace.requests[i])
    trace.ops.append((False, i))


def warm(kv: KVCacheManager, trace: Trace) -> list[Request]:
    """Compute each pinned prefix once, as its claim's first request would."""
    reqs = [request(f"warm{k}", p, trace.U) for k, p in enumerate(trace.pinned)]
    for r in reqs:
        admit(kv, r)
        kv.free(r)
    return reqs


def stock(trace: Trace) -> KVCacheManager:
    """Stock vLLM's manager, the pinned prefixes held by a plain reference as a claim holds them."""
    kv = scheduler(Scheduler, trace.U).kv_cache_manager
    for r in warm(kv, trace):
        kv.block_pool.touch([cached(kv.block_pool, h) for h in r.block_hashes])
    return kv


def cached(bp: BlockPool, h: kvu.BlockHash) -> kvu.KVCacheBlock:
    """The block `bp` caches for hash `h`, which a warm-up has just computed."""
    blocks = bp.get_cached_block(h, [GROUP])
    if blocks is None:
        raise AssertionError(f"block {h!r} was not cached by the warm-up")
    return blocks[0]


def claims(trace: Trace, records: bool = True) -> ClaimsScheduler:
    """The claims scheduler, the pinned prefixes held by hard claims; `records`: its trace
    is kept in memory (false: the trace is off)."""
    s = scheduler(ClaimsScheduler, trace.U, records)
    warm(s.kv_cache_manager, trace)
    for k, prefix in enumerate(trace.pinned):
        if s.submit_claim(ClaimOp(f"c{k}"), prefix) != STATE.materialized:
            raise AssertionError(f"claim c{k} did not materialize")
    s._sync("lru")
    return s


def replay(trace: Trace, kv: KVCacheManager, s: ClaimsScheduler | None = None) -> int:
    """The trace on `kv`; with `s`, each admission is one step of `s`'s own hooks around
    vLLM's allocation (the step's waiting queue is that one request). Returns the hit blocks."""
    hits = 0
    for is_admit, i in trace.ops:
        req = trace.requests[i]
        if not is_admit:
            kv.free(req)
            continue
        if s is not None:
            req.status, req.num_computed_tokens = RequestStatus.WAITING, 0
            s.tick()
            s.waiting = FCFSRequestQueue([req])
            s._arbitrate()
        hit = admit(kv, req)
        if hit is None:
            raise AssertionError(f"{req.request_id} did not fit: the replay left the trace")
        hits += hit
        if s is not None:
            s._sync("lru")
            s._admitted(req, req.num_tokens - hit * B)
            s.book.materialize_ready()
    return hits


def replay_block_pool(trace: Trace, bp: BlockPool) -> int:
    """The trace's block operations on vLLM's `BlockPool`; returns the hit blocks."""
    held: dict[int, list[kvu.KVCacheBlock]] = {}
    hits = 0
    for is_admit, i in trace.ops:
        if not is_admit:
            bp.free_blocks(reversed(held.pop(i)))
            continue
        req = trace.requests[i]
        found = []
        for h in req.block_hashes[: (req.num_tokens - 1) // B]:
            b = bp.get_cached_block(h, [GROUP])
            if b is None:
                break
            found.append(b[0])
        bp.touch(found)
        blocks = found + bp.get_new_blocks(-(-req.num_tokens // B) - len(found))
        bp.cache_full_blocks(req, blocks, len(found), len(req.block_hashes), B, GROUP)
        held[i], hits = blocks, hits + len(found)
    return hits


def replay_device_pool(trace: Trace, p: DevicePool, chains: list[list[str]]) -> int:
    """The same block operations on the refimpl's `DevicePool`; returns the hit blocks."""
    held: dict[int, list[int]] = {}
    hits = 0
    for is_admit, i in trace.ops:
        if not is_admit:
            for s in reversed(held.pop(i)):
                p.refs[s] -= 1
                p.settle(s)
            continue
        req, chain = trace.requests[i], chains[i]
        found = []
        for h in chain[: (req.num_tokens - 1) // B]:
            hit = p.lookup(h)
            if hit is None:
                break
            found.append(hit)
        need = -(-req.num_tokens // B) - len(found)
        for s in found:
            p.refs[s] += 1
            p.settle(s)
        while len(p.free) < need:
            oldest = p.oldest_cached()
            if oldest is None:
                raise AssertionError(f"{req.request_id} did not fit: nothing cached to evict")
            p.evict(oldest)
        new = [p.take_free() for _ in range(need)]
        for s in new:
            p.refs[s] += 1
            p.settle(s)
        for s, h in zip(new, chain[len(found) :]):
            p.register(s, h)
        held[i], hits = found + new, hits + len(found)
    return hits


def timed(times: list[float], fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)

    return run


def compare(
    name: str,
    baseline: tuple[str, Callable[[], object]],
    ours: tuple[str, Callable[[], object]],
    rounds: int,
    target: str,
) -> tuple[Ratio, list[float], list[float]]:
    """`interleaved`, and each side's times. The heap built so far (the prepared states,
    the engines) is frozen first, as vLLM's engine core freezes its own after start-up,
    so that a full collection of it does not land in one side's round."""
    t_base: list[float] = []
    t_ours: list[float] = []
    gc.collect()
    gc.freeze()
    try:
        r = interleaved(
            name, (baseline[0], timed(t_base, baseline[1])), (ours[0], timed(t_ours, ours[1])), rounds, target=target
        )
    finally:
        gc.unfreeze()
    return r, t_base, t_ours


def figure1(trace: Trace, rounds: int, label: str, target: str, records: bool = True) -> Ratio:
    """`records`: the claim layer's trace is kept in memory, as an in-process engine keeps it
    (false: off, as in a server started without `kvclaims.trace`)."""
    check = claims(trace)
    hits = replay(trace, stock(trace))
    if hits != replay(trace, check.kv_cache_manager, check):
        raise AssertionError("stock and claims replays hit different blocks")
    kinds = Counter(r["kind"] for r in check.trace.records)
    if kinds["request_wait"] or kinds["request_refuse"]:
        raise AssertionError("the claim layer did not admit every request of the trace")
    evicted = sum(len(r["blocks"]) for r in check.trace.records if r["kind"] == "block_evict")
    base, ours = iter([stock(trace) for _ in range(rounds)]), iter([claims(trace, records) for _ in range(rounds)])
    r, t_base, t_ours = compare(
        f"vLLM allocator, {label}, trace {'kept' if records else 'off'}: "
        f"{len(trace.requests)} admissions on {trace.U} blocks of {B}",
        ("stock KVCacheManager", lambda: replay(trace, next(base))),
        ("KVCacheManager + claim layer", lambda: replay(trace, (s := next(ours)).kv_cache_manager, s)),
        rounds,
        target,
    )
    r.extra = {
        **{
            f"{name} admissions/s": round(len(trace.requests) / statistics.median(t))
            for name, t in (("stock", t_base), ("claims", t_ours))
        },
        "hit blocks": hits,
        "evicted blocks": evicted,
    }
    return r


def figure3(trace: Trace, rounds: int) -> Ratio:
    chains = [[hexid(h) for h in r.block_hashes] for r in trace.requests]

    def vllm_pool() -> BlockPool:
        return BlockPool(trace.U + 1, enable_caching=True, hash_block_size=B)

    def device_pool() -> DevicePool:
        return DevicePool(trace.U, B, heads=1, head_dim=1, device="cpu")

    if replay_block_pool(trace, vllm_pool()) != replay_device_pool(trace, device_pool(), chains):
        raise AssertionError("the two pools hit different blocks on the same trace")
    base, ours = iter([vllm_pool() for _ in range(rounds)]), iter([device_pool() for _ in range(rounds)])
    r, t_base, t_ours = compare(
        f"block pool ops, {len(trace.requests)} admissions on {trace.U} blocks of {B}",
        ("vLLM BlockPool", lambda: replay_block_pool(trace, next(base))),
        ("refimpl DevicePool (1x1 KV)", lambda: replay_device_pool(trace, next(ours), chains)),
        rounds,
        "<= 2",
    )
    blocks = sum(-(-q.num_tokens // B) for q in trace.requests)
    r.extra = {
        f"{name} ns/block": round(statistics.median(t) / blocks * 1e9)
        for name, t in (("vLLM", t_base), ("refimpl", t_ours))
    }
    return r


def run(smoke: bool = False) -> list[Ratio]:
    n, rounds = (150, 3) if smoke else (3000, 15)
    plain, pinned = record(n), record(n, claims=4)
    return [  # issue 18's targets
        *(figure1(plain, rounds, "no claims", "<= 1.05", records) for records in (True, False)),
        *(figure1(pinned, rounds, "4 live hard claims", "<= 1.15", records) for records in (True, False)),
        figure3(plain, rounds),
    ]

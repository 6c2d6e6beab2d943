"""A verified host tier for claims, under vLLM's own ``OffloadingConnector``.

Switched on with (see `integrations/vllm/README.md`)::

    --kv-transfer-config '{"kv_connector": "ClaimsOffloadingConnector",
      "kv_connector_module_path": "kvclaims.vllm.hosttier", "kv_role": "kv_both",
      "kv_load_failure_policy": "recompute",
      "kv_connector_extra_config": {"spec_name": "ClaimsHostSpec",
        "spec_module_path": "kvclaims.vllm.hosttier", "cpu_bytes_to_use": 1073741824}}'

vLLM does the tier's work: which blocks to offer the host (every computed prompt block),
its LRU, lookups, load jobs into a request's blocks, the invalid-KV-load path. What the
claims need and the stock pieces lack is added where vLLM lets an out-of-tree spec and a
connector subclass add it (vllm 0.32, `docs/design/vllm-host-tier.md`):

- **Checksums.** The worker (`TorchHostWorker`, over `hostcopy.HostCopies`) takes one per
  block when it stores it and reports it to the scheduler with the job's completion;
  the manager hands the expected checksums to the worker with every load, which copies
  only blocks that match and reports the rest as invalid blocks, the way vLLM's
  ``get_block_ids_with_load_errors`` contract asks. vLLM's CPU worker needs CUDA and
  its connector worker asserts that no job fails.
- **Pins.** `ClaimsHostManager.pin` holds an offloaded claim's chunks by the manager's
  own reference count, so its LRU never drops them while the claim is offloaded.
- **No livelock on a bad copy.** After a failed load the scheduler side drops the failed
  keys from the manager (`invalidate`), so the next lookup misses and the request
  recomputes; stock, the manager never learns, and a request whose first block is bad
  reloads it every step.
- **Fault injection.** `ClaimsConnectorScheduler.corrupt` queues host chunks to corrupt;
  the command reaches the worker in the step's connector metadata, so it works in every
  process layout (in process, multiprocess, behind the HTTP server).

The claim side (offload, restore, fail closed, traces) is `kvclaims.vllm.host`. One KV
cache group, one worker (tensor parallel size 1) and one block per chunk, as the
integration requires; anything else is refused at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Protocol

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.common import OffloadingWorkerMetadata
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.scheduler import OffloadingConnectorScheduler
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.worker import OffloadingConnectorWorker
from vllm.distributed.kv_transfer.kv_connector.v1.offloading_connector import OffloadingConnector
from vllm.v1.kv_offload.base import (
    CanonicalKVCaches,
    GPULoadStoreSpec,
    LoadStoreSpec,
    OffloadKey,
    OffloadingEvent,
    OffloadingWorker,
    ReqContext,
    TransferResult,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager
from vllm.v1.kv_offload.cpu.spec import CPUOffloadingSpec
from vllm.v1.request import Request

from kvclaims.errors import InvalidInput
from kvclaims.vllm.hostcopy import HostCopies


PIN = ReqContext(req_id="kvclaims:pin")  # what a pin passes for a request (its bookkeeping reads none)


class HostListener(Protocol):
    """What the claims scheduler is told by the manager (same process)."""

    def host_stored(self, keys: list[OffloadKey]) -> None: ...

    def host_evicted(self, keys: list[OffloadKey]) -> None: ...


class ClaimsHostManager(CPUOffloadingManager):
    """vLLM's CPU offloading manager (chunk pool, LRU, lookups) with each ready chunk's
    checksum, pins for claims and invalidation of bad copies."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_key: dict[int, OffloadKey] = {}  # chunk id -> the key stored in it
        self.digest: dict[OffloadKey, str] = {}  # ready keys -> checksum taken at store
        self.pins: dict[OffloadKey, int] = {}  # keys pinned by claims -> how many pins
        self.listener: HostListener | None = None
        self.store_only: Callable[[list[OffloadKey]], list[OffloadKey]] | None = None  # None: store any
        self.stores_from: Callable[[str], bool] | None = None  # may this request store? (None: any)
        self.capacity = self._num_chunks  # what the spec sized (and the worker allocated)
        self.corrupting: list[int] = []  # chunks a fault injection corrupts with the next step
        self.faulted: set[OffloadKey] = set()  # keys whose copy a fault was injected into

    def ready(self, key: OffloadKey) -> bool:
        """Is a verified copy of `key` on the host (stored, checksum known)?"""
        chunk = self._policy.get(key)
        return chunk is not None and chunk.is_ready and key in self.digest

    def prepare_store(self, keys, req_context):
        keys = list(keys) if self.store_only is None else self.store_only(list(keys))
        if self.stores_from is not None and not self.stores_from(req_context.req_id):
            keys = []  # (its KV may rest on KV declared invalid)
        out = super().prepare_store(keys, req_context) or self._store_prefix(keys, req_context)
        if out is not None:
            for key in out.evicted_keys:
                self.digest.pop(key, None)
                self.faulted.discard(key)
            assert isinstance(out.store_spec, CPULoadStoreSpec)
            self.chunk_key.update(zip(out.store_spec.block_ids.tolist(), out.keys_to_store))
            if out.evicted_keys and self.listener:
                self.listener.host_evicted(list(out.evicted_keys))
        return out

    def _store_prefix(self, keys: list[OffloadKey], req_context):
        """The longest prefix of an offer that fits. vLLM stores a request's offer all or
        nothing; a claim's chain is a prompt's first blocks, so under host pressure this
        still gives it its copies."""
        room, new, cut = self._get_num_free_chunks() + self._num_evictable_cache_chunks, 0, 0
        for i, key in enumerate(keys):
            new += self._policy.get(key) is None
            if new > room:
                break
            cut = i + 1
        for n in range(cut, 0, -1):
            out = super().prepare_store(keys[:n], req_context)
            if out is not None:
                return out
        return None

    def _free_chunk(self, chunk) -> None:
        """A chunk whose copy goes is no fault's target any more (its next copy is intact)."""
        super()._free_chunk(chunk)
        if chunk.chunk_id in self.corrupting:
            self.corrupting.remove(chunk.chunk_id)

    def stored(self, digests: dict[int, str]) -> None:
        """Checksums of chunks whose store completed (before `complete_store` marks them ready)."""
        for chunk, d in digests.items():
            self.digest[self.chunk_key[chunk]] = d

    def complete_store(self, keys, req_context, success: bool = True) -> None:
        super().complete_store(keys, req_context, success)
        done = [k for k in keys if self.ready(k)]
        if done and self.listener:
            self.listener.host_stored(done)

    def prepare_load(self, keys, req_context) -> LoadStoreSpec:
        spec = super().prepare_load(keys, req_context)
        spec.expected = [self.digest[k] for k in keys]  # type: ignore[attr-defined]  # travels to the worker
        return spec

    def pin(self, keys: Iterable[OffloadKey]) -> None:
        """Hold ready chunks for a claim: LRU eviction skips a chunk with references."""
        for key in keys:
            assert self.ready(key), f"pin of a key not ready on the host: {key!r}"
            self._ref(key, +1)
            self.pins[key] = self.pins.get(key, 0) + 1

    def unpin(self, keys: Iterable[OffloadKey]) -> None:
        for key in keys:
            assert self.pins.get(key, 0) > 0, f"unpin of a key not pinned: {key!r}"
            self.pins[key] -= 1
            if not self.pins[key]:
                del self.pins[key]
            self._ref(key, -1)

    def _ref(self, key: OffloadKey, delta: int) -> None:
        """The reference bookkeeping of `prepare_load` / `complete_load`, for a pin."""
        if delta > 0:
            self._prepare_load([key], PIN, record_access=False)
        else:
            self.complete_load([key], PIN)

    def invalidate(self, keys: Collection[OffloadKey]) -> list[OffloadKey]:
        """Drop copies known bad; returns those dropped. A key that is pinned or being
        loaded is dropped by the caller's later call (the claim unpins it first)."""
        gone = []
        for key in dict.fromkeys(keys):
            chunk = self._policy.get(key)
            if chunk is None or chunk.ref_cnt != 0:
                continue
            self._policy.remove(key)
            self._num_evictable_cache_chunks -= 1
            self._free_chunk(chunk)
            self.digest.pop(key, None)
            self.faulted.discard(key)
            gone.append(key)
        if gone and self.events is not None:
            self.events.append(OffloadingEvent(keys=gone, medium=self.medium, removed=True))
        return gone

    def reset_cache(self) -> None:
        super().reset_cache()
        self.chunk_key.clear()
        self.digest.clear()
        self.pins.clear()
        self.corrupting.clear()
        self.faulted.clear()

    def resize(self, num_chunks: int) -> None:
        """Use `num_chunks` of the chunks the spec sized (a test harness's smaller host
        tier); only while the tier is empty."""
        assert not self._num_allocated_chunks and not self.pins, "resize of a host tier in use"
        assert 0 <= num_chunks <= self.capacity, (num_chunks, self.capacity)
        self._num_chunks = num_chunks

    def check_valid(self) -> None:
        """Every pinned key is ready and referenced at least once per pin."""
        for key, n in self.pins.items():
            chunk = self._policy.get(key)
            assert chunk is not None and chunk.is_ready, f"pinned host key {key!r} is not ready"
            assert chunk.ref_cnt >= n, f"host key {key!r}: {n} pins, ref_cnt {chunk.ref_cnt}"


class TorchHostWorker(OffloadingWorker):
    """Stores and loads through `HostCopies`; a load whose checksum does not match fails
    its job and names the device blocks it did not write. Never fails a submission."""

    def __init__(self, copies: HostCopies) -> None:
        self.copies = copies
        self.finished: list[TransferResult] = []
        self.digests: dict[int, dict[int, str]] = {}  # store job -> chunk -> checksum, since the last report
        self.failed: dict[int, tuple[list[int], list[int]]] = {}  # load job -> (chunks, device blocks)

    def submit_store(self, job_id: int, src_spec: LoadStoreSpec, dst_spec: LoadStoreSpec) -> bool:
        assert isinstance(src_spec, GPULoadStoreSpec) and isinstance(dst_spec, CPULoadStoreSpec)
        self.digests[job_id] = self.copies.store(src_spec.block_ids.tolist(), dst_spec.block_ids.tolist())
        self.finished.append(TransferResult(job_id, True))
        return True

    def submit_load(self, job_id: int, src_spec: LoadStoreSpec, dst_spec: LoadStoreSpec) -> bool:
        assert isinstance(src_spec, CPULoadStoreSpec) and isinstance(dst_spec, GPULoadStoreSpec)
        chunks, blocks = src_spec.block_ids.tolist(), dst_spec.block_ids.tolist()
        bad = self.copies.load(chunks, blocks, src_spec.expected)  # type: ignore[attr-defined]
        if bad:
            self.failed[job_id] = ([c for c, b in zip(chunks, blocks) if b in bad], bad)
        self.finished.append(TransferResult(job_id, not bad))
        return True

    def get_finished(self) -> list[TransferResult]:
        out, self.finished = self.finished, []
        return out

    def wait(self, job_ids: set[int]) -> None:
        """Copies are synchronous: nothing is ever in flight."""


class ClaimsHostSpec(CPUOffloadingSpec):
    """vLLM's CPU offloading spec (sizing from ``cpu_bytes_to_use``, its metric
    definitions) with the claims manager and the torch worker, on any platform."""

    def __init__(self, config) -> None:
        super().__init__(config)
        if self.blocks_per_chunk != 1:
            raise InvalidInput(
                f"the claims host tier stores one block per chunk; got blocks_per_chunk={self.blocks_per_chunk}"
            )
        if config.parallel.world_size != 1:
            raise InvalidInput(
                f"the claims host tier needs one worker (tensor parallel size 1), got {config.parallel.world_size}"
            )

    def get_manager(self) -> ClaimsHostManager:
        if not self._manager:
            self._manager = ClaimsHostManager(
                num_chunks=self.num_chunks,
                cache_policy=self.eviction_policy,
                cache_policy_module_path=self.cache_policy_module_path,
                enable_events=self.kv_events_config.enable_kv_cache_events,
                store_threshold=int(self.extra_config.get("store_threshold", 0)),
            )
        assert isinstance(self._manager, ClaimsHostManager)
        return self._manager

    def get_worker(self, kv_caches: CanonicalKVCaches) -> TorchHostWorker:
        if not self._worker:
            self._worker = TorchHostWorker(HostCopies([t.tensor for t in kv_caches.tensors], self.num_chunks))  # type: ignore[assignment]
        assert isinstance(self._worker, TorchHostWorker)
        return self._worker


@dataclass
class ClaimsWorkerMeta(OffloadingWorkerMetadata):
    """vLLM's completion report plus what the tier adds: checksums of stored chunks and
    the chunks of failed loads, by job."""

    digests: dict[int, dict[int, str]] = field(default_factory=dict)  # store job -> chunk -> checksum
    failed: dict[int, list[int]] = field(default_factory=dict)

    def aggregate(self, other):
        merged = super().aggregate(other)
        assert isinstance(other, ClaimsWorkerMeta)
        return ClaimsWorkerMeta(
            completed_jobs=merged.completed_jobs,
            transfer_stats=merged.transfer_stats,
            digests={**self.digests, **other.digests},
            failed={**self.failed, **other.failed},
        )


class ClaimsConnectorWorker(OffloadingConnectorWorker):
    """The stock worker half, but a failed load is a finished load whose blocks are
    reported invalid (vLLM asserts no job fails), and operator commands run first."""

    def _adopt(self) -> None:
        self._connector_worker_meta = ClaimsWorkerMeta()
        self.load_errors: set[int] = set()

    def start_kv_transfers(self, metadata) -> None:
        assert isinstance(self.worker, TorchHostWorker)
        for chunk in getattr(metadata, "kvclaims_corrupt", ()):
            self.worker.copies.corrupt(chunk)
        super().start_kv_transfers(metadata)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str], set[str]]:
        worker, meta = self.worker, self._connector_worker_meta
        assert isinstance(worker, TorchHostWorker) and isinstance(meta, ClaimsWorkerMeta)
        finished_recving: set[str] = set()
        for result in worker.get_finished():
            meta.mark_completed(result.job_id)
            if not result.success:
                chunks, blocks = worker.failed.pop(result.job_id)
                meta.failed[result.job_id] = chunks
                self.load_errors.update(blocks)
            req_id = self._load_jobs.pop(result.job_id, None)
            if req_id is not None:
                finished_recving.add(req_id)
        meta.digests.update(worker.digests)
        worker.digests.clear()
        return set(), finished_recving

    def build_connector_worker_meta(self) -> ClaimsWorkerMeta | None:
        meta = self._connector_worker_meta
        if not meta.completed_jobs:
            return None
        self._connector_worker_meta = ClaimsWorkerMeta()
        assert isinstance(meta, ClaimsWorkerMeta)
        return meta

    def shutdown(self) -> None:
        super().shutdown()
        self._connector_worker_meta = ClaimsWorkerMeta()


class ClaimsConnectorScheduler(OffloadingConnectorScheduler):
    """The stock scheduler half, plus: checksums recorded as stores complete, bad keys
    dropped after a failed load (and the request's store point moved back so what it
    recomputes is stored again), the keys each request loads, and fault commands."""

    def _adopt(self) -> None:
        if not isinstance(self.manager, ClaimsHostManager):
            raise InvalidInput(
                "ClaimsOffloadingConnector needs the claims host tier's spec: kv_connector_extra_config "
                '{"spec_name": "ClaimsHostSpec", "spec_module_path": "kvclaims.vllm.hosttier"}'
            )
        self.host: ClaimsHostManager = self.manager
        self.loading: dict[str, list[OffloadKey]] = {}  # request -> keys of its load job
        self.local: dict[str, int] = {}  # request -> tokens it had in the device cache when it began loading
        self.poisoned: set[int] = set()  # store jobs in flight at an invalidation: their copies are dropped
        # Tokens a request may load from the host beyond what it computed (None: what
        # vLLM's lookup finds): the claims side's `host_serves` setting.
        self.load_limit: Callable[[Request, int], int] | None = None

    def corrupt(self, key: OffloadKey) -> None:
        """Corrupt the host copy of `key` on the worker, with the next step."""
        chunk = self.host._policy.get(key)
        assert chunk is not None and chunk.is_ready, f"no host copy of {key!r}"
        self.host.corrupting.append(chunk.chunk_id)
        self.host.faulted.add(key)

    def get_num_new_matched_tokens(self, request, num_computed_tokens, max_num_new_tokens=None):
        if self.load_limit is not None:
            cap = self.load_limit(request, num_computed_tokens)
            max_num_new_tokens = cap if max_num_new_tokens is None else min(cap, max_num_new_tokens)
        return super().get_num_new_matched_tokens(request, num_computed_tokens, max_num_new_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens) -> None:
        before = set(self._current_batch_load_jobs)
        super().update_state_after_alloc(request, blocks, num_external_tokens)
        for job in set(self._current_batch_load_jobs) - before:
            chunks = self._current_batch_load_jobs[job].src_spec.block_ids.tolist()  # type: ignore[attr-defined]
            self.loading[request.request_id] = [self.host.chunk_key[c] for c in chunks]
            self.local[request.request_id] = self._req_status[request.request_id].num_locally_computed_tokens

    def build_connector_meta(self, scheduler_output):
        meta = super().build_connector_meta(scheduler_output)
        meta.kvclaims_corrupt, self.host.corrupting = self.host.corrupting, []
        return meta

    def poison_stores(self) -> None:
        """KV was declared invalid (a device fault, a reset): the stores in flight may copy
        it, so what they store is dropped when they complete, never loaded."""
        self.poisoned |= {job for job, status in self._jobs.items() if status.is_store}

    def update_connector_output(self, connector_output) -> None:
        meta = connector_output.kv_connector_worker_meta
        failed: list[tuple[str, list[OffloadKey]]] = []
        dropped: list[OffloadKey] = []
        if isinstance(meta, ClaimsWorkerMeta):
            live = {job for job in meta.completed_jobs if job in self._jobs}  # (not from before a reset)
            for job, digests in meta.digests.items():
                if job in live - self.poisoned:
                    self.host.stored(digests)
            for job in live & self.poisoned:
                dropped += self._jobs[job].keys
            self.poisoned -= set(meta.completed_jobs)
            for job, chunks in meta.failed.items():
                if job in live:
                    failed.append((self._jobs[job].req_id, [self.host.chunk_key[c] for c in chunks]))
        super().update_connector_output(connector_output)
        self.host.invalidate(dropped)
        for req_id, keys in failed:
            self.host.invalidate(keys)
            self._store_again(req_id, keys)

    def reset_cache(self) -> None:
        super().reset_cache()
        self.poisoned.clear()

    def _store_again(self, req_id: str, keys: list[OffloadKey]) -> None:
        """A failed load had moved the request's store point past the chunks it loaded:
        move it back to the first bad one, so the request stores what it recomputes."""
        status = self._req_status.get(req_id)
        if status is None:
            return
        for group in status.group_states:
            at = [i for i, k in enumerate(group.offload_keys) if k in set(keys)]
            if at:
                group.next_stored_chunk_idx = min(group.next_stored_chunk_idx, at[0])

    def request_finished(self, request, *args, **kwargs):
        self.loading.pop(request.request_id, None)
        self.local.pop(request.request_id, None)
        return super().request_finished(request, *args, **kwargs)


class ClaimsOffloadingConnector(OffloadingConnector):
    """vLLM's ``OffloadingConnector`` with the claims halves, which report load errors.

    vLLM builds its halves inside the connector's ``__init__`` from a spec it keeps
    nowhere else, so the stock halves are given the claims classes in place (they add
    state and overrides, never a field of their own to vLLM's)."""

    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        for half, cls in (
            (self.connector_scheduler, ClaimsConnectorScheduler),
            (self.connector_worker, ClaimsConnectorWorker),
        ):
            if half is not None:
                half.__class__ = cls
                cls._adopt(half)  # type: ignore[arg-type]

    def get_block_ids_with_load_errors(self) -> set[int]:
        w = self.connector_worker
        if not isinstance(w, ClaimsConnectorWorker):
            return set()
        out, w.load_errors = w.load_errors, set()
        return out

"""Offload/restore bandwidth of the host tiers against a plain torch copy (figure 8).

Two figures, each the same bytes moved device -> host -> device: ours with every block's
checksum taken (on the host side of each transfer, `kvclaims.blockcopy`) and checked, the
baseline a plain ``copy_`` each way (into pinned memory on CUDA). Reported as a bandwidth
fraction: plain time / ours, target >= 0.8.

- ``run``: the refimpl's host tier through the runtime (`offload_claim`, `restore_claim`):
  the copies plus what an offload and a restore do to the pool (device blocks evicted and
  wiped, then taken again, holds, the trace).
- ``run_vllm``: the vLLM integration's host tier as vLLM's connector drives it, without an
  engine (one would add model steps to both sides): `ClaimsHostSpec` builds the manager
  (vLLM's CPU offloading manager plus checksums) and the worker (`HostCopies`) from
  canonical KV tensors laid out as a vLLM engine hands them to its worker (one
  ``(num_blocks, page_bytes)`` int8 view per layer, the layers back to back in one
  allocation, as the tiny model's engine has them). A round stores a fresh set of keys
  (vLLM's LRU evicting the last round's), reports the checksums, completes the store,
  then loads the keys back into the same device blocks with the expected checksums.

Both are meant for a CUDA device (PCIe transfers against a checksum the CPU computes
while later chunks are in flight). On a CPU-only machine both sides move host memory to
host memory at memory bandwidth, so the checksum (a second read of every byte, on one
core, where the plain copy uses all) and per-block bookkeeping are a large share; the
figure says which device it ran on.
"""

from __future__ import annotations

from typing import Any

import torch

from kvclaims.bench.ratio import Ratio, interleaved
from kvclaims.model.names import POLICY, STATE
from kvclaims.refimpl.runtime import Runtime

TARGET = ">= 0.8"
UNIT = "bandwidth fraction (plain time / ours), higher is better"


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _fraction(r: Ratio, device: str, nbytes: int, **extra: Any) -> Ratio:
    r.ratios = [1 / x for x in r.ratios]
    r.unit, r.target = UNIT, TARGET
    r.extra = {"device": device, "bytes": nbytes, **extra}
    if not device.startswith("cuda"):
        r.extra["note"] = "no GPU: host memory to host memory on the CPU"
    return r


def measure(device: str, blocks: int = 512, B: int = 32, heads: int = 8, head_dim: int = 64, rounds: int = 5) -> Ratio:
    """The refimpl: `blocks` blocks of `[2, B, heads, head_dim]` float32 offloaded and restored."""
    rt = Runtime(blocks + 1, B, 0, host_blocks=blocks, heads=heads, head_dim=head_dim, device=device)
    prefix = [i % 50_000 for i in range(blocks * B)]
    rt.submit_request("warm", prefix)
    rt.finish("warm")
    rt.submit_claim("c", prefix, strength="hard", tiers=("device", "host"), policy=POLICY.refuse)
    dev = rt.pool.kv[:blocks]
    host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=dev.is_cuda)

    def plain() -> None:
        host.copy_(dev, non_blocking=dev.is_cuda)
        dev.copy_(host, non_blocking=dev.is_cuda)

    def ours() -> None:
        rt.offload_claim("c")
        rt.restore_claim("c")
        if rt.claim_state("c") != STATE.materialized:
            raise AssertionError(f"restore did not verify: {rt.claim_state('c')}")

    plain()  # warm: first-touch page faults and allocator growth on neither side's clock
    ours()
    nbytes = dev.numel() * dev.element_size()
    r = interleaved(
        f"refimpl host tier offload+restore, {blocks} blocks of {nbytes // blocks // 1024} KiB on {device}",
        ("torch device<->host copy", plain),
        ("refimpl offload+restore (verified)", ours),
        rounds,
        _sync(device),
    )
    return _fraction(r, device, nbytes)


def measure_vllm(device: str, blocks: int = 512, layers: int = 2, page: int = 32 << 10, rounds: int = 5) -> Ratio:
    """vLLM's host tier: `blocks` blocks of `layers` pages of `page` bytes stored and loaded."""
    from vllm.v1.kv_offload.base import (
        CanonicalKVCaches,
        CanonicalKVCacheTensor,
        GPULoadStoreSpec,
        ReqContext,
        TransferResult,
        make_offload_key,
    )

    from kvclaims.vllm.hosttier import ClaimsHostSpec

    spec = ClaimsHostSpec(offloading_config(chunks=blocks, page=layers * page))
    cache = torch.randint(-128, 128, (layers, blocks, page), dtype=torch.int8, device=device)  # one allocation
    canonical = CanonicalKVCaches([CanonicalKVCacheTensor(cache[i], page) for i in range(layers)], [[]])
    manager, worker = spec.get_manager(), spec.get_worker(canonical)
    ctx, ids = ReqContext(req_id="bench"), list(range(blocks))
    gpu = GPULoadStoreSpec(ids, [blocks], [0])
    host = torch.empty(cache.shape, dtype=cache.dtype, pin_memory=cache.is_cuda)
    state = {"round": 0, "job": 0}

    def plain() -> None:
        host.copy_(cache, non_blocking=cache.is_cuda)
        cache.copy_(host, non_blocking=cache.is_cuda)

    def ours() -> None:
        n, job = state["round"], state["job"]
        state["round"], state["job"] = n + 1, job + 2
        keys = [make_offload_key((n * blocks + i).to_bytes(8, "big") * 4, 0) for i in ids]
        out = manager.prepare_store(keys, ctx)
        assert out is not None and list(out.keys_to_store) == keys, "the tier takes every block"
        worker.submit_store(job, gpu, out.store_spec)
        manager.stored(worker.digests.pop(job))
        manager.complete_store(keys, ctx)
        load = manager.prepare_load(keys, ctx)
        worker.submit_load(job + 1, load, gpu)
        manager.complete_load(keys, ctx)
        if worker.get_finished() != [TransferResult(job, True), TransferResult(job + 1, True)]:
            raise AssertionError(f"a load did not verify: {worker.failed}")

    plain()
    ours()
    nbytes = cache.numel() * cache.element_size()
    r = interleaved(
        f"vLLM host tier store+load, {blocks} blocks of {layers} x {page // 1024} KiB pages on {device}",
        ("torch device<->host copy", plain),
        ("vLLM host tier store+load (verified)", ours),
        rounds,
        _sync(device),
    )
    return _fraction(r, device, nbytes, layers=layers, page_bytes=page)


def offloading_config(*, chunks: int, page: int, blocks_per_chunk: int = 1, world_size: int = 1, events: bool = False):
    """vLLM's offloading config for a host tier of exactly `chunks` chunks of `page` bytes
    (one layer group of 32-token blocks; the tests build theirs here too)."""
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig,
        OffloadingConfig,
        OffloadingGroupConfig,
        OffloadingModelConfig,
        OffloadingParallelConfig,
    )

    return OffloadingConfig(
        groups=(OffloadingGroupConfig(tokens_per_block=32, layer_names=("layer.0",), group_id=0),),
        worker_kv_bytes_per_block=page,
        enable_kv_cache_events=events,
        extra_config={"cpu_bytes_to_use": chunks * page},
        engine_id="kvclaims",
        model=OffloadingModelConfig(name="kvclaims", dtype="float32"),
        cache=OffloadingCacheConfig(tokens_per_hash=32, blocks_per_chunk=blocks_per_chunk),
        parallel=OffloadingParallelConfig(
            rank=0,
            world_size=world_size,
            tp_size=world_size,
            pp_size=1,
            pcp_size=1,
            dcp_size=1,
            data_parallel_index=0,
            data_parallel_size=1,
            data_parallel_rank_local=None,
            is_parallelism_agnostic=True,
        ),
    )


def run(smoke: bool = False) -> list[Ratio]:
    """The refimpl figure: 2048 blocks of 64 KiB (128 MiB), float32."""
    return [measure(_device(), blocks=64 if smoke else 2048, B=16, heads=8, head_dim=64, rounds=3 if smoke else 11)]


def run_vllm(smoke: bool = False) -> list[Ratio]:
    """The vLLM figure: the same bytes, 2048 blocks of 2 layers x 32 KiB pages."""
    return [measure_vllm(_device(), blocks=64 if smoke else 2048, rounds=3 if smoke else 11)]

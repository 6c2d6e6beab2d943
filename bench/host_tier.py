"""Offload/restore bandwidth of the refimpl host tier against a plain torch copy (figure 8).

Both move the same bytes between the device pool and host memory (pinned on
CUDA); the refimpl also checksums every block, on the host copy after an
offload and on the device after a restore, which is the price of fail-closed
restores. Reported as a bandwidth fraction: plain time / ours. The figure is
meant for a CUDA device; on a CPU-only machine both sides are host memory
copies and the checksum dominates, so the CPU number is reported as such.
"""

from __future__ import annotations

import torch

from kvclaims.bench.ratio import Ratio, interleaved
from kvclaims.refimpl.runtime import Runtime
from kvclaims.model.names import POLICY, STATE


def measure(device: str, blocks: int = 512, B: int = 32, heads: int = 8, head_dim: int = 64, rounds: int = 5) -> Ratio:
    rt = Runtime(blocks + 1, B, 0, host_blocks=blocks, heads=heads, head_dim=head_dim, device=device)
    prefix = [i % 50_000 for i in range(blocks * B)]
    rt.submit_request("warm", prefix)
    rt.finish("warm")
    rt.submit_claim("c", prefix, strength="hard", tiers=("device", "host"), policy=POLICY.refuse)
    dev = rt.pool.kv[:blocks]
    host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=dev.is_cuda)
    sync = torch.cuda.synchronize if dev.is_cuda else (lambda: None)

    def plain() -> None:
        host.copy_(dev, non_blocking=dev.is_cuda)
        dev.copy_(host, non_blocking=dev.is_cuda)

    def ours() -> None:
        rt.offload_claim("c")
        rt.restore_claim("c")
        if rt.claim_state("c") != STATE.materialized:
            raise AssertionError(f"restore did not verify: {rt.claim_state('c')}")

    r = interleaved(
        f"host tier offload+restore, {blocks} blocks of {dev[0].numel() * dev.element_size() // 1024} KiB on {device}",
        ("torch device<->host copy", plain),
        ("refimpl offload+restore (verified)", ours),
        rounds,
        sync,
    )
    r.ratios = [1 / x for x in r.ratios]
    r.unit = "bandwidth fraction (plain time / ours), higher is better"
    r.target = ">= 0.8" if device.startswith("cuda") else ""
    r.extra = {"device": device, "bytes": dev.numel() * dev.element_size()}
    return r


def run(smoke: bool = False) -> list[Ratio]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [measure(device, blocks=64 if smoke else 2048, heads=8, head_dim=64, B=16, rounds=3 if smoke else 5)]

"""The tiny random-weight Llama the probe and tests run on, built locally (no model hub).

It is cached outside the repository (``~/.cache/kvclaims/`` or ``$KVCLAIMS_CACHE``)
and rebuilt only when missing. The shape is the smallest the CPU attention backend
accepts (head_dim 64); the weights are random, since only the KV allocator matters.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

MODEL_NAME = "tiny-llama-h128-l2-v512"
VOCAB = 512


def cache_root() -> Path:
    return Path(os.environ.get("KVCLAIMS_CACHE") or Path.home() / ".cache" / "kvclaims")


def tiny_model_dir(root: Path | None = None) -> Path:
    """Path of the tiny model, built on first use (seeded, so rebuilds are identical)."""
    path = (root or cache_root()) / MODEL_NAME
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                         vocab_size=VOCAB, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    LlamaForCausalLM(config).save_pretrained(tmp)
    try:
        tmp.replace(path)          # atomic: a concurrent builder's copy is identical
    except OSError:
        shutil.rmtree(tmp)
    return path

"""The tiny random-weight models the probe and tests run on, built locally (no model hub).

They are cached outside the repository (``~/.cache/kvclaims/`` or ``$KVCLAIMS_CACHE``)
and rebuilt only when missing. The shape is the smallest the CPU attention backend
accepts (head_dim 64); the weights are random, since only the KV allocator matters.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MODEL_NAME = "tiny-llama-h128-l2-v512"
SLIDING_MODEL_NAME = "tiny-mistral-sw64-h128-l2-v512"
VOCAB = 512
SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    vocab_size=VOCAB,
    max_position_embeddings=4096,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def cache_root() -> Path:
    return Path(os.environ.get("KVCLAIMS_CACHE") or Path.home() / ".cache" / "kvclaims")


def tiny_model_dir(root: Path | None = None) -> Path:
    """Path of the tiny Llama, built on first use (seeded, so rebuilds are identical)."""

    def make():
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**SHAPE))

    return _built((root or cache_root()) / MODEL_NAME, make)


def tiny_sliding_model_dir(root: Path | None = None) -> Path:
    """Path of a tiny Mistral with a 64-token sliding window on every layer: vLLM gives it
    one sliding-window KV cache group (``SlidingWindowSpec``), which frees the blocks that
    leave the window, the kind of model the integration must refuse."""

    def make():
        from transformers import MistralConfig, MistralForCausalLM

        return MistralForCausalLM(MistralConfig(sliding_window=64, **SHAPE))

    return _built((root or cache_root()) / SLIDING_MODEL_NAME, make)


def _built(path: Path, make) -> Path:
    """`path`, holding the model `make()` builds (seeded) unless it is there already."""
    if (path / "config.json").exists():
        return path
    import torch

    torch.manual_seed(0)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    make().save_pretrained(tmp)
    try:
        tmp.replace(path)  # atomic: a concurrent builder's copy is identical
    except OSError:
        shutil.rmtree(tmp)
    return path

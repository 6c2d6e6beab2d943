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
DEMO_MODEL_NAME = "tiny-llama-h128-l2-v512-bytes"
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
    return _built((root or cache_root()) / MODEL_NAME, _llama)


def tiny_sliding_model_dir(root: Path | None = None) -> Path:
    """Path of a tiny Mistral with a 64-token sliding window on every layer: vLLM gives it
    one sliding-window KV cache group (``SlidingWindowSpec``), which frees the blocks that
    leave the window, the kind of model the integration must refuse."""

    def make():
        from transformers import MistralConfig, MistralForCausalLM

        return MistralForCausalLM(MistralConfig(sliding_window=64, **SHAPE))

    return _built((root or cache_root()) / SLIDING_MODEL_NAME, make)


def demo_model_dir(root: Path | None = None) -> Path:
    """Path of the tiny Llama with a tokenizer, for vLLM's server as a user starts it
    (`kvclaims demo-model`): text prompts and chat work, and no ``--skip-tokenizer-init``
    is needed. The weights are `tiny_model_dir`'s; its own directory keeps that one
    tokenizer-less, as the tests that pass token ids expect."""
    return _built((root or cache_root()) / DEMO_MODEL_NAME, _llama, byte_tokenizer)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**SHAPE))


SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}  # SHAPE's pad, bos and eos ids
BYTE0 = len(SPECIALS)  # byte b is token BYTE0 + b
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level tokenizer over the whole vocabulary, built offline: the special tokens
    at the model's ids, then the 256 bytes, then fillers up to `VOCAB`, so any id the
    random model samples decodes (a filler as its own text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = dict(SPECIALS)
    vocab.update({char: BYTE0 + byte for byte, char in bytes_to_unicode().items()})
    vocab.update({f"<extra_{i}>": i for i in range(len(vocab), VOCAB)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    names = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=CHAT_TEMPLATE, **names)


def _built(path: Path, make, *extras) -> Path:
    """`path`, holding the model `make()` builds (seeded) and what each of `extras()` saves
    beside it, unless it is there already."""
    if (path / "config.json").exists():
        return path
    import torch

    torch.manual_seed(0)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    for part in (make, *extras):
        part().save_pretrained(tmp)
    try:
        tmp.replace(path)  # atomic: a concurrent builder's copy is identical
    except OSError:
        shutil.rmtree(tmp)
    return path

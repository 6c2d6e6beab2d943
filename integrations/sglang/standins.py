"""Loading SGLang's cache code on a CPU machine, pinned to the version the adapter is built on.

The adapter drives SGLang's own cache code (radix tree, allocator, KV pool, allocation
path) in process, without its model runner or scheduler process. Importing that code
on CPU needs one stand-in: SGLang's config package imports ``torchvision`` for its
multimodal processors (``sglang/srt/configs``: InternVL and DeepSeek-OCR image
transforms), and PyPI's torchvision wheels need CUDA torch. `load` serves
``torchvision`` as an import-only stand-in *while SGLang is imported*, then takes it
out of ``sys.modules`` again, so nothing else in the process (vLLM, transformers) ever
sees it; a stand-in attribute used at run time raises, naming it. Nothing here touches
SGLang's cache logic. (Real ``triton`` is installed with vLLM's CPU build; SGLang's
kernels are never launched on CPU.)

Its host tier (HiCache) moves data with CUDA-only pieces; `host_tier_substitutions`
registers two CPU ones in their place, both data movement only (`kvclaims.sglang.hicache`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
import types
import warnings
from typing import Any

from kvclaims.errors import InvalidInput

PINNED = "0.5.23"  # the SGLang the adapter is built and tested on (pyproject's `sglang` extra)
STOOD_IN = "torchvision"


class _Unavailable:
    """A stand-in value: attributes chain (``InterpolationMode.BICUBIC``), anything else raises."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self._name}.{item}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name} is a stand-in: torchvision is not installed (SGLang's image processors)")


class _Class(type):
    """A stand-in class (``InterpolationMode``): its attributes chain too."""

    def __getattr__(cls, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{cls.__name__}.{item}")


class _Module(types.ModuleType):
    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        if item[:1].isupper():
            return _Class(item, (), {})
        return _Unavailable(f"{self.__name__}.{item}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Module(spec.name)
        module.__path__ = []  # a package: every submodule is one too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] == STOOD_IN:
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


def check_version() -> None:
    """SGLang is installed at the pinned version; else an InvalidInput saying which works."""
    try:
        found = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        raise InvalidInput(
            f"SGLang is not installed: pip install --no-deps sglang=={PINNED} and the `sglang` extra "
            "(./dev test does both)"
        ) from None
    if found != PINNED:
        raise InvalidInput(
            f"SGLang {found} is installed; the adapter drives SGLang's cache internals and is built on "
            f"sglang=={PINNED}: pip install --no-deps sglang=={PINNED}"
        )


def host_tier_substitutions() -> None:
    """HiCache on CPU: host buffers from plain ``torch.empty`` (``ALLOC_MEMORY_FUNCS`` maps
    every other device to an allocator that registers the buffer with CUDA), and the
    ``direct`` I/O backend's per-layer copy ``dst[dst_indices] = src[src_indices]`` in torch
    (``pool_host/mha.py`` binds ``transfer_kv_direct`` from its CUDA or XPU kernels only)."""
    import sglang.srt.mem_cache.pool_host.common as host_common
    import sglang.srt.mem_cache.pool_host.mha as host_mha

    host_common.ALLOC_MEMORY_FUNCS["cpu"] = _host_buffer
    host_mha.transfer_kv_direct = _transfer_kv_direct
    from sglang.srt.mem_cache import l2_transfer

    log = logging.getLogger(l2_transfer.__name__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:  # (its cached answer: CPU events cannot time transfers, which it warns of once)
        l2_transfer._timing_events_supported()
    finally:
        log.setLevel(level)


def _host_buffer(dims: Any, dtype: Any, device: Any, pin_memory: bool, allocator: Any, *_: Any, **__: Any) -> Any:
    import torch

    return torch.empty(dims, dtype=dtype, device=device)


def _transfer_kv_direct(src_layers: Any, dst_layers: Any, src_indices: Any, dst_indices: Any, page_size: int) -> None:
    """``sgl_kernel.kvcacheio.transfer_kv_direct``'s contract, for CPU tensors."""
    src, dst = src_indices.long(), dst_indices.long()
    for s, d in zip(src_layers, dst_layers, strict=True):
        d[dst] = s[src]


def load() -> None:
    """Import SGLang's cache modules once (5-15 s), the version checked first."""
    if "sglang.srt.mem_cache.unified_radix_cache" in sys.modules:
        return
    check_version()
    import transformers.image_utils  # noqa: F401  (first: it decides torchvision is absent, as it is)

    present = STOOD_IN in sys.modules or importlib.util.find_spec(STOOD_IN) is not None
    finder = None if present else _Finder()
    if finder:
        sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)  # its GPU quantizers
            import sglang.srt.managers.schedule_batch  # noqa: F401
            import sglang.srt.mem_cache.allocation  # noqa: F401
            import sglang.srt.mem_cache.registry  # noqa: F401
            import sglang.srt.mem_cache.unified_radix_cache  # noqa: F401
    finally:
        if finder:
            sys.meta_path.remove(finder)
            for name in [m for m in sys.modules if m.split(".")[0] == STOOD_IN]:
                del sys.modules[name]

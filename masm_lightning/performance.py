"""Speed and memory switches that do not change what is computed: the fused Adam kernel, ``torch.compile``, and
the heap setting of long scoring runs.

* :func:`fast_adam_options`: MASM trains ~860 small factor tensors per ViT-B (K=4 subspaces × U, s, V per decomposed
  matrix). torch's default Adam on a CPU runs its update as a Python loop of ~10 kernels per tensor, which measured
  1.2–3.3 s per step on the shared 2-core machine against 0.06–0.10 s for the fused kernel (one kernel per tensor,
  same update up to float rounding). On CUDA torch already defaults to its multi-tensor path; fused is faster still.
* :func:`compile_module`: ``nn.Module.compile`` compiles a module's forward in place, so parameter names (and
  therefore checkpoints) stay as they are, unlike the ``_orig_mod.`` wrapper ``torch.compile(module)`` returns.
  The adapter forward has no graph break (``tests/test_performance.py`` compiles one with ``fullgraph=True``).
* :func:`return_freed_memory`: glibc's ``malloc`` serves a large block with ``mmap`` (returned to the system when
  freed) until a freed one makes it raise that threshold, up to 32 MB; from then on frame-sized buffers (decoded
  frames, MTCNN pyramids, batches) come from the heap, whose fragments stay resident. ``detect`` over the shared
  clips peaked 125 MB higher that way, and its resident size kept growing from video to video
  (docs/inference.md). Fixing the threshold at glibc's initial 128 KiB returns every large buffer when freed.
* :func:`split_cores`: ``preprocess`` and ``detect`` run ``workers`` whole-input pipelines (decode, detect, score)
  in threads, each with an equal share of the cores for its decoder and for torch: on a CPU several narrow
  pipelines scale far better than one wide one (1.56x on 2 cores, docs/benchmarks.md); FFmpeg and torch release
  the GIL. Processes (shards) take over where the GIL would limit threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["compile_module", "fast_adam_options", "return_freed_memory", "split_cores"]

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)

_FUSED_DEVICES = ("cpu", "cuda")


def fast_adam_options(params: Iterable[Any]) -> dict[str, Any]:
    """``{"fused": True}`` when every tensor in ``params`` (tensors or param-group dicts) is a floating-point tensor
    on a CPU or CUDA device (where torch has the fused Adam kernel), else ``{"foreach": True}``, else ``{}``.

    Pass a list, not a generator: it is read once here and again by the optimizer.
    """
    tensors: list[torch.Tensor] = []
    for item in params:
        tensors += list(item["params"]) if isinstance(item, dict) else [item]
    if not tensors:
        return {}
    if all(t.is_floating_point() and t.device.type in _FUSED_DEVICES for t in tensors) and (
        len({t.device.type for t in tensors}) == 1
    ):
        return {"fused": True}
    return {"foreach": True}


def compile_module(module: nn.Module, enabled: bool = True, **options: Any) -> nn.Module:
    """Compile ``module``'s forward in place with ``torch.compile`` (``nn.Module.compile``) and return it.

    Args:
        module: compiled in place; its state-dict keys do not change.
        enabled: False returns ``module`` untouched (so callers can pass a config flag straight through).
        options: forwarded to ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``, …).
    """
    if enabled:
        module.compile(**options)
    return module


def return_freed_memory(threshold: int = 128 * 2**10) -> bool:
    """Make the C heap hand every block of at least ``threshold`` bytes back to the system when it is freed
    (glibc's ``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc from raising it). For processes that score many
    inputs (``detect``, ``serve``); process-wide, so the commands call it, not the library. Returns False where
    the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


@contextmanager
def split_cores(workers: int) -> Iterator[int]:
    """Within the block, torch uses ``1/workers`` of its threads; yields each worker's decoder threads (the cores
    this process may use, divided by ``workers``; 0, FFmpeg's own choice, for one worker). torch's thread count is
    restored on exit."""
    if workers <= 1:
        yield 0
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads // workers))
    try:
        yield max(1, cores // workers)
    finally:
        torch.set_num_threads(torch_threads)

"""Run Megatron-Core on a CPU-only torch build (tests, benchmarks, demos; never needed on GPUs).

Megatron 0.16.1 assumes CUDA in a few places: ``torch.cuda.current_device()`` and
``device="cuda"`` allocations (optimizers, pipeline schedule), ``tensor.type()`` checks for
``torch.cuda.FloatTensor``, ``torch.cuda.synchronize()`` in
dist_checkpointing, and ``model_parallel_cuda_manual_seed`` for its RNG tracker. ``enable()``
maps CUDA devices to the CPU for the rest of the process (a torch function mode) and stubs the
calls; ``seed_model_parallel_rng(seed)`` seeds torch and Megatron's RNG tracker the CPU way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_ACTIVE: list[TorchFunctionMode] = []


def _is_cuda(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _CudaToCpu(TorchFunctionMode):
    """Every ``device=`` naming CUDA (and ``.cuda()`` / ``.to("cuda")``) means the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        name = getattr(func, "__name__", "")
        if name == "cuda":
            return args[0]
        if name == "type" and len(args) == 1 and not kwargs:  # Megatron checks for "torch.cuda.FloatTensor"
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if name == "to" and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def enable() -> None:
    """Map CUDA to the CPU in this process (idempotent); call before building Megatron objects."""
    if torch.cuda.is_available() or _ACTIVE:
        return
    torch.cuda.current_device = lambda: _CPU  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.device_count = lambda: 0  # type: ignore[assignment]
    mode = _CudaToCpu()
    mode.__enter__()
    _ACTIVE.append(mode)


def seed_model_parallel_rng(seed: int) -> None:
    """Seed torch and Megatron's RNG tracker (what ``model_parallel_cuda_manual_seed`` does on GPUs)."""
    from megatron.core.tensor_parallel import random as mp_random

    torch.manual_seed(seed)
    mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)

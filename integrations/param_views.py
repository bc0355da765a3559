"""How each framework lays out parameters: the optimizer-visible parameter objects and, for each,
the fully qualified names (FQNs) of the original parameters it holds and how to cut a
parameter-shaped tensor (e.g. an optimizer moment) into each FQN's checkpoint value.

- plain modules, DDP and FSDP2: one FQN per parameter, taken as is (a tensor or a DTensor);
- FSDP1: a flat parameter holds a 1-D range of several original parameters; each FQN's part is
  a ``FlatShard`` (rank-local range of the flattened original parameter), so nothing is gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bytecheckpoint import FlatShard

Slicer = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class ParamView:
    param: torch.Tensor
    parts: tuple[tuple[str, Slicer], ...]  # (fqn, param-shaped tensor -> checkpoint value)

    @property
    def fqns(self) -> list[str]:
        return [fqn for fqn, _ in self.parts]


def unwrap_ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _whole(t: torch.Tensor) -> object:
    return t


def direct_views(model: nn.Module) -> list[ParamView]:
    """Plain modules, DDP (unwrapped) and FSDP2: each parameter is one FQN."""
    return [ParamView(p, ((name, _whole),)) for name, p in unwrap_ddp(model).named_parameters()]


def fsdp1_views(model: nn.Module) -> list[ParamView]:
    """FSDP1 with use_orig_params True (one view per original parameter, a 1-D local range) or
    False (one view per flat parameter, holding ranges of several original parameters)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp._common_utils import _get_param_to_fqns

    param_to_fqns = _get_param_to_fqns(model)
    views: list[ParamView] = []
    for fsdp_module in FSDP.fsdp_modules(model):
        handle = fsdp_module._handle
        if handle is None:
            continue
        flat = handle.flat_param
        if handle._use_orig_params:
            for param, shape, info in zip(flat._params, flat._shapes, flat._shard_param_infos):
                (fqn,) = param_to_fqns[param]
                start = info.intra_param_start_idx if info.in_shard else 0
                views.append(ParamView(param, ((fqn, _flat_slicer(tuple(shape), start, 0, param.numel())),)))
        else:
            parts = tuple(
                (fqn, _flat_slicer(tuple(shape), info.intra_param_start_idx, info.offset_in_shard, info.numel_in_shard)
                 if info.in_shard else _flat_slicer(tuple(shape), 0, 0, 0))
                for fqn, shape, info in zip(param_to_fqns[flat], flat._shapes, flat._shard_param_infos)
            )
            views.append(ParamView(flat, parts))
    return views


def _flat_slicer(shape: tuple[int, ...], flat_offset: int, start: int, numel: int) -> Slicer:
    def cut(t: torch.Tensor) -> object:
        return FlatShard(t.reshape(-1)[start : start + numel], shape, flat_offset)

    return cut

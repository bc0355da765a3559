"""bytecheckpoint adapters for torch training loops: ``framework="ddp" | "fsdp" | "fsdp2"``.

The checkpoint state is ``{"model": module, "optimizer": optim, "extra_state": {...},
"dataloader": loader, "rng": RNGState()}`` (any keys). Modules become their parameters and buffers
by FQN (DTensors for FSDP2, FlatShards of the local flat ranges for FSDP1, replicated tensors for
DDP), optimizers their FQN-keyed state (optimizer_state), Reshardable objects their replicated and
per-rank parts, other objects with state_dict()/load_state_dict() (a StatefulDataLoader) one part
per rank, and anything else is saved as it is and comes back in the dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bytecheckpoint import StateMismatchError, UnsupportedValueError
from bytecheckpoint.frameworks import SavedCheckpoint

from . import optimizer_state as optim_state
from .param_views import ParamView, direct_views, fsdp1_views, unwrap_ddp
from .reshardable import apply_layout, as_reshardable, load_layout, save_layout


class _TorchAdapter:
    def views(self, model: nn.Module) -> list[ParamView]:
        return direct_views(model)

    def model_state(self, model: nn.Module) -> dict:
        return dict(unwrap_ddp(model).state_dict())

    def _model(self, checkpoint_state: dict) -> nn.Module | None:
        modules = [v for v in checkpoint_state.values() if isinstance(v, nn.Module)]
        if len(modules) > 1 and any(isinstance(v, torch.optim.Optimizer) for v in checkpoint_state.values()):
            raise UnsupportedValueError("with an optimizer, the checkpoint state may hold only one module")
        return modules[0] if modules else None

    def _views_for(self, checkpoint_state: dict, key: str) -> list[ParamView]:
        model = self._model(checkpoint_state)
        if model is None:
            raise UnsupportedValueError(f"{key!r}: an optimizer needs its model in the same checkpoint state")
        return self.views(model)

    def save_state(self, checkpoint_state: dict) -> dict:
        out: dict[str, Any] = {}
        for key, value in checkpoint_state.items():
            if isinstance(value, nn.Module):
                out[key] = self.model_state(value)
            elif isinstance(value, torch.optim.Optimizer):
                out[key] = optim_state.optimizer_checkpoint(value, self._views_for(checkpoint_state, key))
            elif (parts := as_reshardable(value)) is not None:
                out[key] = save_layout(parts)
            else:
                out[key] = value
        return out

    def load_targets(self, checkpoint_state: dict, saved: SavedCheckpoint) -> dict:
        if saved.framework == "megatron":
            raise StateMismatchError(
                "this checkpoint was saved with framework='megatron' (Megatron keys, layers stacked); load it "
                "into a plain PyTorch/FSDP2 model with framework=None, state {'model': "
                "integrations.megatron.names.megatron_view(model)} and strict=False (docs/megatron.md)"
            )
        targets: dict[str, Any] = {}
        for key, value in checkpoint_state.items():
            if isinstance(value, nn.Module):
                targets[key] = self.model_state(value)
            elif isinstance(value, torch.optim.Optimizer):
                targets[key] = optim_state.load_target(value, self._views_for(checkpoint_state, key), saved, key)
            elif as_reshardable(value) is not None:
                targets[key] = load_layout()
            else:
                targets[key] = value
        return targets

    def finish_load(self, checkpoint_state: dict, targets: dict) -> None:
        for key, value in checkpoint_state.items():
            if isinstance(value, nn.Module):
                continue  # filled in place
            if isinstance(value, torch.optim.Optimizer):
                optim_state.apply_loaded(value, self._views_for(checkpoint_state, key), targets[key], key)
            elif (parts := as_reshardable(value)) is not None:
                apply_layout(parts, targets[key], key)
            else:
                checkpoint_state[key] = targets[key]


class DDPAdapter(_TorchAdapter):
    """DistributedDataParallel (or a plain module): replicated state, written once across ranks."""


class FSDP2Adapter(_TorchAdapter):
    """``fully_shard`` modules: parameters and optimizer moments are DTensors, saved as boxes."""


class FSDP1Adapter(_TorchAdapter):
    """FullyShardedDataParallel: each rank saves its local flat ranges as FlatShards (no all-gather)."""

    def views(self, model: nn.Module) -> list[ParamView]:
        return fsdp1_views(model)

    def model_state(self, model: nn.Module) -> dict:
        from torch.distributed.fsdp._common_utils import clean_tensor_name

        state: dict[str, Any] = {}
        for view in fsdp1_views(model):
            for fqn, cut in view.parts:
                state[fqn] = cut(view.param.detach())
        for module_name, module in model.named_modules():
            for name, buf in module.named_buffers(recurse=False):
                if name not in module._non_persistent_buffers_set:
                    state[clean_tensor_name(f"{module_name}.{name}" if module_name else name)] = buf.detach()
        return state

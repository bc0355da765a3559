"""The key-mapping hook between Megatron checkpoints and plain PyTorch (or FSDP2) models.

A Megatron checkpoint names tensors by Megatron's global keys, with a transformer layer's tensors
stacked on a leading axis by global layer index (``decoder.layers.mlp.linear_fc1.weight`` of shape
``[layers, 2 * ffn, hidden]``). A key map turns a plain model's parameter name into ``(key,
index)``: the checkpoint key and the position on the stacked axes (``()`` for an unstacked
tensor), or None to leave the parameter out. ``gpt_key_map`` maps the names of a single-process
Megatron GPT with the local layer spec (``decoder.layers.3.input_layernorm.weight``), which a
plain PyTorch GPT of the same architecture can reuse.

    state = {"model": megatron_view(plain_model)}        # boxes of the Megatron tensors
    bcp.load(path, state, strict=False)                  # a Megatron checkpoint into a plain model
    bcp.save(path, {"model": megatron_view(plain_model)})  # ... and back: Megatron loads it
    full = load_full_by_name(path)                       # the whole model, by ordinary names
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from bytecheckpoint import ShardedPieces, ShardedTensor, UnsupportedValueError, load_full
from bytecheckpoint.api import CheckpointPath

from .adapter import VOCAB_KEY

KeyMap = Callable[[str], tuple[str, tuple[int, ...]] | None]

_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
_RENAMED = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "input_layernorm.bias": "self_attention.linear_qkv.layer_norm_bias",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    "pre_mlp_layernorm.bias": "mlp.linear_fc1.layer_norm_bias",
}
_ORDINARY = {v: k for k, v in _RENAMED.items()}


def gpt_key_map(name: str) -> tuple[str, tuple[int, ...]]:
    """A Megatron GPT's (local layer spec) parameter name -> (checkpoint key, stacked index)."""
    match = _LAYER.fullmatch(name)
    if match is None:
        return name, ()
    rest = match.group(2)
    return f"decoder.layers.{_RENAMED.get(rest, rest)}", (int(match.group(1)),)


def gpt_ordinary_name(key: str, index: tuple[int, ...]) -> str:
    """The inverse of ``gpt_key_map``."""
    if not index:
        return key
    rest = key.removeprefix("decoder.layers.")
    return f"decoder.layers.{index[0]}.{_ORDINARY.get(rest, rest)}"


def _local_box(param: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """(local data, global shape, offsets) of a plain tensor or a DTensor (FSDP2)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offsets = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return param.to_local(), tuple(param.shape), tuple(offsets)
    return param, tuple(param.shape), (0,) * param.dim()


def megatron_view(model: nn.Module, key_map: KeyMap = gpt_key_map, stacked: dict[str, int] | None = None,
                  vocab_size: int | None = None) -> dict:
    """``model``'s parameters as boxes of a Megatron checkpoint's tensors (views: a load fills the
    parameters in place). ``stacked`` gives the length of each stacked key's layer axis; by default
    the number of distinct indices the key map yields for it (the whole model is here)."""
    placed: list[tuple[str, tuple[int, ...], str, torch.Tensor]] = []
    for name, param in model.named_parameters():
        mapped = key_map(name)
        if mapped is not None:
            placed.append((mapped[0], mapped[1], name, param))
    lengths = dict(stacked or {})
    for key, index, _, _ in placed:
        if index and key not in (stacked or {}):
            lengths[key] = max(lengths.get(key, 0), index[0] + 1)
    by_key: dict[str, list[ShardedTensor]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for key, index, name, param in placed:
        local, shape, offsets = _local_box(param.detach())
        if len(index) > 1:
            raise UnsupportedValueError(f"{name}: the key map gave {len(index)} stacked axes; one is supported")
        full_shape = ((lengths[key],) if index else ()) + shape
        if shapes.setdefault(key, full_shape) != full_shape:
            raise UnsupportedValueError(f"{name}: shape {shape} differs from other layers' {shapes[key][1:]} ({key})")
        dtypes[key] = local.dtype
        if local.numel():
            box_data = local.unsqueeze(0) if index else local
            by_key.setdefault(key, []).append(ShardedTensor(box_data, full_shape, tuple(index) + offsets))
    view: dict = {k: ShardedPieces(by_key.get(k, ()), shapes[k], dtypes[k]) for k in shapes}
    view[VOCAB_KEY] = vocab_size
    return view


def ordinary_names(megatron_state: dict, inverse: Callable[[str, tuple[int, ...]], str] = gpt_ordinary_name,
                   stacked_prefix: str = "decoder.layers.") -> dict[str, torch.Tensor]:
    """Whole Megatron tensors (as ``load_full`` returns them) by plain names: stacked keys are
    split into one tensor per layer."""
    out: dict[str, torch.Tensor] = {}
    for key, value in megatron_state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith(stacked_prefix):
            for i in range(value.shape[0]):
                out[inverse(key, (i,))] = value[i]
        else:
            out[inverse(key, ())] = value
    return out


def load_full_by_name(ckpt_path: CheckpointPath, model_key: str = "model") -> dict[str, torch.Tensor]:
    """The whole model of a Megatron checkpoint in one process, by ordinary (unstacked) names."""
    return ordinary_names(load_full(ckpt_path)[model_key])

"""Megatron target layouts for the offline reshard (``bytecheckpoint reshard --tp --pp --dp``).

A Megatron save records, beside the model's tensors (``DESCRIPTION_KEY``), how Megatron splits
each global tensor: the axis tensor parallelism splits (``tp_axis``, counted in the global shape,
or None for replicated tensors such as layer norms), into how many equal parts that axis is cut
before the TP split (``tp_parts``: 2 for a fused GLU ``linear_fc1``, gate and up halves), whether
the tensor stacks layers on a leading axis (``layer_axes``), and which pipeline stage holds an
unstacked tensor (``stage``: ``first`` for the embedding, ``last`` for the final norm and output
layer). ``megatron_layout`` turns that into a :class:`TargetLayout` for TP x PP x DP ranks
numbered as Megatron's default order ``tp-cp-ep-dp-pp`` does (tensor rank fastest).

Each (pipeline, tensor) rank's box of a tensor is stored once: in the file of the least loaded
rank among those that read it (its data-parallel replicas; all TP ranks of the stage for a
replicated tensor), so data-parallel replicas share their group's files. With DP = 1 every rank
reads exactly one file, its own. A distributed optimizer's share of a parameter is a flat range of
its local tensor, so its ranks read parts of the local tensor's chunks (the reads stay within the
files of the rank's own TP x PP group). The layout only decides where bytes lie: a load at any
layout stays correct.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from bytecheckpoint.boxes import ShardBox
from bytecheckpoint.dtypes import torch_dtype
from bytecheckpoint.metadata import CheckpointMetadata, TensorEntry
from bytecheckpoint.reshard_offline import LayoutError, TargetLayout, dim0_boxes
from bytecheckpoint.values import decode_value

from .layout import TensorLayout

DESCRIPTION_KEY = "_megatron_parallel"  # beside the model's tensors: the description below
STAGES = ("first", "last", "layers")


@dataclass(frozen=True)
class TensorSplit:
    """How Megatron splits one global tensor over TP and PP ranks (see the module docstring)."""

    tp_axis: int | None
    tp_parts: int
    layer_axes: int
    stage: str
    vocab: bool  # the padded vocabulary axis: its length need not divide by TP

    def to_plain(self) -> dict[str, Any]:
        return {"tp_axis": self.tp_axis, "tp_parts": self.tp_parts, "layer_axes": self.layer_axes,
                "stage": self.stage, "vocab": self.vocab}


def describe_model(model: nn.Module, layouts: dict[str, TensorLayout], parallel: dict[str, int]) -> dict[str, Any]:
    """The plain-value description a Megatron save stores under ``DESCRIPTION_KEY``.

    ``layouts`` are ``module_layouts(model)``; the TP axis comes from the attributes Megatron sets
    on tensor-parallel parameters (``tensor_model_parallel``, ``partition_dim``), which are there
    at any TP size. ``parallel`` is the saving layout (``tp``, ``pp``, ``dp``), for ``inspect``."""
    params = dict(model.named_parameters())
    tensors: dict[str, dict[str, Any]] = {}
    for name, layout in layouts.items():
        param = params.get(name)
        layer_axes = len(layout.global_shape) - (param.dim() if param is not None else len(layout.global_shape))
        split = getattr(param, "tensor_model_parallel", False)
        tp_axis = int(param.partition_dim) + layer_axes if split else None
        stage = "layers" if layer_axes else "first" if name.startswith("embedding.") else "last"
        tensors[layout.key] = TensorSplit(tp_axis, len(layout.segments), layer_axes, stage, layout.resizable).to_plain()
    return {"version": 1, "saved": dict(parallel), "tensors": tensors}


@dataclass(frozen=True)
class MegatronTarget:
    """A TP x PP x DP target; ``pp_layers`` gives each stage's layer count (default: split like ``torch.chunk``)."""

    tp: int
    pp: int
    dp: int
    pp_layers: tuple[int, ...] | None = None

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def rank(self, tp: int, pp: int, dp: int) -> int:
        """Megatron's default rank order ``tp-cp-ep-dp-pp``: tensor rank fastest, pipeline rank slowest."""
        return tp + self.tp * (dp + self.dp * pp)

    def __str__(self) -> str:
        return f"megatron TP{self.tp} PP{self.pp} DP{self.dp}"


def megatron_layout(metadata: CheckpointMetadata, target: MegatronTarget) -> TargetLayout:
    """The boxes each rank of ``target`` loads, for a checkpoint saved with ``framework="megatron"``.

    Tensors the description does not cover (RNG, dataloader and other extra state) are split along
    dimension 0 over all ranks. Raises LayoutError for a checkpoint without the description, a
    layer split that does not add up, or a TP size that does not divide a tensor-parallel axis."""
    if min(target.tp, target.pp, target.dp) < 1:
        raise LayoutError(f"{target}: every size must be at least 1")
    splits = _splits(metadata)
    loads = [0] * target.world_size
    ranks: list[dict[str, tuple[ShardBox, ...]]] = [{} for _ in range(target.world_size)]
    entries = sorted(metadata.tensors, key=lambda e: -math.prod(e.shape) * torch_dtype(e.dtype, e.fqn).itemsize)
    for entry in entries:
        split = _split_of(entry, splits)
        if split is None:
            for rank, box in enumerate(dim0_boxes(entry.shape, target.world_size)):
                if box is not None:
                    ranks[rank][entry.fqn] = (box,)
            continue
        itemsize = torch_dtype(entry.dtype, entry.fqn).itemsize
        for readers, boxes in _rank_boxes(entry, split, target):
            owner = min(readers, key=lambda r: (loads[r], r))
            ranks[owner][entry.fqn] = (*ranks[owner].get(entry.fqn, ()), *boxes)
            loads[owner] += sum(b.numel for b in boxes) * itemsize
    return TargetLayout(str(target), tuple(ranks))


def _splits(metadata: CheckpointMetadata) -> dict[str, TensorSplit]:
    found: dict[str, TensorSplit] = {}
    for value in metadata.values:
        if value.path[-1] != DESCRIPTION_KEY:
            continue
        where = f"checkpoint value {value.fqn!r}"
        doc = decode_value(value.encoded, where)
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("tensors"), dict):
            raise LayoutError(f"{where}: not a Megatron parallel description of version 1")
        for key, raw in doc["tensors"].items():
            found[key] = _parse_split(raw, f"{where}[{key!r}]")
    if not found:
        raise LayoutError("the checkpoint has no Megatron parallel description: it was not saved with "
                          "framework=\"megatron\" (or was saved before saves recorded one); use --layout or --world-size")
    return found


def _parse_split(raw: Any, where: str) -> TensorSplit:
    try:
        split = TensorSplit(raw["tp_axis"], raw["tp_parts"], raw["layer_axes"], raw["stage"], raw["vocab"])
    except (TypeError, KeyError) as exc:
        raise LayoutError(f"{where}: malformed ({exc!r})") from None
    ints_ok = all(type(n) is int and n >= 0 for n in (split.tp_parts, split.layer_axes)) and split.tp_parts >= 1
    if not ints_ok or split.stage not in STAGES or not (split.tp_axis is None or type(split.tp_axis) is int):
        raise LayoutError(f"{where}: malformed ({raw!r:.120})")
    return split


def _split_of(entry: TensorEntry, splits: dict[str, TensorSplit]) -> TensorSplit | None:
    """The model tensor ``(model, key)`` or an optimizer's ``(optimizer, "state", key, name)``."""
    path = entry.path
    key = path[1] if len(path) == 2 else path[2] if len(path) == 4 and path[1] == "state" else None
    split = splits.get(key) if isinstance(key, str) else None
    if split is None:
        return None
    rank = len(entry.shape)
    if split.tp_axis is not None and split.tp_axis >= rank or split.layer_axes > rank:
        raise LayoutError(f"tensor {entry.fqn!r} (shape {list(entry.shape)}) does not fit its Megatron description")
    return split


def _rank_boxes(entry: TensorEntry, split: TensorSplit,
                target: MegatronTarget) -> Iterable[tuple[list[int], list[ShardBox]]]:
    """For each (pipeline, tensor) rank holding part of ``entry``: the ranks that read it and its boxes."""
    for pp, (first, count) in _stage_spans(entry, split, target):
        tp_boxes = _tp_boxes(entry, split, target.tp, first, count)
        for tp, boxes in enumerate(tp_boxes):
            if split.tp_axis is None:  # replicated over TP: every TP rank of the stage reads it
                readers = [target.rank(t, pp, d) for t in range(target.tp) for d in range(target.dp)]
            else:
                readers = [target.rank(tp, pp, d) for d in range(target.dp)]
            yield readers, boxes


def _stage_spans(entry: TensorEntry, split: TensorSplit, target: MegatronTarget) -> list[tuple[int, tuple[int, int]]]:
    """(pipeline rank, (first layer, layer count)) for each stage holding part of the tensor."""
    if split.stage == "first":
        return [(0, (0, 0))]
    if split.stage == "last":
        return [(target.pp - 1, (0, 0))]
    layers = entry.shape[0]
    counts = target.pp_layers or _even_counts(layers, target.pp)
    if len(counts) != target.pp or sum(counts) != layers:
        raise LayoutError(f"{target}: the layer split {list(counts)} does not give {target.pp} stage(s) "
                          f"{layers} layer(s) in all (tensor {entry.fqn!r})")
    starts = [sum(counts[:i]) for i in range(target.pp)]
    return [(pp, (starts[pp], counts[pp])) for pp in range(target.pp) if counts[pp]]


def _even_counts(layers: int, stages: int) -> tuple[int, ...]:
    per = -(-layers // stages)
    return tuple(max(0, min(per, layers - i * per)) for i in range(stages))


def _tp_boxes(entry: TensorEntry, split: TensorSplit, tp: int, first_layer: int, layers: int) -> list[list[ShardBox]]:
    """Each TP rank's boxes of the tensor within the stage's layers (one list when replicated)."""
    offsets, lengths = [0] * len(entry.shape), list(entry.shape)
    if split.stage == "layers":
        offsets[0], lengths[0] = first_layer, layers
    if split.tp_axis is None:
        return [[ShardBox(tuple(offsets), tuple(lengths))]]
    axis = split.tp_axis
    part = entry.shape[axis] // split.tp_parts
    if part * split.tp_parts != entry.shape[axis] or not split.vocab and part % tp:
        raise LayoutError(f"tensor {entry.fqn!r} (shape {list(entry.shape)}): axis {axis} does not split into "
                          f"{split.tp_parts} part(s) over TP {tp}")
    out: list[list[ShardBox]] = []
    for rank in range(tp):
        boxes = []
        for p in range(split.tp_parts):
            box = dim0_boxes((part,), tp)[rank]
            if box is None:
                continue
            o, n = list(offsets), list(lengths)
            o[axis], n[axis] = p * part + box.offsets[0], box.lengths[0]
            boxes.append(ShardBox(tuple(o), tuple(n)))
        out.append(boxes)
    return out


def parse_layer_counts(text: str | None, where: str) -> tuple[int, ...] | None:
    """``"2,1"`` -> (2, 1): the layers of each pipeline stage (None when not given)."""
    if text is None:
        return None
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise LayoutError(f"{where}: expected comma-separated layer counts such as 2,1, found {text!r}") from None
    if any(n < 0 for n in counts):
        raise LayoutError(f"{where}: layer counts must not be negative, found {text!r}")
    return counts

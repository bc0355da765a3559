"""Reference global tensors and the ways ranks hold them, for the multi-process tests.

``make_state(rank, world, variant, fill)`` builds one rank's state: every kind of value the API
accepts, split according to ``variant`` ("rows" or "cols"). With ``fill`` the local data comes from
the reference tensors; without, it is zeros (a load target).
"""

from __future__ import annotations

import itertools

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import bytecheckpoint as bcp

SPECS: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
    "rep": (torch.float32, (7, 5)),
    "rows": (torch.float32, (10, 6)),
    "half": (torch.float16, (8, 6)),
    "bf16": (torch.bfloat16, (6, 9)),
    "ints": (torch.int64, (5, 7)),
    "mask": (torch.bool, (13,)),
    "dt": (torch.float32, (11, 3)),
    "scalar": (torch.float32, ()),
    "empty": (torch.float32, (0, 4)),
    "tposed": (torch.float32, (9, 4)),
}
PLAIN = {"step": 17, "name": "run-a", "sched": {"lr": 0.5, "milestones": [3, 6]}, "blob": b"\x00\x01"}


def reference(name: str) -> torch.Tensor:
    dtype, shape = SPECS[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype == torch.int64:
        return torch.randint(-(2**40), 2**40, shape, generator=g)
    return torch.randn(shape, generator=g).to(dtype)


def bounds(n: int, parts: int, skew: int) -> list[tuple[int, int]]:
    """Uneven split of range(n) into ``parts`` contiguous pieces (some may be empty)."""
    cuts = [0]
    for i in range(1, parts):
        cuts.append(min(n, max(cuts[-1], (n * i) // parts + (skew if i % 2 else -skew))))
    cuts.append(n)
    return list(itertools.pairwise(cuts))


def _box(name: str, rank: int, world: int, dim: int, fill: bool) -> bcp.ShardedTensor:
    ref = reference(name)
    lo, hi = bounds(ref.shape[dim], world, 1)[rank]
    index = [slice(None)] * ref.dim()
    index[dim] = slice(lo, hi)
    data = ref[tuple(index)].clone()
    if not fill:
        data.zero_()
    offsets = [0] * ref.dim()
    offsets[dim] = lo
    return bcp.ShardedTensor(data, ref.shape, offsets)


def _grid(name: str, rank: int, world: int, fill: bool) -> bcp.ShardedTensor:
    """A 2 x (world/2) grid when world is even, else rows."""
    ref = reference(name)
    if world % 2:
        return _box(name, rank, world, 0, fill)
    r, c = divmod(rank, world // 2)
    (r0, r1), (c0, c1) = bounds(ref.shape[0], 2, 0)[r], bounds(ref.shape[1], world // 2, 1)[c]
    data = ref[r0:r1, c0:c1].clone()
    if not fill:
        data.zero_()
    return bcp.ShardedTensor(data, ref.shape, (r0, c0))


def _flat(name: str, rank: int, world: int, skew: int, fill: bool) -> bcp.FlatShard:
    ref = reference(name).reshape(-1)
    lo, hi = bounds(ref.numel(), world, skew)[rank]
    data = ref[lo:hi].clone()
    if not fill:
        data.zero_()
    return bcp.FlatShard(data, reference(name).shape, lo)


def _transposed_box(rank: int, world: int, fill: bool) -> bcp.ShardedTensor:
    """A non-contiguous local tensor: the rows of a box stored transposed."""
    ref = reference("tposed")
    lo, hi = bounds(ref.shape[0], world, 0)[rank]
    storage = ref[lo:hi].t().contiguous() if fill else torch.zeros(ref.shape[1], hi - lo)
    return bcp.ShardedTensor(storage.t(), ref.shape, (lo, 0))


def make_state(rank: int, world: int, variant: str, fill: bool) -> dict:
    cols = variant == "cols"
    mesh = init_device_mesh("cpu", (world,))
    dt_full = reference("dt") if fill else torch.zeros(SPECS["dt"][1])
    rep = reference("rep") if fill else torch.zeros(SPECS["rep"][1])
    scalar = reference("scalar") if fill else torch.zeros(())
    return {
        "model": {
            "rep": rep,
            "rows": _box("rows", rank, world, 1 if cols else 0, fill),
            "half": _grid("half", rank, world, fill) if cols else _box("half", rank, world, 0, fill),
            "bf16": _box("bf16", rank, world, 0 if cols else 1, fill),
            "ints": _flat("ints", rank, world, 3 if cols else -2, fill),
            "mask": _flat("mask", rank, world, 1 if cols else 0, fill),
            "dt": distribute_tensor(dt_full, mesh, [Shard(1 if cols else 0)]),
            "tposed": _transposed_box(rank, world, fill),
        },
        "misc": {"scalar": scalar, "empty": torch.empty(SPECS["empty"][1])},
        "extra": dict(PLAIN) if fill else None,
    }


def check_state(state: dict) -> int:
    """Assert every local piece equals the reference; return the number of elements checked."""
    checked = 0
    for group in ("model", "misc"):
        for name, value in state[group].items():
            ref = reference(name)
            if isinstance(value, bcp.ShardedTensor):
                index = tuple(slice(o, o + n) for o, n in zip(value.offsets, value.data.shape))
                expected, got = ref[index], value.data
            elif isinstance(value, bcp.FlatShard):
                expected = ref.reshape(-1)[value.flat_offset : value.flat_offset + value.data.numel()]
                got = value.data
            elif hasattr(value, "full_tensor"):
                expected, got = ref, value.full_tensor()
            else:
                expected, got = ref, value
            assert got.dtype == expected.dtype and torch.equal(got, expected), f"{group}.{name} differs"
            checked += got.numel()
    assert state["extra"] == PLAIN, state["extra"]
    return checked

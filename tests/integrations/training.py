"""A tiny model trained under DDP, FSDP1, FSDP2 or a single process, for equivalence tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GLOBAL_BATCH = 12  # divisible by 1, 2, 3 and 4 ranks, so every world size computes the same mean


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(13, 17)
        self.norm = nn.LayerNorm(17)
        self.out = nn.Linear(17, 11)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 11))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.inp(x)))) * self.scale


@dataclass(frozen=True)
class Setup:
    framework: str  # "single", "ddp", "fsdp1", "fsdp1-orig", "fsdp2"
    optimizer: str = "adamw"  # or "adam", "sgd"

    @property
    def bcp_framework(self) -> str:
        return {"single": "fsdp2", "ddp": "ddp", "fsdp1": "fsdp", "fsdp1-orig": "fsdp", "fsdp2": "fsdp2"}[self.framework]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 13, generator=g), torch.randn(GLOBAL_BATCH, 11, generator=g)


def build(setup: Setup, seed: int, world: int, lr_scale: float = 1.0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimizer; a load target uses another seed and ``lr_scale`` so that only the
    checkpoint (parameters, moments and hyperparameters) can make it match."""
    torch.manual_seed(seed)
    model: nn.Module = TinyNet()
    if setup.framework == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    elif setup.framework.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        model = FSDP(model, device_id=torch.device("cpu"), use_orig_params=setup.framework == "fsdp1-orig")
    elif setup.framework == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        fully_shard(model.inp, mesh=mesh)
        fully_shard(model.out, mesh=mesh)
        fully_shard(model, mesh=mesh)
    if setup.optimizer == "sgd":
        optim: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * lr_scale, momentum=0.9, weight_decay=0.01)
    elif setup.optimizer == "adam":
        optim = torch.optim.Adam(model.parameters(), lr=0.01 * lr_scale, betas=(0.8, 0.99))
    else:
        optim = torch.optim.AdamW(model.parameters(), lr=0.01 * lr_scale, weight_decay=0.1)
    return model, optim


def train(model: nn.Module, optim: torch.optim.Optimizer, rank: int, world: int, steps: range) -> list[float]:
    losses = []
    for step in steps:
        x, y = batch(step)
        lo, hi = rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world
        loss = ((model(x[lo:hi]) - y[lo:hi]) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return losses


def full_params(model: nn.Module, optim: torch.optim.Optimizer, distributed: bool) -> dict[str, torch.Tensor]:
    """Full model and optimizer tensors by name, gathered with torch's own state_dict API (an
    independent check of what bytecheckpoint loaded)."""
    if distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        msd, osd = get_state_dict(model, optim, options=StateDictOptions(full_state_dict=True))
    else:
        msd, osd = model.state_dict(), optim.state_dict()
        names = [n for n, _ in model.named_parameters()]
        osd = {"state": {names[i]: s for i, s in osd["state"].items()}}
    out = {f"model.{k}": v.detach().clone() for k, v in msd.items()}
    for fqn, state in osd["state"].items():
        for name, value in state.items():
            out[f"optim.{fqn}.{name}"] = torch.as_tensor(value).detach().clone().reshape(-1) if torch.as_tensor(value).dim() == 0 else value.detach().clone()
    return out

"""The workload: a SqueezeNet-like CNN for 32x32 RGB images and synthetic CIFAR-10-shaped data.

Nothing is downloaded: each client's data is drawn from a seeded generator (class-dependent means, so
the model has something to learn). With the default width the model holds ~0.73 M float32 parameters
(~2.9 MB), the size of the SqueezeNet used by Hayek et al. (arXiv 2504.04678).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)


class Fire(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze, then parallel 1x1 and 3x3 expands, concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class SqueezeNetCifar(nn.Module):
    """SqueezeNet 1.1 layout scaled for 32x32 inputs; ``width`` scales every channel count."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(4, round(n * width))

        self.features = nn.Sequential(
            nn.Conv2d(3, c(64), 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            Fire(c(64), c(16), c(64)), Fire(c(128), c(16), c(64)), nn.MaxPool2d(2),
            Fire(c(128), c(32), c(128)), Fire(c(256), c(32), c(128)), nn.MaxPool2d(2),
            Fire(c(256), c(48), c(192)), Fire(c(384), c(48), c(192)),
            Fire(c(384), c(64), c(256)), Fire(c(512), c(64), c(256)),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(c(512), num_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


PACKINGS = ("tensors", "flat")


def check_packing(packing: str) -> None:
    """Raise ValueError unless ``packing`` is one of :data:`PACKINGS`."""
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, found {packing!r}")


def transport_state(model: nn.Module, packing: str = "tensors") -> dict[str, torch.Tensor]:
    """The model's state as one FedAvg message carries it.

    ``tensors``: one entry per state-dict tensor (Flower sends each as its own object, one HTTP request
    apiece). ``flat``: one float32 vector ``flat`` holding every tensor in state-dict order (one object),
    as a single serialized blob travelled in older Flower releases.
    """
    check_packing(packing)
    state = model.state_dict()
    if packing == "tensors":
        return dict(state)
    odd = sorted(k for k, t in state.items() if t.dtype != torch.float32)
    if odd:
        raise ValueError(f"flat packing needs float32 tensors only; {odd} are not")
    return {"flat": torch.cat([t.detach().reshape(-1) for t in state.values()])}


def load_transport_state(model: nn.Module, received: dict[str, torch.Tensor], packing: str = "tensors") -> None:
    """Load what :func:`transport_state` produced (possibly averaged) into ``model``."""
    check_packing(packing)
    if packing == "tensors":
        model.load_state_dict(received)
        return
    if set(received) != {"flat"}:
        raise ValueError(f"flat packing expects one entry 'flat', found {sorted(received)}")
    state, flat = model.state_dict(), received["flat"]
    sizes = [t.numel() for t in state.values()]
    if flat.numel() != sum(sizes):
        raise ValueError(f"flat vector has {flat.numel()} values, the model needs {sum(sizes)}")
    parts = torch.split(flat.reshape(-1), sizes)
    model.load_state_dict({k: p.reshape(t.shape) for (k, t), p in zip(state.items(), parts, strict=True)})


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict (what one FedAvg message carries)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@dataclass(frozen=True)
class SyntheticCifar:
    """Seeded CIFAR-10-shaped data for one client (partition ``partition``)."""

    samples: int = 64
    partition: int = 0
    seed: int = 0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, 32, 32) float32 and labels (N,) int64."""
        rng = np.random.default_rng([self.seed, self.partition])
        labels = rng.integers(0, NUM_CLASSES, self.samples)
        means = np.random.default_rng(self.seed).normal(0, 1, (NUM_CLASSES, *IMAGE_SHAPE)).astype(np.float32)
        images = means[labels] + rng.normal(0, 1.0, (self.samples, *IMAGE_SHAPE)).astype(np.float32)
        return torch.from_numpy(images), torch.from_numpy(labels)


def train(model: nn.Module, data: SyntheticCifar, epochs: int = 1, batch_size: int = 32, lr: float = 0.01) -> float:
    """Plain SGD for ``epochs``; returns the mean training loss."""
    x, y = data.tensors()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, n = 0.0, 0
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x[i:i + batch_size]), y[i:i + batch_size])
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
    return total / max(n, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: SyntheticCifar) -> tuple[float, float]:
    """Loss and accuracy on ``data``."""
    x, y = data.tensors()
    model.eval()
    logits = model(x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

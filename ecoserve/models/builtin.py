"""Built-in models: a small CNN and a small transformer encoder with deterministic weights.

They exist so that every face of ecoserve runs out of the box with no download: the
weights are drawn from a fixed seed, so two processes (a daemon and its test, a client
and a server) hold bit-identical models. They are workload stand-ins sized like an edge
model, not trained classifiers; the trained digits models live in ``digits.py``.
"""

from __future__ import annotations

import torch
from torch import nn


def _seeded_init(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(torch.randn(param.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    return module.eval()


class SmallCNN(nn.Sequential):
    """A 3x32x32 image classifier shaped like a tiny MobileNet-era CNN (10 classes)."""

    input_shape = (3, 32, 32)

    def __init__(self, classes: int = 10, seed: int = 0) -> None:
        super().__init__(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, classes),
        )
        _seeded_init(self, seed)


class SmallTransformer(nn.Module):
    """A 2-layer transformer encoder over 32 tokens of width 64, mean-pooled to 10 logits."""

    input_shape = (32, 64)

    def __init__(self, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=64, nhead=4, dim_feedforward=128, batch_first=True, dropout=0.0
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(64, classes)
        _seeded_init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class Identity(nn.Module):
    """A no-op model: measures the serving overhead alone."""

    input_shape = (4,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def example_input(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """One deterministic input item of the model's declared shape (no batch dimension)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(f"{type(model).__name__} declares no input_shape")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

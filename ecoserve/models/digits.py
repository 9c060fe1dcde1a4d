"""Two CNNs for scikit-learn's handwritten digits, built to be split and cascaded.

The tiers code needs real models whose accuracy, stage times and intermediate tensor sizes
are measured, not invented, and that load without a download: scikit-learn ships the
``load_digits`` data set (1797 images, 8x8 grayscale, 10 classes) and the trained weights
ship in ``ecoserve/weights/``.

Both models are an ``nn.Sequential`` of named stages with exactly one tensor between stages,
so ``model[:k]`` runs on one tier and ``model[k:]`` on the next. Input: float32 tensors of
shape ``(N, 1, 8, 8)``, each pixel divided by 16 (the data set's pixels are integers 0..16),
so values lie in 0..1. Output: logits of shape ``(N, 10)``.

- ``small``: one narrow convolution and a linear head, for the device tier of a cascade.
- ``large``: three convolutions and two linear layers, for the next tier (and for splitting).

``scripts/train_digits.py`` trains both deterministically on the split that
``load_digits_split`` returns; the accuracies are recorded in ``ecoserve/weights/README.md``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

#: Model names accepted by :func:`build_digits_model` and :func:`load_digits_model`.
MODEL_NAMES = ("small", "large")
#: Held-out fraction and seed of the train/test split (stratified by class).
TEST_SIZE = 0.25
SPLIT_SEED = 0
#: The data set's pixels are integers 0..16; dividing by this maps them to 0..1.
PIXEL_SCALE = 16.0
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def _small() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),  # 4x8x8
            pool1=nn.MaxPool2d(2),  # 4x4x4
            head=nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES)),
        )
    )


def _large() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()),  # 32x8x8
            conv2=nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()),  # 32x8x8
            pool1=nn.MaxPool2d(2),  # 32x4x4
            conv3=nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()),  # 64x4x4
            pool2=nn.MaxPool2d(2),  # 64x2x2
            fc1=nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(256, 128), nn.ReLU()),
            fc2=nn.Linear(128, NUM_CLASSES),
        )
    )


def build_digits_model(name: str) -> nn.Sequential:
    """A freshly initialised model (training starts here; serving uses the loader)."""
    if name == "small":
        return _small()
    if name == "large":
        return _large()
    raise ValueError(f"unknown digits model {name!r}; choose one of {list(MODEL_NAMES)}")


def weights_path(name: str) -> Path:
    """Where the shipped state_dict of model ``name`` lives inside the package."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown digits model {name!r}; choose one of {list(MODEL_NAMES)}")
    return Path(str(resources.files("ecoserve").joinpath("weights").joinpath(f"digits_{name}.pt")))


def load_digits_model(name: str, weights: str | Path | None = None) -> nn.Sequential:
    """The trained model ``name`` ("small" or "large") in eval mode, on the CPU.

    ``weights`` overrides the shipped file (e.g. a freshly trained one). Loading uses
    ``weights_only=True`` so a weights file can never run code.
    """
    model = build_digits_model(name)
    path = Path(weights) if weights is not None else weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights for digits model {name!r} at {path}; run scripts/train_digits.py"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed train/test split, already preprocessed (pixel / 16, shape (N, 1, 8, 8))."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """Raw digits pixels (0..16, any shape with 64 values per image) to model input."""
    return (pixels.to(torch.float32) / PIXEL_SCALE).reshape(-1, *INPUT_SHAPE)


def load_digits_split() -> DigitsSplit:
    """The data set split the shipped weights were trained and measured on.

    Stratified, ``test_size=0.25``, ``random_state=0``: 1347 training and 450 test images.
    scikit-learn is imported here, not at module import, because only training and the
    accuracy checks need it (it is the ``tiers`` extra).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'ecoserve[tiers]'"
        ) from exc
    data = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data,
        data.target,
        test_size=TEST_SIZE,
        random_state=SPLIT_SEED,
        stratify=data.target,
    )
    return DigitsSplit(
        x_train=preprocess(torch.from_numpy(x_tr)),
        y_train=torch.from_numpy(y_tr).to(torch.int64),
        x_test=preprocess(torch.from_numpy(x_te)),
        y_test=torch.from_numpy(y_te).to(torch.int64),
    )


@torch.inference_mode()
def count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """How many of ``x`` the model classifies as ``y`` (counts, so figures compare exactly)."""
    return int((model(x).argmax(dim=1) == y).sum().item())

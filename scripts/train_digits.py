"""Train the small and large digits CNNs and save the weights that ship with ecoserve.

Deterministic on CPU: fixed seeds, one thread, deterministic kernels, a seeded shuffling
generator, and the fixed stratified split of ``ecoserve.models.digits.load_digits_split``.
Both models train in a few seconds; the script prints each model's held-out accuracy, which
``ecoserve/weights/README.md`` records and ``tests/test_tiers_cascade.py`` re-checks.

    python scripts/train_digits.py                  # writes ecoserve/weights/digits_*.pt
    python scripts/train_digits.py --out /tmp/w     # somewhere else
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ecoserve.models.digits import (
    MODEL_NAMES,
    build_digits_model,
    count_correct,
    load_digits_split,
    weights_path,
)


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model (chosen once, by hand, then frozen)."""

    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 1e-4


RECIPES = {"small": Recipe(epochs=60, lr=1e-2), "large": Recipe(epochs=40, lr=2e-3)}
SEED = 0


def train(name: str, recipe: Recipe, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """One model, trained from a seed so the same code gives the same bytes."""
    torch.manual_seed(SEED)
    model = build_digits_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for digits_*.pt")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    split = load_digits_split()
    print(f"train {len(split.y_train)} / test {len(split.y_test)} images")
    for name in MODEL_NAMES:
        t0 = time.perf_counter()
        model = train(name, RECIPES[name], split.x_train, split.y_train)
        seconds = time.perf_counter() - t0
        correct = count_correct(model, split.x_test, split.y_test)
        train_correct = count_correct(model, split.x_train, split.y_train)
        total = len(split.y_test)
        out = (args.out / f"digits_{name}.pt") if args.out else weights_path(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{name}: test accuracy {correct / total:.4f} ({correct}/{total}), "
            f"train {train_correct / len(split.y_train):.4f}, {params} parameters, "
            f"{out.stat().st_size} bytes, trained in {seconds:.1f} s -> {out}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

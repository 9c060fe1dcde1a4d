"""``builtin:digits-finetune``: fine-tune the built-in digits CNN in a serving board's troughs.

A real training job that needs no download: scikit-learn's bundled digits and the digits
models of ``ecoserve.models.digits``. By default it is a transfer-learning fine-tune: the
shipped network keeps its trained convolutions and gets a fresh, seeded classifier head, so
held-out accuracy visibly climbs from chance as it trains (``init="shipped"`` continues from
the shipped weights, ``init="scratch"`` trains a fresh network).

Training semantics do not depend on the micro-batch the engine picks. The data is cut, each
epoch, into fixed update groups of ``batch_size`` images in a seeded order; a step runs one
micro-batch of the current group (forward, backward, gradients accumulated and scaled by the
group's size) and the optimizer updates when a group is complete. So a tuner may change the
micro-batch between any two steps (to keep a step under the engine's time bound) and the
model sees the same updates, up to floating-point summation order.

Evaluation is sized the same way: when one is due, the next steps each classify a slice of
the 450 held-out images (``EVAL_ITEMS_PER_ITEM`` times the micro-batch, forward only) before
training goes on, so no step, evaluating or training, outgrows the engine's bound.

A resumed job continues bit-identically: its state holds the weights, the optimizer, the
gradients accumulated so far in the current group, its place in the data and its own random
state (dropout draws from it, never from the process's global generator, which serving uses).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecoserve.background.checkpoint import write_bytes_durably
from ecoserve.background.job import StepResult
from ecoserve.models.digits import (
    MODEL_NAMES,
    build_digits_model,
    count_correct,
    load_digits_model,
    load_digits_split,
)

INITS = ("head", "shipped", "scratch")
#: Held-out images one evaluation step classifies per micro-batch item: a forward pass costs
#: 0.33 to 0.45 of a forward plus backward pass on both models (measured by
#: ``benchmarks/bench_background_step.py``), so an evaluation step of twice the micro-batch
#: is no longer than a training step of the micro-batch.
EVAL_ITEMS_PER_ITEM = 2
#: Options a checkpoint must share with the job resuming it (the rest may change).
FIXED_OPTIONS = ("model", "init", "batch_size", "seed")


def _head(model: nn.Sequential) -> nn.Linear:
    """The last linear layer: the classifier a transfer-learning fine-tune re-initialises."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


class DigitsFinetune:
    """Fine-tune a digits CNN; reports held-out accuracy every ``eval_every`` updates.

    ``model``: "small" (690 parameters) or "large"; ``init``: "head", "shipped" or "scratch"
    (module docstring); ``lr``, ``weight_decay``: Adam's; ``batch_size``: images per optimizer
    update (the most one step takes); ``epochs``: passes over the 1347 training images, after
    which the job is done; ``seed``: head initialisation and data order; ``export``: a file
    that receives the trained weights when the job is done (loadable with
    ``ecoserve.models.digits.load_digits_model(model, weights=export)``).
    """

    def __init__(
        self,
        model: str = "small",
        init: str = "head",
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 32,
        epochs: int = 20,
        eval_every: int = 10,
        seed: int = 0,
        export: str | Path | None = None,
    ) -> None:
        if model not in MODEL_NAMES:
            raise ValueError(f"model={model!r}: choose one of {', '.join(MODEL_NAMES)}")
        if init not in INITS:
            raise ValueError(f"init={init!r}: choose one of {', '.join(INITS)}")
        for key, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not math.isfinite(value) or value < 0 or (key == "lr" and value == 0):
                raise ValueError(f"{key}={value!r}: must be a finite number > 0 (>= 0 for decay)")
        for key, count in (
            ("batch_size", batch_size),
            ("epochs", epochs),
            ("eval_every", eval_every),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{key}={count!r}: must be a whole number >= 1")
        self.options: dict[str, Any] = {
            "model": model,
            "init": init,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "epochs": epochs,
            "eval_every": eval_every,
            "seed": seed,
        }
        self.export = Path(export) if export is not None else None
        split = load_digits_split()
        self._x, self._y = split.x_train, split.y_train
        self._x_test, self._y_test = split.x_test, split.y_test
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = self._fresh_model()
            self._rng = torch.get_rng_state()
        self.model.train()
        self.optimizer = self._optimizer(self.model)
        self.epoch = 0
        self.cursor = 0
        self.updates = 0
        self.accuracy: float | None = None
        #: Held-out images classified so far in the evaluation under way (None: none is).
        self.eval_pos: int | None = None
        self.eval_correct = 0
        self._order_epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)

    @property
    def name(self) -> str:
        return "digits-finetune"

    @property
    def done(self) -> bool:
        """Every epoch trained and the final evaluation finished."""
        return self.epoch >= int(self.options["epochs"]) and self.eval_pos is None

    def _fresh_model(self) -> nn.Sequential:
        name = str(self.options["model"])
        if self.options["init"] == "scratch":
            return build_digits_model(name)
        model = load_digits_model(name)
        if self.options["init"] == "head":
            _head(model).reset_parameters()
        return model

    def _optimizer(self, model: nn.Module) -> torch.optim.Adam:
        return torch.optim.Adam(
            model.parameters(),
            lr=float(self.options["lr"]),
            weight_decay=float(self.options["weight_decay"]),
        )

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's data order, from the seed and the epoch alone (nothing to save)."""
        if self._order_epoch != self.epoch:
            gen = torch.Generator().manual_seed(int(self.options["seed"]) * 1_000_003 + self.epoch)
            self._order = torch.randperm(len(self._x), generator=gen)
            self._order_epoch = self.epoch
        return self._order

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with the job's random state, leaving the process's global one untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng)
            yield
            self._rng = torch.get_rng_state()

    def _count_correct(self, start: int, stop: int) -> int:
        self.model.eval()
        try:
            return count_correct(self.model, self._x_test[start:stop], self._y_test[start:stop])
        finally:
            self.model.train()

    def evaluate(self) -> float:
        """Held-out accuracy over all 450 test images at once (the steps evaluate in slices)."""
        return self._count_correct(0, len(self._y_test)) / len(self._y_test)

    def _eval_step(self, micro_batch: int) -> StepResult:
        """Classify the next slice of the held-out images; report accuracy after the last."""
        assert self.eval_pos is not None
        stop = min(self.eval_pos + EVAL_ITEMS_PER_ITEM * micro_batch, len(self._y_test))
        self.eval_correct += self._count_correct(self.eval_pos, stop)
        self.eval_pos = stop
        if stop < len(self._y_test):
            return StepResult(items=0)
        self.accuracy = self.eval_correct / len(self._y_test)
        self.eval_pos, self.eval_correct = None, 0
        if self.done and self.export is not None:
            self.export_weights(self.export)
        return StepResult(items=0, metric={"accuracy": self.accuracy}, done=self.done)

    def step(self, micro_batch: int) -> StepResult:
        """One micro-batch of the current update group (the optimizer updates when the group is
        complete), or a slice of the evaluation under way (``items`` 0: no training image).

        A non-finite loss is returned without a backward pass or any change to the job, so
        the runner pauses a job whose state is still the last good one.
        """
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch!r}: must be a whole number >= 1")
        if self.eval_pos is not None:
            return self._eval_step(micro_batch)
        if self.done:
            return StepResult(items=0, done=True)
        batch = int(self.options["batch_size"])
        n = len(self._x)
        group_start = (self.cursor // batch) * batch
        group_end = min(group_start + batch, n)
        take = min(micro_batch, group_end - self.cursor)
        idx = self._epoch_order()[self.cursor : self.cursor + take]
        with self._own_rng():
            total = nn.functional.cross_entropy(
                self.model(self._x[idx]), self._y[idx], reduction="sum"
            )
            loss = float(total.detach()) / take
            if not math.isfinite(loss):
                return StepResult(items=0, loss=loss)
            (total / (group_end - group_start)).backward()
        self.cursor += take
        if self.cursor == group_end:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.updates += 1
            if self.cursor == n:
                self.epoch += 1
                self.cursor = 0
            last = self.epoch >= int(self.options["epochs"])
            if self.updates % int(self.options["eval_every"]) == 0 or last:
                self.eval_pos, self.eval_correct = 0, 0
        return StepResult(items=take, loss=loss)

    def export_weights(self, path: str | Path) -> None:
        """Write the model's weights (a plain state_dict) atomically to ``path``."""
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        write_bytes_durably(path, buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {
            "options": dict(self.options),
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "grads": [None if p.grad is None else p.grad.clone() for p in self.model.parameters()],
            "epoch": self.epoch,
            "cursor": self.cursor,
            "updates": self.updates,
            "accuracy": self.accuracy,
            "eval_pos": self.eval_pos,
            "eval_correct": self.eval_correct,
            "rng": self._rng.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; ValueError (and no change) if it is another fine-tune's."""
        try:
            saved = dict(state["options"])
            clash = [k for k in FIXED_OPTIONS if saved.get(k) != self.options[k]]
            if clash:
                raise ValueError(
                    "the checkpoint was written with "
                    + ", ".join(f"{k}={saved.get(k)!r}" for k in clash)
                    + " but this job has "
                    + ", ".join(f"{k}={self.options[k]!r}" for k in clash)
                )
            model = build_digits_model(str(self.options["model"]))
            model.load_state_dict(state["model"])
            model.train()
            optimizer = self._optimizer(model)
            optimizer.load_state_dict(state["optimizer"])
            grads = list(state["grads"])
            params = list(model.parameters())
            if len(grads) != len(params):
                raise ValueError(f"{len(grads)} saved gradients for {len(params)} parameters")
            for p, g in zip(params, grads):
                if g is not None and g.shape != p.shape:
                    raise ValueError(
                        f"a saved gradient of shape {tuple(g.shape)} for {tuple(p.shape)}"
                    )
                p.grad = None if g is None else g.clone()
            epoch, cursor, updates = (
                int(state["epoch"]),
                int(state["cursor"]),
                int(state["updates"]),
            )
            if not 0 <= cursor < len(self._x) or epoch < 0 or updates < 0:
                raise ValueError(f"position epoch={epoch} cursor={cursor} is out of range")
            rng = state["rng"]
            if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
                raise ValueError("the saved random state is not a byte tensor")
            accuracy = state.get("accuracy")
            eval_pos = state.get("eval_pos")
            eval_pos = None if eval_pos is None else int(eval_pos)
            eval_correct = int(state.get("eval_correct", 0))
            if eval_pos is not None and not 0 <= eval_pos < len(self._y_test):
                raise ValueError(f"evaluation position {eval_pos} is out of range")
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ValueError(f"not a digits-finetune state: {exc}") from exc
        self.model, self.optimizer = model, optimizer
        self.epoch, self.cursor, self.updates = epoch, cursor, updates
        self.accuracy = None if accuracy is None else float(accuracy)
        self.eval_pos, self.eval_correct = eval_pos, eval_correct
        self._rng = rng.clone()
        # the learning rate and decay of this start win over the saved ones
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.options["lr"])
            group["weight_decay"] = float(self.options["weight_decay"])

    def describe(self) -> dict[str, Any]:
        return {
            "job": self.name,
            **self.options,
            "export": None if self.export is None else str(self.export),
            "epoch": self.epoch,
            "updates": self.updates,
            "accuracy": self.accuracy,
            "evaluating": self.eval_pos is not None,
            "done": self.done,
            "knobs": {"micro_batch": [1, int(self.options["batch_size"])]},
        }
